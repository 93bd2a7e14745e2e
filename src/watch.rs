//! Waiting for the moment to dump: a fatal signal (`--on-signal`), caught
//! before the target acts on it, or a resource condition (`--cpu-above`,
//! `--rss-above`, `--threads-above`) read from `/proc` without stopping the
//! target.

use crate::cancel::CancelToken;
use crate::process::freeze::{FreezeError, FrozenProcess, FrozenThread, permission_error};
use crate::process::info;
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

/// The signal that triggered a dump.
#[derive(Debug, Clone)]
pub struct SignalTrigger {
    pub tid: i32,
    pub signal: i32,
    /// The `siginfo_t` the kernel queued, exactly.
    pub siginfo: [u8; 128],
}

/// What the watch ended with.
pub enum WatchOutcome {
    /// A watched signal arrived: every thread is frozen, the signalled one
    /// holds the signal, which is delivered unchanged when released.
    Signal(Box<FrozenProcess>, SignalTrigger),
    /// The process exited without a watched signal.
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
/// every signal through at once, until a thread is about to receive one of
/// `signals`; then freezes the whole process around it.
pub fn wait_for_signal(
    pid: i32,
    signals: &[i32],
    cancel: &CancelToken,
) -> Result<WatchOutcome, WatchError> {
    if info::read_stat(pid).is_none() {
        return Err(FreezeError::NoSuchProcess { pid }.into());
    }
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
            match ptrace::seize_tracing_clones(tid) {
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
            TraceStop::Signal { signal } if signals.contains(&signal) => {
                let siginfo = ptrace::get_siginfo(tid).map_err(pt(tid, "GETSIGINFO"))?;
                watching.stopped.insert(tid);
                let frozen = freeze_around(&mut watching, tid, signal)?;
                return Ok(WatchOutcome::Signal(
                    Box::new(frozen),
                    SignalTrigger {
                        tid,
                        signal,
                        siginfo,
                    },
                ));
            }
            // Anything else is the target's business: hand it on unchanged.
            TraceStop::Signal { signal } => {
                ptrace::resume_with(tid, Some(signal)).map_err(pt(tid, "CONT"))?
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

/// Stops every other thread while `tid` sits on its signal, and hands them
/// all over to a [`FrozenProcess`].
fn freeze_around(
    watching: &mut Watching,
    tid: i32,
    signal: i32,
) -> Result<FrozenProcess, WatchError> {
    let started = Instant::now();
    let mut frozen = vec![FrozenThread {
        tid,
        owed_signal: Some(signal),
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
        let mut sampler = Sampler::new(std::process::id() as i32);
        sampler.sample().unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let reading = sampler.sample().unwrap();
        assert!(reading.cpu_percent > 30.0, "{reading:?}");
        assert!(reading.threads >= 1 && reading.rss_bytes > 0);
    }
}
