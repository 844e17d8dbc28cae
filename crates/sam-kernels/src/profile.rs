//! A span profiler for the training path: wall and process CPU seconds per
//! named span, accumulated over the process, on only when `SAM_PROFILE` is
//! set in the environment (then a span costs two clock reads; otherwise one
//! relaxed load).
//!
//! Spans are meant to be opened by the thread that drives a step (the one
//! that waits while the pool works), one at a time or nested; the process
//! CPU time of a span then counts every thread's work on it, which is the
//! steadier figure on a shared machine.
//!
//! ```
//! use sam_kernels::profile;
//! {
//!     let _s = profile::span("layer/fwd/mlp");
//!     // ... work ...
//! }
//! for e in profile::take() {
//!     println!("{} {} calls {:.3} s wall {:.3} s cpu", e.name, e.calls, e.wall_s, e.cpu_s);
//! }
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

/// Accumulated time of one span name.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The span's name.
    pub name: &'static str,
    /// How many times it was entered.
    pub calls: u64,
    /// Wall-clock seconds inside it.
    pub wall_s: f64,
    /// Process CPU seconds (all threads) inside it.
    pub cpu_s: f64,
}

static STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 off, 2 on
static TABLE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// Whether spans are recorded (`SAM_PROFILE` set and not `0`).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var_os("SAM_PROFILE").is_some_and(|v| !v.is_empty() && v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Process CPU seconds so far (0 where the clock is unavailable).
pub fn process_cpu_s() -> f64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid clock id and a valid out pointer.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
        }
    }
    0.0
}

/// An open span; its time is added to its name when it is dropped.
#[must_use = "a span measures until it is dropped"]
pub struct Span {
    open: Option<(&'static str, Instant, f64)>,
}

/// Opens a span named `name` (a no-op unless [`enabled`]).
pub fn span(name: &'static str) -> Span {
    Span { open: enabled().then(|| (name, Instant::now(), process_cpu_s())) }
}

impl Drop for Span {
    fn drop(&mut self) {
        let Some((name, t0, c0)) = self.open.take() else { return };
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), process_cpu_s() - c0);
        let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        match t.iter_mut().find(|e| e.name == name) {
            Some(e) => {
                e.calls += 1;
                e.wall_s += wall;
                e.cpu_s += cpu;
            }
            None => t.push(Entry { name, calls: 1, wall_s: wall, cpu_s: cpu }),
        }
    }
}

/// The accumulated spans in the order they were first seen; clears them.
pub fn take() -> Vec<Entry> {
    std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_accumulate_per_name() {
        STATE.store(2, Ordering::Relaxed);
        for _ in 0..3 {
            let _a = span("test/a");
            let _b = span("test/b");
            std::hint::black_box((0..10_000u64).sum::<u64>());
        }
        let t = take();
        let a = t.iter().find(|e| e.name == "test/a").unwrap();
        assert_eq!(a.calls, 3);
        assert!(a.wall_s > 0.0 && a.cpu_s >= 0.0);
        assert!(t.iter().any(|e| e.name == "test/b"));
        assert!(take().is_empty());
    }
}
