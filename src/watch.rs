//! Waiting for the moment to dump: a signal that will end the target
//! (`--on-signal`), caught before the target acts on it, the start of its
//! exit (`--on-exit`), or a resource condition (`--cpu-above`,
//! `--rss-above`, `--threads-above`) read from `/proc` without stopping the
//! target.

use crate::cancel::CancelToken;
use crate::process::freeze::{FreezeError, FrozenProcess, FrozenThread, permission_error};
use crate::process::info;
use crate::process::signals::{self, ExitStatus, SignalOrigin};
use crate::sys::ptrace::{self, TraceStop};
use nix::errno::Errno;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The signals that end a process with a core by default, which is what
/// `--on-signal` watches for unless told otherwise.
pub const DEFAULT_FATAL_SIGNALS: [i32; 7] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGABRT,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGSYS,
    libc::SIGTRAP,
];

const PTRACE_EVENT_CLONE: i32 = 3;
const PTRACE_EVENT_EXIT: i32 = 6;

#[derive(Debug, Error)]
pub enum WatchError {
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error("ptrace {op} on thread {tid} failed while watching: {errno}")]
    Ptrace {
        tid: i32,
        op: &'static str,
        errno: Errno,
    },
    #[error("stopped watching: interrupted by signal {signal}")]
    Interrupted { signal: i32 },
}

/// Which exits `--on-exit` dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitFilter {
    /// A non-zero exit status or death by a signal.
    Failure,
    /// Every exit, `exit(0)` included.
    Any,
}

/// Called once every thread is attached, with the pid and the number of
/// threads.
pub type WatchingFn = std::sync::Arc<dyn Fn(i32, usize) + Send + Sync>;

/// What a watch waits for: a signal, an exit, or either, whichever comes
/// first.
#[derive(Clone, Default)]
pub struct WatchFor {
    /// Signals that trigger a dump (empty: none).
    pub signals: Vec<i32>,
    /// Dump at every delivery of a listed signal, even one the target
    /// handles or ignores; by default only a delivery that will end the
    /// process triggers a dump.
    pub every_signal: bool,
    /// Dump when the process is about to exit.
    pub on_exit: Option<ExitFilter>,
    /// Told when watching begins.
    pub watching: Option<WatchingFn>,
}

impl std::fmt::Debug for WatchFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchFor")
            .field("signals", &self.signals)
            .field("every_signal", &self.every_signal)
            .field("on_exit", &self.on_exit)
            .finish_non_exhaustive()
    }
}

/// The signal that triggered a dump.
#[derive(Debug, Clone)]
pub struct SignalTrigger {
    pub tid: i32,
    pub signal: i32,
    /// The `siginfo_t` the kernel queued, exactly.
    pub siginfo: [u8; 128],
    /// Its delivery ends the process: no handler, not ignored, and a
    /// default action that terminates.
    pub will_end_process: bool,
}

impl SignalTrigger {
    pub fn origin(&self) -> SignalOrigin {
        SignalOrigin::from_siginfo(&self.siginfo)
    }
}

/// The exit that triggered a dump: `tid` is the thread that called
/// `exit_group`, or for a death by a signal the first one seen at its exit
/// stop.
#[derive(Debug, Clone, Copy)]
pub struct ExitTrigger {
    pub tid: i32,
    pub status: ExitStatus,
}

/// What made the watcher dump.
#[derive(Debug, Clone)]
pub enum Trigger {
    Signal(SignalTrigger),
    Exit(ExitTrigger),
}

impl Trigger {
    pub fn tid(&self) -> i32 {
        match self {
            Trigger::Signal(s) => s.tid,
            Trigger::Exit(e) => e.tid,
        }
    }

    /// The process will not survive what triggered the dump, so there is
    /// nothing left to watch after it.
    pub fn ends_process(&self) -> bool {
        match self {
            Trigger::Signal(s) => s.will_end_process,
            Trigger::Exit(_) => true,
        }
    }

    pub fn signal(&self) -> Option<&SignalTrigger> {
        match self {
            Trigger::Signal(s) => Some(s),
            Trigger::Exit(_) => None,
        }
    }
}

/// What the watch ended with.
pub enum WatchOutcome {
    /// The trigger came: every thread is frozen; for a signal, the
    /// signalled thread holds it, and it is delivered unchanged when
    /// released; for an exit, every thread sits at its exit stop, and the
    /// exit goes on when released.
    Triggered(Box<FrozenProcess>, Trigger),
    /// The process exited without a trigger.
    Exited,
}

