//! When a job runs: its timing, its persistent state, and the rules that
//! move one to the other. Pure functions of the state and the time, so the
//! rules are tested without threads or files.
//!
//! The rules follow systemd timers with `Persistent=true`:
//! - a job's next run is `interval` after its last start, plus a delay
//!   drawn in `[0, randomized_delay]` (like `RandomizedDelaySec=`), so jobs
//!   do not all start at once;
//! - a run that was missed (the machine was off or asleep, the daemon was
//!   not running) runs **once** when the daemon starts or the clock is seen
//!   to have jumped, after a fresh random delay: never once per missed
//!   interval;
//! - a job still running when it is due is not started again;
//! - a failed run is retried after a backoff that doubles per consecutive
//!   failure (from [`Policy::retry_base_secs`] up to
//!   [`Policy::retry_max_secs`]);
//! - a run deferred for lack of memory is looked at again after
//!   [`Policy::defer_secs`];
//! - a run stopped by a shutdown, or cut short by a crash, is due again at
//!   once, so the next start continues it.

use serde::{Deserialize, Serialize};

/// How often one job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Seconds between starts.
    pub interval_secs: u64,
    /// Up to this many seconds are added to each start, drawn per run.
    pub randomized_delay_secs: u64,
}

impl Timing {
    /// Every `interval_secs`, with up to `randomized_delay_secs` of delay.
    pub fn every(interval_secs: u64, randomized_delay_secs: u64) -> Self {
        Self { interval_secs, randomized_delay_secs }
    }
}

/// What happens after failures and deferrals, for every job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The first retry after a failure comes this many seconds later; each
    /// further consecutive failure doubles it.
    pub retry_base_secs: u64,
    /// The longest wait between retries.
    pub retry_max_secs: u64,
    /// A job deferred for lack of memory is looked at again this many seconds later.
    pub defer_secs: u64,
    /// A job found due this many seconds or more after its time counts as
    /// missed (the machine slept, the daemon was down): it gets a fresh
    /// random delay instead of starting at once.
    pub missed_after_secs: u64,
}

impl Default for Policy {
    /// Retries after 1 min, 2, 4, … up to 6 h; a deferred job is looked at
    /// again after 10 min; a job 2 min late counts as missed.
    fn default() -> Self {
        Self { retry_base_secs: 60, retry_max_secs: 6 * 3600, defer_secs: 600, missed_after_secs: 120 }
    }
}

/// How a run of a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The job did its work.
    Succeeded,
    /// The job found nothing to do (no new data, nothing to export).
    Idle,
    /// The job ran and its result was refused on purpose (a gate refused the
    /// adapter): an outcome, not an error.
    Refused,
    /// A shutdown stopped the job at a safe point (a training checkpointed);
    /// the next start continues it.
    Stopped,
    /// The process running the job ended before the job did (killed, crashed).
    Interrupted,
    /// The job returned an error.
    Failed {
        /// The error, with its causes.
        error: String,
    },
    /// The job panicked; the daemon caught it.
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// Not run: less memory was free than the job needs. Only in the
    /// history; a deferral is not a run.
    Deferred {
        /// Bytes available.
        available_bytes: u64,
        /// Bytes the job declared it needs.
        needed_bytes: u64,
    },
}

impl Outcome {
    /// `succeeded`, `idle`, `refused`, `stopped`, `interrupted`, `failed`,
    /// `panicked`, `deferred`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Idle => "idle",
            Outcome::Refused => "refused",
            Outcome::Stopped => "stopped",
            Outcome::Interrupted => "interrupted",
            Outcome::Failed { .. } => "failed",
            Outcome::Panicked { .. } => "panicked",
            Outcome::Deferred { .. } => "deferred",
        }
    }

    /// Whether the run counts as a failure (retried with backoff).
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed { .. } | Outcome::Panicked { .. })
    }
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its time came.
    Schedule,
    /// Its time passed while the machine or the daemon was away: the one
    /// catch-up run.
    Missed,
    /// A retry after a failure.
    Retry,
    /// Asked for (`sam schedule run JOB`).
    Manual,
}

/// A run that was put off because memory was short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferral {
    /// When (Unix seconds).
    pub at: i64,
    /// Bytes available then.
    pub available_bytes: u64,
    /// Bytes the job declared it needs.
    pub needed_bytes: u64,
}

