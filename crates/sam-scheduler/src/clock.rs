//! The scheduler's clock: wall time in Unix seconds, and a way to wait.
//!
//! The daemon reads the time only through a [`Clock`], so tests drive days
//! of schedule in seconds with a [`ManualClock`], and a machine that slept
//! through a job's time is noticed the moment it wakes: [`SystemClock`]
//! waits in short slices and reads the wall clock after each, rather than
//! trusting one long monotonic sleep (which does not count suspended time).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the scheduler gets the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Unix seconds now.
    fn now(&self) -> i64;

    /// Wait about `d`, returning early once `stop` is set.
    fn sleep(&self, d: Duration, stop: &AtomicBool);
}

/// The machine's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// How long [`SystemClock::sleep`] sleeps at a stretch before it looks at
/// the stop flag again.
const SLICE: Duration = Duration::from_millis(100);

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    }

    fn sleep(&self, d: Duration, stop: &AtomicBool) {
        let end = std::time::Instant::now() + d;
        while !stop.load(Ordering::Relaxed) {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(SLICE));
        }
    }
}

/// A clock that moves only when told to: [`ManualClock::advance`] and
/// [`ManualClock::set`]. Clones share the same time.
///
/// ```
/// use sam_scheduler::clock::{Clock, ManualClock};
/// let clock = ManualClock::new(1_700_000_000);
/// let seen_by_daemon = clock.clone();
/// clock.advance(3 * 86_400);
/// assert_eq!(seen_by_daemon.now(), 1_700_000_000 + 3 * 86_400);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `now` (Unix seconds).
    pub fn new(now: i64) -> Self {
        Self { now: Arc::new(AtomicI64::new(now)) }
    }

    /// Move the time forward by `secs` (backward when negative).
    pub fn advance(&self, secs: i64) {
        self.now.fetch_add(secs, Ordering::SeqCst);
    }

    /// Set the time.
    pub fn set(&self, now: i64) {
        self.now.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    /// Does not move the time: waits a few milliseconds of real time (so a
    /// daemon loop driven by this clock does not spin) unless stopped.
    fn sleep(&self, d: Duration, stop: &AtomicBool) {
        if !stop.load(Ordering::Relaxed) {
            std::thread::sleep(d.min(Duration::from_millis(5)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_sleep_returns_early_on_stop() {
        let stop = AtomicBool::new(true);
        let t0 = std::time::Instant::now();
        SystemClock.sleep(Duration::from_secs(30), &stop);
        assert!(t0.elapsed() < Duration::from_secs(1));
        let now = SystemClock.now();
        assert!(now > 1_600_000_000, "{now}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(100);
        c.sleep(Duration::from_secs(3600), &AtomicBool::new(false));
        assert_eq!(c.now(), 100);
        c.advance(-10);
        assert_eq!(c.now(), 90);
        c.set(5);
        assert_eq!(c.now(), 5);
    }
}