/// Every thread seized (running at full speed), released on drop.
struct Watching {
    pid: i32,
    threads: BTreeSet<i32>,
    /// Threads whose stop we have seen but not yet resumed.
    stopped: BTreeSet<i32>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        for &tid in &self.threads {
            // A running tracee must be stopped before PTRACE_DETACH.
            if !self.stopped.contains(&tid) {
                let _ = ptrace::interrupt(tid);
                let deadline = Instant::now() + Duration::from_millis(500);
                while Instant::now() < deadline {
                    match ptrace::poll_trace_stop(tid) {
                        Ok(TraceStop::NotYet) => std::thread::sleep(Duration::from_micros(100)),
                        Ok(TraceStop::Signal { signal }) => {
                            let _ = ptrace::detach(tid, Some(signal));
                            break;
                        }
                        _ => break,
                    }
                }
            }
            let _ = ptrace::detach(tid, None);
        }
    }
}

/// Stays attached to `pid` (PTRACE_SEIZE: no stop, no signal) and passes
/// every signal through at once, until the trigger `watch` describes
/// comes; then freezes the whole process around it.
pub fn wait_for_trigger(
    pid: i32,
    watch: &WatchFor,
    cancel: &CancelToken,
) -> Result<WatchOutcome, WatchError> {
    if info::read_stat(pid).is_none() {
        return Err(FreezeError::NoSuchProcess { pid }.into());
    }
    let trace_exit = watch.on_exit.is_some();
    let mut watching = Watching {
        pid,
        threads: BTreeSet::new(),
        stopped: BTreeSet::new(),
    };
    loop {
        let tids = info::thread_ids(pid).map_err(|_| FreezeError::ProcessExited { pid })?;
        let new: Vec<i32> = tids
            .into_iter()
            .filter(|t| !watching.threads.contains(t))
            .collect();
        if new.is_empty() {
            break;
        }
        for tid in new {
            match ptrace::seize_watching(tid, trace_exit) {
                Ok(()) => {
                    watching.threads.insert(tid);
                }
                Err(Errno::ESRCH) => {}
                Err(Errno::EPERM) => return Err(permission_error(pid, tid).into()),
                Err(errno) => {
                    return Err(WatchError::Ptrace {
                        tid,
                        op: "SEIZE",
                        errno,
                    });
                }
            }
        }
    }
    if let Some(watching_fn) = &watch.watching {
        watching_fn(pid, watching.threads.len());
    }
    let pt = |tid, op| move |errno| WatchError::Ptrace { tid, op, errno };
    loop {
        let Some((tid, stop)) = ptrace::poll_any().map_err(pt(pid, "waitpid"))? else {
            if let Some(signal) = cancel.signal() {
                return Err(WatchError::Interrupted { signal });
            }
            if watching.threads.is_empty() {
                return Ok(WatchOutcome::Exited);
            }
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        match stop {
            TraceStop::Signal { signal } if watch.signals.contains(&signal) => {
                // Read at the stop, when the kernel has settled how this
                // delivery will be handled (a forced fault has had its
                // handler reset already).
                // A disposition that cannot be read counts as fatal: a
                // needless dump is better than a crash let through.
                let will_end_process = signals::disposition(pid, tid, signal)
                    .is_none_or(|d| signals::will_end_process(d, signal));
                if !(will_end_process || watch.every_signal) {
                    ptrace::resume_with(tid, Some(signal)).map_err(pt(tid, "CONT"))?;
                    continue;
                }
                let siginfo = ptrace::get_siginfo(tid).map_err(pt(tid, "GETSIGINFO"))?;
                watching.stopped.insert(tid);
                let frozen = freeze_around(&mut watching, tid, Some(signal))?;
                return Ok(WatchOutcome::Triggered(
                    Box::new(frozen),
                    Trigger::Signal(SignalTrigger {
                        tid,
                        signal,
                        siginfo,
                        will_end_process,
                    }),
                ));
            }
            // Anything else is the target's business: hand it on unchanged.
            TraceStop::Signal { signal } => {
                ptrace::resume_with(tid, Some(signal)).map_err(pt(tid, "CONT"))?
            }
            TraceStop::Event {
                event: PTRACE_EVENT_EXIT,
            } => {
                let status = ptrace::event_message(tid)
                    .map(|m| ExitStatus::from_wait_status(m as i32))
                    .map_err(pt(tid, "GETEVENTMSG"))?;
                let wanted = match watch.on_exit {
                    Some(ExitFilter::Any) => true,
                    Some(ExitFilter::Failure) => status.is_failure(),
                    None => false,
                };
                if wanted && !is_lone_thread_exit(pid, tid) {
                    watching.stopped.insert(tid);
                    let frozen = freeze_around(&mut watching, tid, None)?;
                    let tid = exit_group_caller(&frozen).unwrap_or(tid);
                    return Ok(WatchOutcome::Triggered(
                        Box::new(frozen),
                        Trigger::Exit(ExitTrigger { tid, status }),
                    ));
                }
                ptrace::resume(tid).map_err(pt(tid, "CONT"))?;
            }
            TraceStop::Event { event } => {
                if event == PTRACE_EVENT_CLONE
                    && let Ok(new) = ptrace::event_message(tid)
                {
                    watching.threads.insert(new as i32);
                }
                ptrace::resume(tid).map_err(pt(tid, "CONT"))?;
            }
            TraceStop::GroupOrInterrupt { signal } if signal != libc::SIGTRAP => {
                // A group-stop (SIGSTOP and friends): stay stopped as asked.
                ptrace::listen(tid).map_err(pt(tid, "LISTEN"))?;
            }
            TraceStop::GroupOrInterrupt { .. } => {
                // A new thread's first stop, or the end of a group-stop.
                watching.threads.insert(tid);
                ptrace::resume(tid).map_err(pt(tid, "CONT"))?;
            }
            TraceStop::Exited => {
                watching.threads.remove(&tid);
                if tid == pid && info::read_stat(pid).is_none() {
                    watching.threads.clear();
                    return Ok(WatchOutcome::Exited);
                }
            }
            TraceStop::NotYet => {}
        }
    }
}

/// The thread that called `exit_group`, among threads held at their exit
/// stops: the others, taken down by it, may reach their stops first.
fn exit_group_caller(frozen: &FrozenProcess) -> Option<i32> {
    frozen
        .threads()
        .iter()
        .map(|t| t.tid)
        .find(|&tid| ptrace::get_regs(tid).is_ok_and(|r| r.orig_rax == libc::SYS_exit_group as u64))
}

/// At `tid`'s exit stop: it is one thread ending with `SYS_exit` (a
/// `pthread_exit`) while others live on, not the process ending. A thread
/// that `exit_group` or a fatal signal takes down stops in whatever system
/// call it was in, or none; only the thread that called `exit` itself
/// stops in `exit`.
fn is_lone_thread_exit(pid: i32, tid: i32) -> bool {
    let in_exit = ptrace::get_regs(tid).is_ok_and(|r| r.orig_rax == libc::SYS_exit as u64);
    // A leader that called pthread_exit stays listed as a zombie until the
    // last thread goes: it does not keep the process alive.
    let alive = |t: i32| !matches!(info::thread_state(pid, t), Some('Z' | 'X') | None);
    let others = info::thread_ids(pid).is_ok_and(|tids| tids.iter().any(|&t| t != tid && alive(t)));
    in_exit && others
}

/// Stops every other thread while `tid` sits on its signal (or at its exit
/// stop), and hands them all over to a [`FrozenProcess`].
fn freeze_around(
    watching: &mut Watching,
    tid: i32,
    signal: Option<i32>,
) -> Result<FrozenProcess, WatchError> {
    let started = Instant::now();
    let mut frozen = vec![FrozenThread {
        tid,
        owed_signal: signal,
    }];
    let mut waiting: Vec<i32> = watching
        .threads
        .iter()
        .copied()
        .filter(|&t| t != tid)
        .collect();
    for &t in &waiting {
        let _ = ptrace::interrupt(t);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut index = 0;
        while index < waiting.len() {
            let t = waiting[index];
            match ptrace::poll_trace_stop(t).map_err(|errno| WatchError::Ptrace {
                tid: t,
                op: "waitpid",
                errno,
            })? {
                TraceStop::NotYet => index += 1,
                TraceStop::Exited => {
                    waiting.swap_remove(index);
                    watching.threads.remove(&t);
                }
                TraceStop::Signal { signal } => {
                    waiting.swap_remove(index);
                    frozen.push(FrozenThread {
                        tid: t,
                        owed_signal: Some(signal),
                    });
                }
                TraceStop::Event { event } => {
                    waiting.swap_remove(index);
                    frozen.push(FrozenThread {
                        tid: t,
                        owed_signal: None,
                    });
                    // A thread created just now is attached already and
                    // stops by itself: it is frozen (and released) too.
                    if event == PTRACE_EVENT_CLONE
                        && let Ok(new) = ptrace::event_message(t)
                    {
                        waiting.push(new as i32);
                    }
                }
                TraceStop::GroupOrInterrupt { .. } => {
                    waiting.swap_remove(index);
                    frozen.push(FrozenThread {
                        tid: t,
                        owed_signal: None,
                    });
                }
            }
        }
        std::thread::yield_now();
    }
    if let Some(&t) = waiting.first() {
        return Err(FreezeError::Timeout {
            pid: watching.pid,
            tid: t,
            state: info::thread_state(watching.pid, t).unwrap_or('?'),
            timeout: Duration::from_secs(5),
        }
        .into());
    }
    // The frozen process owns the threads now; the watcher must not detach.
    watching.threads.clear();
    Ok(FrozenProcess::adopt(watching.pid, frozen, started))
}

/// A resource condition checked from `/proc` without stopping the target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// CPU use of the whole process, in percent of one core.
    CpuAbove(f64),
    /// Resident memory, in bytes.
    RssAbove(u64),
    ThreadsAbove(u64),
}