/// A run in progress, as the state file shows it to other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The process running it.
    pub pid: u32,
    /// When it started (Unix seconds).
    pub started: i64,
    /// Why it started.
    pub trigger: Trigger,
}

/// One job's persistent state (`scheduler/state.json` holds one per job).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobState {
    /// When it runs next (Unix seconds); `None` before the daemon first saw it.
    pub next_run: Option<i64>,
    /// Why the next run will start, when it is not simply its time.
    pub next_trigger: Option<Trigger>,
    /// When the last run started.
    pub last_started: Option<i64>,
    /// When the last run ended.
    pub last_finished: Option<i64>,
    /// How the last run ended.
    pub last_outcome: Option<Outcome>,
    /// How long the last run took, in seconds.
    pub last_seconds: Option<f64>,
    /// When a run last succeeded (or found nothing to do, or was refused).
    pub last_success: Option<i64>,
    /// Runs so far (deferrals not counted).
    pub runs: u64,
    /// Failures since the last run that did not fail.
    pub consecutive_failures: u32,
    /// Deferrals so far.
    pub deferrals: u64,
    /// The last deferral.
    pub last_deferral: Option<Deferral>,
    /// The run in progress, if one is.
    pub running: Option<Running>,
}

/// What [`due`] says about a job at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Not yet.
    No,
    /// Start it now, for this reason.
    Now(Trigger),
    /// Its time passed long ago: it has been given a new time (with a fresh
    /// random delay), stored in the state; start it then.
    Rescheduled,
}

/// A delay in `[0, max]` seconds for `job`'s run planned at `base`: spread
/// like `RandomizedDelaySec=`, but a function of its inputs (BLAKE3 of the
/// job name and the time), so a schedule can be replayed.
pub fn jitter(job: &str, base: i64, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut h = blake3::Hasher::new();
    h.update(job.as_bytes());
    h.update(&base.to_le_bytes());
    let bytes = h.finalize();
    let n = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"));
    n % (max + 1)
}

fn secs(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// When the daemon starts: a job never seen before, or whose time passed
/// while the daemon was not running, is due once, after a random delay from
/// now.
pub fn on_start(job: &str, st: &mut JobState, timing: &Timing, now: i64) {
    match st.next_run {
        Some(t) if t > now => {}
        prev => {
            st.next_run = Some(now + secs(jitter(job, now, timing.randomized_delay_secs)));
            if prev.is_some() && st.next_trigger != Some(Trigger::Retry) {
                st.next_trigger = Some(Trigger::Missed);
            }
        }
    }
}

/// A run marked as in progress whose process is gone (the caller knows:
/// the job's lock is free): recorded as [`Outcome::Interrupted`] and due
/// again at once, so it continues. Returns the run that was cut short.
pub fn interrupted(st: &mut JobState, now: i64) -> Option<Running> {
    let r = st.running.take()?;
    st.runs += 1;
    st.last_started = Some(r.started);
    st.last_finished = Some(now);
    st.last_seconds = None;
    st.last_outcome = Some(Outcome::Interrupted);
    st.next_run = Some(now);
    st.next_trigger = Some(Trigger::Missed);
    Some(r)
}

/// Whether `job` should start at `now`. A job found due long after its time
/// (the clock jumped: the machine slept) is moved to `now` plus a fresh
/// random delay instead, once: systemd's `Persistent=` catch-up.
pub fn due(job: &str, st: &mut JobState, timing: &Timing, policy: &Policy, now: i64) -> Due {
    if st.running.is_some() {
        return Due::No;
    }
    let Some(t) = st.next_run else {
        st.next_run = Some(now + secs(jitter(job, now, timing.randomized_delay_secs)));
        return Due::Rescheduled;
    };
    if now < t {
        return Due::No;
    }
    let late = now - t;
    if late >= secs(policy.missed_after_secs) && timing.randomized_delay_secs > 0 {
        st.next_run = Some(now + secs(jitter(job, now, timing.randomized_delay_secs)));
        if st.next_trigger != Some(Trigger::Retry) {
            st.next_trigger = Some(Trigger::Missed);
        }
        // A zero delay leaves it due now.
        if st.next_run == Some(now) {
            return Due::Now(st.next_trigger.unwrap_or(Trigger::Missed));
        }
        return Due::Rescheduled;
    }
    let trigger = match st.next_trigger {
        Some(tr) => tr,
        None if late >= secs(policy.missed_after_secs) => Trigger::Missed,
        None => Trigger::Schedule,
    };
    Due::Now(trigger)
}

/// Marks a run as started.
pub fn started(st: &mut JobState, now: i64, trigger: Trigger) {
    st.running = Some(Running { pid: std::process::id(), started: now, trigger });
    st.next_trigger = None;
}

/// When a run started and ended (the scheduler's clock), and how long it
/// took (measured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunTimes {
    /// Unix seconds at the start.
    pub started: i64,
    /// Unix seconds at the end.
    pub finished: i64,
    /// Seconds it took.
    pub seconds: f64,
}

