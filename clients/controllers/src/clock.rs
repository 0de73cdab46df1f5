//! The controllers' clock: wall-clock time in production, a clock moved by
//! hand in tests, so that schedules, back-offs, deadlines and TTLs can be
//! tested in virtual time without waiting for them.

use std::fmt::Debug;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// What time it is for a controller.
pub trait Clock: Send + Sync + Debug {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// A receiver that changes whenever the clock is moved by hand (so
    /// controllers look again); `None` for a clock that moves by itself.
    fn moved(&self) -> Option<watch::Receiver<()>>;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn moved(&self) -> Option<watch::Receiver<()>> {
        None
    }
}

/// A clock that stands still until a test moves it.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
    moved: watch::Sender<()>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Mutex::new(start),
            moved: watch::channel(()).0,
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.now.lock().expect("clock") += by;
        self.moved.send_replace(());
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: SystemTime) {
        *self.now.lock().expect("clock") = to;
        self.moved.send_replace(());
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().expect("clock")
    }

    fn moved(&self) -> Option<watch::Receiver<()>> {
        Some(self.moved.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_moves_only_when_told_and_says_so() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = ManualClock::new(start);
        let mut moved = clock.moved().unwrap();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(60));
        moved.changed().await.unwrap();
        assert_eq!(clock.now(), start + Duration::from_secs(60));
    }
}