/// Current values of the watched quantities.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub threads: u64,
}

impl Condition {
    pub fn holds(&self, r: &Reading) -> bool {
        match *self {
            Condition::CpuAbove(p) => r.cpu_percent > p,
            Condition::RssAbove(b) => r.rss_bytes > b,
            Condition::ThreadsAbove(n) => r.threads > n,
        }
    }
}

/// Samples a process's CPU use (between successive calls), RSS and thread
/// count.
pub struct Sampler {
    pid: i32,
    last: Option<(Instant, u64)>,
}

impl Sampler {
    pub fn new(pid: i32) -> Sampler {
        Sampler { pid, last: None }
    }

    /// `None` once the process is gone.
    pub fn sample(&mut self) -> Option<Reading> {
        let process = procfs::process::Process::new(self.pid).ok()?;
        let stat = process.stat().ok()?;
        if stat.state == 'Z' || stat.state == 'X' {
            return None;
        }
        let ticks = stat.utime + stat.stime;
        let now = Instant::now();
        let hz = procfs::ticks_per_second().max(1) as f64;
        let cpu_percent = match self.last {
            Some((then, before)) if now > then => {
                (ticks.saturating_sub(before) as f64 / hz) / now.duration_since(then).as_secs_f64()
                    * 100.0
            }
            _ => 0.0,
        };
        self.last = Some((now, ticks));
        let page = procfs::page_size();
        Some(Reading {
            cpu_percent,
            rss_bytes: stat.rss * page,
            threads: stat.num_threads.max(0) as u64,
        })
    }
}