/// Records a finished run and plans the next one: from its start (like
/// systemd's `OnUnitActiveSec=`), or after a failure from its end plus the
/// backoff.
pub fn finished(job: &str, st: &mut JobState, timing: &Timing, policy: &Policy, times: RunTimes, outcome: &Outcome) {
    let RunTimes { started, finished, seconds } = times;
    st.running = None;
    st.runs += 1;
    st.last_started = Some(started);
    st.last_finished = Some(finished);
    st.last_seconds = Some(seconds);
    st.last_outcome = Some(outcome.clone());
    match outcome {
        o if o.is_failure() => {
            st.consecutive_failures += 1;
            st.next_run = Some(finished + secs(backoff(policy, st.consecutive_failures)));
            st.next_trigger = Some(Trigger::Retry);
        }
        Outcome::Stopped | Outcome::Interrupted => {
            st.next_run = Some(finished);
            st.next_trigger = Some(Trigger::Missed);
        }
        _ => {
            st.consecutive_failures = 0;
            st.last_success = Some(finished);
            let base = started + secs(timing.interval_secs);
            st.next_run = Some(base + secs(jitter(job, base, timing.randomized_delay_secs)));
            st.next_trigger = None;
        }
    }
}

/// Records a deferral and plans the next look.
pub fn deferred(st: &mut JobState, policy: &Policy, d: Deferral) {
    st.deferrals += 1;
    st.last_deferral = Some(d);
    st.next_run = Some(d.at + secs(policy.defer_secs));
}

