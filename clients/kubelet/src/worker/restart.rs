//! When an ended container starts again (Kubernetes' restart policy and
//! CrashLoopBackOff), as pure functions of what happened: no runtime, no
//! clock. The worker applies the decision.

use std::time::Duration;

/// Timing of restarts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay (Kubernetes: 10 s).
    pub initial: Duration,
    /// Largest delay (Kubernetes: 300 s).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

/// What happens to a container that has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Start it again, after the back-off.
    Restart,
    /// Leave it ended for good: an init container that succeeded, or a
    /// container its pod's policy does not restart.
    Completed,
    /// An init container that failed under `restartPolicy: Never`: the pod
    /// cannot go on and fails.
    InitFailed,
}

/// The restart decision for a container (`init` or not) of a pod with
/// restart `policy` (`Always`, `OnFailure` or `Never`; empty is `Always`)
/// that exited with `exit_code`. Init containers run to success whatever
/// the policy, unless it is `Never`.
pub fn after_exit(init: bool, policy: &str, exit_code: i32) -> AfterExit {
    let policy = if policy.is_empty() { "Always" } else { policy };
    match (init, policy) {
        (true, _) if exit_code == 0 => AfterExit::Completed,
        (true, "Never") => AfterExit::InitFailed,
        (true, _) => AfterExit::Restart,
        (false, "Always") => AfterExit::Restart,
        (false, "OnFailure") if exit_code != 0 => AfterExit::Restart,
        (false, _) => AfterExit::Completed,
    }
}

/// How long a container ran before the back-off starts over (Kubernetes:
/// ten minutes).
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// The delay before restarting a container whose back-off stands at
/// `current` and that ran for `ran`, and the back-off after it: doubling
/// up to `config.max`, from `config.initial` again once it ran ten minutes.
pub fn crash_loop_delay(current: Duration, ran: Duration, config: Backoff) -> (Duration, Duration) {
    let delay = if ran > BACKOFF_RESET_AFTER {
        config.initial
    } else {
        current
    };
    (delay, (delay * 2).min(config.max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_decisions_follow_the_restart_policy() {
        use AfterExit::*;
        // (init, policy, exit code, decision)
        let table = [
            (false, "Always", 0, Restart),
            (false, "Always", 1, Restart),
            (false, "", 0, Restart),
            (false, "", 137, Restart),
            (false, "OnFailure", 0, Completed),
            (false, "OnFailure", 2, Restart),
            (false, "Never", 0, Completed),
            (false, "Never", 1, Completed),
            (true, "Always", 0, Completed),
            (true, "Always", 1, Restart),
            (true, "OnFailure", 0, Completed),
            (true, "OnFailure", 1, Restart),
            (true, "Never", 0, Completed),
            (true, "Never", 1, InitFailed),
            (true, "", 1, Restart),
        ];
        for (init, policy, code, want) in table {
            assert_eq!(
                after_exit(init, policy, code),
                want,
                "init={init} policy={policy:?} exit={code}"
            );
        }
    }

    #[test]
    fn the_crash_loop_back_off_doubles_to_its_cap_and_resets_after_ten_minutes() {
        let config = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        };
        let s = Duration::from_secs;
        // (back-off now, ran for, delay, back-off after)
        let table = [
            (s(10), s(1), s(10), s(20)),
            (s(20), s(1), s(20), s(40)),
            (s(160), s(1), s(160), s(300)),
            (s(300), s(1), s(300), s(300)),
            (s(300), s(600), s(300), s(300)),
            (s(300), s(601), s(10), s(20)),
            (s(40), s(3600), s(10), s(20)),
        ];
        for (current, ran, delay, next) in table {
            assert_eq!(
                crash_loop_delay(current, ran, config),
                (delay, next),
                "back-off {current:?}, ran {ran:?}"
            );
        }
    }
}
