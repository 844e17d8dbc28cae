//! The memory guard: pause training between steps when the machine runs low
//! on memory, resume when there is room again.

use std::time::Duration;

/// Reports how much memory is available. A trait so that tests (and
/// embedders with their own accounting) can drive the guard.
pub trait MemoryProbe: Send {
    /// Bytes available to new allocations right now.
    fn available_bytes(&mut self) -> u64;
}

/// The machine's available memory, as the OS reports it (sysinfo's
/// `available_memory`: MemAvailable on Linux).
#[derive(Debug)]
pub struct SystemProbe {
    // `None` where the OS gives no memory figures: then the guard never pauses.
    sys: Option<sysinfo::System>,
}

impl SystemProbe {
    /// A probe of this machine.
    pub fn new() -> Self {
        Self { sys: sysinfo::System::new().ok() }
    }
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryProbe for SystemProbe {
    fn available_bytes(&mut self) -> u64 {
        match &mut self.sys {
            Some(sys) => {
                sys.refresh_memory();
                sys.available_memory()
            }
            None => u64::MAX,
        }
    }
}

/// Thresholds with hysteresis: pause below `pause_below`, resume only at or
/// above `resume_above` (defaults 0.3 GB and 0.5 GB, as the seed had).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MemoryGuardConfig {
    /// Pause when available memory falls below this many bytes.
    pub pause_below: u64,
    /// Resume when available memory is at least this many bytes.
    pub resume_above: u64,
    /// How often to look again while paused, in milliseconds.
    pub poll_ms: u64,
}

impl Default for MemoryGuardConfig {
    fn default() -> Self {
        Self { pause_below: 300_000_000, resume_above: 500_000_000, poll_ms: 1000 }
    }
}

/// What the guard did during one [`MemoryGuard::wait_for_room`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardEvent {
    /// Paused: available bytes at the time.
    Paused(u64),
    /// Resumed: available bytes at the time.
    Resumed(u64),
}

/// Checks memory between steps and blocks while it is low.
///
/// ```
/// use sam_runs::{MemoryGuard, MemoryGuardConfig, MemoryProbe, GuardEvent};
/// // A probe that reports low memory twice, then plenty.
/// struct Script(Vec<u64>);
/// impl MemoryProbe for Script {
///     fn available_bytes(&mut self) -> u64 { if self.0.len() > 1 { self.0.remove(0) } else { self.0[0] } }
/// }
/// let cfg = MemoryGuardConfig { pause_below: 300, resume_above: 500, poll_ms: 0 };
/// let mut guard = MemoryGuard::new(cfg, Box::new(Script(vec![100, 400, 600])));
/// let mut seen = Vec::new();
/// guard.wait_for_room(&mut |e| seen.push(e));
/// assert_eq!(seen, [GuardEvent::Paused(100), GuardEvent::Resumed(600)]);
/// ```
pub struct MemoryGuard {
    cfg: MemoryGuardConfig,
    probe: Box<dyn MemoryProbe>,
}

impl std::fmt::Debug for MemoryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryGuard").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl MemoryGuard {
    /// A guard with these thresholds over this probe.
    pub fn new(cfg: MemoryGuardConfig, probe: Box<dyn MemoryProbe>) -> Self {
        Self { cfg, probe }
    }

    /// A guard over this machine's memory with the default thresholds.
    pub fn system() -> Self {
        Self::new(MemoryGuardConfig::default(), Box::new(SystemProbe::new()))
    }

    /// The thresholds.
    pub fn config(&self) -> &MemoryGuardConfig {
        &self.cfg
    }

    /// Return at once when memory is fine; otherwise report a pause, poll
    /// until memory is back above `resume_above`, report the resume, and
    /// return. Call it between steps.
    pub fn wait_for_room(&mut self, on_event: &mut dyn FnMut(GuardEvent)) {
        let avail = self.probe.available_bytes();
        if avail >= self.cfg.pause_below {
            return;
        }
        on_event(GuardEvent::Paused(avail));
        loop {
            std::thread::sleep(Duration::from_millis(self.cfg.poll_ms));
            let avail = self.probe.available_bytes();
            if avail >= self.cfg.resume_above {
                on_event(GuardEvent::Resumed(avail));
                return;
            }
        }
    }
}

/// The memory available to new allocations on this machine now, in bytes
/// (MemAvailable on Linux, what sysinfo reports elsewhere), or `None` where
/// the OS gives no memory figures. What `sam train` sizes its
/// recomputation by.
pub fn available_memory() -> Option<u64> {
    let mut sys = sysinfo::System::new().ok()?;
    sys.refresh_memory();
    Some(sys.available_memory()).filter(|&b| b > 0)
}

/// Resident memory of this process now, in bytes (0 where unknown).
pub fn current_rss() -> u64 {
    #[cfg(target_os = "linux")]
    {
        if let Ok(s) = std::fs::read_to_string("/proc/self/statm")
            && let Some(pages) = s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok())
        {
            return pages * 4096;
        }
    }
    let (Ok(pid), Ok(mut sys)) = (sysinfo::get_current_pid(), sysinfo::System::new()) else {
        return 0;
    };
    sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
    sys.process(pid).map(|p| p.memory()).unwrap_or(0)
}

/// Peak resident memory of this process so far, in bytes (Linux: `VmHWM`;
/// elsewhere the current RSS).
pub fn peak_rss() -> u64 {
    #[cfg(target_os = "linux")]
    {
        if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
            for line in s.lines() {
                if let Some(rest) = line.strip_prefix("VmHWM:")
                    && let Some(kb) = rest.split_whitespace().next().and_then(|k| k.parse::<u64>().ok())
                {
                    return kb * 1024;
                }
            }
        }
    }
    current_rss()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u64);
    impl MemoryProbe for Fixed {
        fn available_bytes(&mut self) -> u64 {
            self.0
        }
    }

    #[test]
    fn no_event_when_memory_is_fine() {
        let mut g = MemoryGuard::new(MemoryGuardConfig::default(), Box::new(Fixed(u64::MAX)));
        let mut n = 0;
        g.wait_for_room(&mut |_| n += 1);
        assert_eq!(n, 0);
    }

    #[test]
    fn hysteresis_waits_for_resume_threshold() {
        // 400 is above the pause threshold but below resume: still paused.
        struct Seq(std::vec::IntoIter<u64>);
        impl MemoryProbe for Seq {
            fn available_bytes(&mut self) -> u64 {
                self.0.next().expect("guard polled past the script")
            }
        }
        let cfg = MemoryGuardConfig { pause_below: 300, resume_above: 500, poll_ms: 0 };
        let mut g = MemoryGuard::new(cfg, Box::new(Seq(vec![200, 400, 450, 499, 500].into_iter())));
        let mut ev = Vec::new();
        g.wait_for_room(&mut |e| ev.push(e));
        assert_eq!(ev, [GuardEvent::Paused(200), GuardEvent::Resumed(500)]);
    }

    #[test]
    fn real_probe_and_rss_are_plausible() {
        let avail = SystemProbe::new().available_bytes();
        assert!(avail > 0);
        let free = available_memory().expect("Linux reports MemAvailable");
        // Another process may allocate in between: same order of magnitude.
        assert!(free > avail / 4 && free < avail.saturating_mul(4), "{free} vs {avail}");
        let rss = current_rss();
        assert!(rss > 1_000_000, "rss {rss}");
        assert!(peak_rss() >= rss);
    }
}