/// Samples every `period` until every condition has held continuously for
/// `hold` (the first sample only sets the CPU baseline). Returns the
/// reading that completed the wait, or `None` if the process exited.
pub fn wait_for_conditions(
    pid: i32,
    conditions: &[Condition],
    hold: Duration,
    period: Duration,
    cancel: &CancelToken,
    mut status: impl FnMut(&Reading, Option<Duration>),
) -> Result<Option<Reading>, WatchError> {
    let mut sampler = Sampler::new(pid);
    if sampler.sample().is_none() {
        return Err(FreezeError::NoSuchProcess { pid }.into());
    }
    let mut held_since: Option<Instant> = None;
    loop {
        std::thread::sleep(period);
        if let Some(signal) = cancel.signal() {
            return Err(WatchError::Interrupted { signal });
        }
        let Some(reading) = sampler.sample() else {
            return Ok(None);
        };
        if conditions.iter().all(|c| c.holds(&reading)) {
            let since = *held_since.get_or_insert_with(Instant::now);
            status(&reading, Some(since.elapsed()));
            if since.elapsed() >= hold {
                return Ok(Some(reading));
            }
        } else {
            held_since = None;
            status(&reading, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_compare_strictly_above() {
        let r = Reading {
            cpu_percent: 50.0,
            rss_bytes: 1 << 20,
            threads: 4,
        };
        assert!(Condition::CpuAbove(49.9).holds(&r));
        assert!(!Condition::CpuAbove(50.0).holds(&r));
        assert!(Condition::RssAbove(1 << 19).holds(&r));
        assert!(!Condition::ThreadsAbove(4).holds(&r));
    }

    #[test]
    fn sampler_sees_own_cpu_use() {
        // This thread's CPU time in clock ticks (utime + stime), as the
        // kernel counts it: on a loaded machine the spin below gets only
        // part of a CPU, so it spins until it has had 300 ms of one.
        fn own_ticks() -> u64 {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
            fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
        }
        let tick_ms = 1000 / procfs::ticks_per_second();
        let mut sampler = Sampler::new(std::process::id() as i32);
        sampler.sample().unwrap();
        let start = Instant::now();
        let ticks_before = own_ticks();
        let mut x = 0u64;
        while (own_ticks() - ticks_before) * tick_ms < 300 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no CPU time in 60 s"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let reading = sampler.sample().unwrap();
        let spun_ms = ((own_ticks() - ticks_before) * tick_ms) as f64;
        // The process used at least what this thread did (less a tick of
        // rounding at each end).
        let at_least =
            (spun_ms - 2.0 * tick_ms as f64) / start.elapsed().as_millis() as f64 * 100.0;
        assert!(
            reading.cpu_percent >= at_least,
            "{reading:?}, at least {at_least:.1}%"
        );
        assert!(reading.threads >= 1 && reading.rss_bytes > 0);
    }
}
