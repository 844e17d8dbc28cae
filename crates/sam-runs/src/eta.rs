//! Time left, from a rolling window of step times.

use std::collections::VecDeque;
use std::time::Duration;

/// Estimates the time left from the last `window` step durations (the mean
/// of a rolling window follows speed changes, e.g. after a pause or when
/// sequence lengths change, better than the mean since the start).
///
/// ```
/// use std::time::Duration;
/// let mut eta = sam_runs::Eta::new(4);
/// for _ in 0..4 {
///     eta.record(Duration::from_millis(500));
/// }
/// assert_eq!(eta.remaining(10), Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone)]
pub struct Eta {
    window: usize,
    steps: VecDeque<Duration>,
}

impl Eta {
    /// An estimator over the last `window` steps (at least 1).
    pub fn new(window: usize) -> Self {
        Self { window: window.max(1), steps: VecDeque::new() }
    }

    /// Record one step's duration.
    pub fn record(&mut self, step: Duration) {
        if self.steps.len() == self.window {
            self.steps.pop_front();
        }
        self.steps.push_back(step);
    }

    /// Forget the window (after a pause or a resume).
    pub fn reset(&mut self) {
        self.steps.clear();
    }

    /// Mean step time over the window, once a step was recorded.
    pub fn mean_step(&self) -> Option<Duration> {
        if self.steps.is_empty() {
            return None;
        }
        Some(self.steps.iter().sum::<Duration>() / self.steps.len() as u32)
    }

    /// Time for `steps_left` more steps at the window's mean pace.
    pub fn remaining(&self, steps_left: u64) -> Option<Duration> {
        self.mean_step().map(|m| m.mul_f64(steps_left as f64))
    }
}

/// `1h02m`, `3m07s`, `12s`: a short human duration.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_follows_speed_changes() {
        let mut eta = Eta::new(3);
        assert_eq!(eta.remaining(5), None);
        for ms in [1000, 1000, 1000, 100, 100, 100] {
            eta.record(Duration::from_millis(ms));
        }
        assert_eq!(eta.mean_step(), Some(Duration::from_millis(100)));
        assert_eq!(eta.remaining(30), Some(Duration::from_secs(3)));
        eta.reset();
        assert_eq!(eta.mean_step(), None);
    }

    #[test]
    fn durations_format() {
        for (secs, want) in [(0, "0s"), (59, "59s"), (61, "1m01s"), (3723, "1h02m")] {
            assert_eq!(format_duration(Duration::from_secs(secs)), want);
        }
    }
}
