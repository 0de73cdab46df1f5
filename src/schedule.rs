//! Cron schedules as CronJobs write them: five fields (minute, hour, day of
//! month, month, day of week) or a macro such as `@hourly`, read in an IANA
//! time zone. Parsing is croner's (POSIX/Vixie rules: a day matches when the
//! day of month or the day of week does); time zones are chrono-tz's.

use std::time::SystemTime;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Why a schedule or time zone was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("{0}")]
    Schedule(String),
    /// The time zone is not a known IANA name.
    #[error("unknown time zone {0:?}: use an IANA name such as \"Europe/Berlin\" or \"Etc/UTC\"")]
    TimeZone(String),
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: Tz,
}

impl Schedule {
    /// Parses `schedule` in `time_zone` (UTC when `None`).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let trimmed = schedule.trim();
        if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
            return Err(ScheduleError::Schedule(
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into(),
            ));
        }
        if trimmed.is_empty() {
            return Err(ScheduleError::Schedule("required".into()));
        }
        if !trimmed.starts_with('@') && trimmed.split_whitespace().count() != 5 {
            return Err(ScheduleError::Schedule(format!(
                "expected exactly 5 fields (minute hour day-of-month month day-of-week), found {}: {trimmed:?}",
                trimmed.split_whitespace().count()
            )));
        }
        let cron = croner::Cron::new(trimmed)
            .parse()
            .map_err(|e| ScheduleError::Schedule(format!("{trimmed:?}: {e}")))?;
        let tz = match time_zone {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::TimeZone(name.to_owned()))?,
        };
        Ok(Self { cron, tz })
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        let t: DateTime<Utc> = after.into();
        let local = self.tz.from_utc_datetime(&t.naive_utc());
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        Some(next.with_timezone(&Utc).into())
    }

    /// The scheduled times in (`earliest`, `now`]: the most recent one and
    /// how many there were, counting at most `cap` + 1.
    pub fn missed(
        &self,
        earliest: SystemTime,
        now: SystemTime,
        cap: usize,
    ) -> (Option<SystemTime>, usize) {
        let mut count = 0;
        let mut last = None;
        let mut t = earliest;
        while let Some(next) = self.next_after(t) {
            if next > now {
                break;
            }
            count += 1;
            last = Some(next);
            t = next;
            if count > cap {
                // Too many to walk one by one: jump close to `now` by whole
                // periods of the schedule, then walk the rest.
                if let Some(period) = self.next_after(t).and_then(|a| a.duration_since(t).ok())
                    && !period.is_zero()
                    && let Ok(left) = now.duration_since(t)
                {
                    let skip = (left.as_secs_f64() / period.as_secs_f64()).floor() as u32;
                    if skip > 2 {
                        t += period * (skip - 2);
                    }
                }
                while let Some(next) = self.next_after(t) {
                    if next > now {
                        break;
                    }
                    last = Some(next);
                    t = next;
                }
                break;
            }
        }
        (last, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(s: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&Utc)
            .into()
    }

    #[test]
    fn five_field_schedules_and_macros_parse_and_others_are_refused() {
        assert!(Schedule::parse("*/5 * * * *", None).is_ok());
        assert!(Schedule::parse("@hourly", None).is_ok());
        assert!(Schedule::parse("0 0 * * MON-FRI", None).is_ok());
        assert!(Schedule::parse("* * * *", None).is_err());
        assert!(Schedule::parse("0 * * * * *", None).is_err());
        assert!(Schedule::parse("61 * * * *", None).is_err());
        assert!(Schedule::parse("", None).is_err());
        let tz = Schedule::parse("CRON_TZ=UTC * * * * *", None).unwrap_err();
        assert!(tz.to_string().contains("timeZone field"), "{tz}");
        assert_eq!(
            Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
    }

    #[test]
    fn the_next_time_is_strictly_after_and_follows_the_time_zone() {
        let every_minute = Schedule::parse("* * * * *", None).unwrap();
        assert_eq!(
            every_minute.next_after(at("2026-01-01T10:00:00Z")),
            Some(at("2026-01-01T10:01:00Z"))
        );
        assert_eq!(
            every_minute.next_after(at("2026-01-01T10:00:30Z")),
            Some(at("2026-01-01T10:01:00Z"))
        );
        // 09:00 in Berlin is 08:00 UTC in winter.
        let berlin = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            berlin.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T08:00:00Z"))
        );
    }

    #[test]
    fn missed_times_are_counted_and_the_most_recent_found_even_past_the_cap() {
        let s = Schedule::parse("* * * * *", None).unwrap();
        let start = at("2026-01-01T00:00:00Z");
        let (last, n) = s.missed(start, start + Duration::from_secs(5 * 60 + 10), 100);
        assert_eq!((last, n), (Some(at("2026-01-01T00:05:00Z")), 5));
        let (last, n) = s.missed(start, start + Duration::from_secs(30), 100);
        assert_eq!((last, n), (None, 0));
        // A week of minutes: more than the cap, the most recent still exact.
        let now = at("2026-01-08T00:00:30Z");
        let (last, n) = s.missed(start, now, 100);
        assert_eq!(n, 101);
        assert_eq!(last, Some(at("2026-01-08T00:00:00Z")));
    }
}