/// The wait before retry number `failures` (1 for the first): the base,
/// doubled per further failure, at most the maximum.
pub fn backoff(policy: &Policy, failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(40);
    policy.retry_base_secs.saturating_mul(1u64 << doublings).min(policy.retry_max_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;

    fn timing() -> Timing {
        Timing::every(6 * 3600, 300)
    }

    #[test]
    fn jitter_stays_in_range_and_spreads_jobs() {
        let mut seen = std::collections::BTreeSet::new();
        for job in ["mine", "dedup", "validate", "export", "train"] {
            let j = jitter(job, 1_000_000, 300);
            assert!(j <= 300);
            seen.insert(j);
        }
        assert!(seen.len() >= 4, "{seen:?}");
        assert_eq!(jitter("mine", 5, 0), 0);
        assert_eq!(jitter("mine", 5, 300), jitter("mine", 5, 300));
    }

    #[test]
    fn a_new_job_runs_once_after_its_random_delay() {
        let (t, p) = (timing(), Policy::default());
        let mut st = JobState::default();
        on_start("mine", &mut st, &t, 1000);
        let at = st.next_run.unwrap();
        assert!((1000..=1300).contains(&at));
        if at > 1000 {
            assert_eq!(due("mine", &mut st, &t, &p, 1000), Due::No);
        }
        assert_eq!(due("mine", &mut st, &t, &p, at), Due::Now(Trigger::Schedule));
        started(&mut st, at, Trigger::Schedule);
        assert_eq!(due("mine", &mut st, &t, &p, at + 7 * H), Due::No, "never overlaps itself");
        finished(
            "mine",
            &mut st,
            &t,
            &p,
            RunTimes { started: at, finished: at + 10, seconds: 10.0 },
            &Outcome::Succeeded,
        );
        let next = st.next_run.unwrap();
        assert!((at + 6 * H..=at + 6 * H + 300).contains(&next), "{next}");
        assert_eq!(st.runs, 1);
    }

    #[test]
    fn missed_runs_run_once_not_once_per_interval() {
        let (t, p) = (timing(), Policy::default());
        let mut st = JobState { next_run: Some(10 * H), ..Default::default() };
        // The daemon was down for three days: twelve 6-hour runs missed.
        let now = 10 * H + 72 * H;
        on_start("mine", &mut st, &t, now);
        let at = st.next_run.unwrap();
        assert!((now..=now + 300).contains(&at));
        assert_eq!(st.next_trigger, Some(Trigger::Missed));
        assert_eq!(due("mine", &mut st, &t, &p, at), Due::Now(Trigger::Missed));
        started(&mut st, at, Trigger::Missed);
        finished(
            "mine",
            &mut st,
            &t,
            &p,
            RunTimes { started: at, finished: at + 5, seconds: 5.0 },
            &Outcome::Succeeded,
        );
        assert_eq!(due("mine", &mut st, &t, &p, at + 5), Due::No);
        assert!(st.next_run.unwrap() >= at + 6 * H);
    }

    #[test]
    fn a_clock_jump_while_running_is_a_missed_run_with_a_fresh_delay() {
        let (t, p) = (timing(), Policy::default());
        let mut st = JobState { next_run: Some(100), ..Default::default() };
        let now = 100 + 72 * H;
        let d = due("mine", &mut st, &t, &p, now);
        let at = st.next_run.unwrap();
        if at == now {
            assert_eq!(d, Due::Now(Trigger::Missed));
        } else {
            assert_eq!(d, Due::Rescheduled);
            assert!(at > now && at <= now + 300);
            assert_eq!(due("mine", &mut st, &t, &p, at), Due::Now(Trigger::Missed));
        }
    }

    #[test]
    fn failures_back_off_and_a_success_resets() {
        let (t, p) = (timing(), Policy::default());
        let mut st = JobState::default();
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..4 {
            started(&mut st, now, Trigger::Retry);
            finished(
                "mine",
                &mut st,
                &t,
                &p,
                RunTimes { started: now, finished: now, seconds: 0.0 },
                &Outcome::Failed { error: "boom".into() },
            );
            let next = st.next_run.unwrap();
            waits.push(next - now);
            assert_eq!(due("mine", &mut st, &t, &p, next), Due::Now(Trigger::Retry));
            now = next;
        }
        assert_eq!(waits, [60, 120, 240, 480]);
        assert_eq!(backoff(&p, 30), 6 * 3600);
        started(&mut st, now, Trigger::Retry);
        finished(
            "mine",
            &mut st,
            &t,
            &p,
            RunTimes { started: now, finished: now + 1, seconds: 1.0 },
            &Outcome::Succeeded,
        );
        assert_eq!(st.consecutive_failures, 0);
        assert_eq!(st.runs, 5);
        assert!(st.next_run.unwrap() >= now + 6 * H);
    }

    #[test]
    fn stopped_and_interrupted_runs_are_due_again_at_once() {
        let (t, p) = (timing(), Policy::default());
        let mut st = JobState::default();
        started(&mut st, 50, Trigger::Schedule);
        finished("train", &mut st, &t, &p, RunTimes { started: 50, finished: 60, seconds: 10.0 }, &Outcome::Stopped);
        assert_eq!(st.next_run, Some(60));
        // A daemon killed while the job ran leaves `running` behind.
        started(&mut st, 70, Trigger::Schedule);
        assert_eq!(due("train", &mut st, &t, &p, 500), Due::No);
        let gone = interrupted(&mut st, 80);
        assert_eq!(gone.map(|r| r.started), Some(70));
        assert!(st.running.is_none());
        assert_eq!((st.runs, st.last_outcome.clone()), (2, Some(Outcome::Interrupted)));
        assert_eq!(due("train", &mut st, &t, &p, 80), Due::Now(Trigger::Missed));
    }

    #[test]
    fn a_deferral_looks_again_later_and_is_not_a_run() {
        let p = Policy::default();
        let mut st = JobState::default();
        deferred(&mut st, &p, Deferral { at: 500, available_bytes: 1, needed_bytes: 2 });
        assert_eq!(st.next_run, Some(1100));
        assert_eq!((st.runs, st.deferrals), (0, 1));
    }
}
