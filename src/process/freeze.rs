//! Freezing every thread of the target with `PTRACE_SEIZE` +
//! `PTRACE_INTERRUPT`, and the guard that lets it go again on every path.

use crate::cancel::CancelToken;
use crate::process::info;
use crate::sys::ptrace::{self, StopEvent};
use nix::errno::Errno;
use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FreezeError {
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: i32 },
    #[error(
        "process {pid} is a zombie (it has exited and waits for its parent to reap it); there is no memory left to dump"
    )]
    Zombie { pid: i32 },
    #[error("process {pid} is a kernel thread; it has no user memory to dump")]
    KernelThread { pid: i32 },
    #[error("process {pid} is coresnap itself; run coresnap from another process to dump it")]
    SelfTarget { pid: i32 },
    #[error(
        "thread {tid} of process {pid} is already traced by {tracer_comm} (pid {tracer_pid}); detach it first, or use --no-ptrace"
    )]
    AlreadyTraced {
        pid: i32,
        tid: i32,
        tracer_pid: i32,
        tracer_comm: String,
    },
    #[error("permission denied attaching to thread {tid} of process {pid}: {why}")]
    PermissionDenied { pid: i32, tid: i32, why: String },
    #[error("process {pid} exited while coresnap was attaching to it")]
    ProcessExited { pid: i32 },
    #[error(
        "thread {tid} of process {pid} did not stop within {timeout:?} (state {state}); it may be in uninterruptible sleep. Every thread was released; try again later or raise --timeout"
    )]
    Timeout {
        pid: i32,
        tid: i32,
        state: char,
        timeout: Duration,
    },
    #[error("interrupted by signal {signal} while attaching; every thread was released")]
    Interrupted { signal: i32 },
    #[error("ptrace {op} on thread {tid} of process {pid} failed: {errno}")]
    Ptrace {
        pid: i32,
        tid: i32,
        op: &'static str,
        errno: Errno,
    },
}

/// One thread held in a ptrace-stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrozenThread {
    pub tid: i32,
    /// A signal the thread was about to receive when it stopped; handed back
    /// on detach so the target does not lose it.
    pub owed_signal: Option<i32>,
}

/// Every thread of a process, stopped. Dropping it (or [`release`]) detaches
/// from each thread; a process that was in a group-stop before stays
/// stopped, every other one runs again.
///
/// ptrace ties a tracee to the tracer *thread*, so this guard must stay on
/// the thread that created it (it is `!Send`).
///
/// [`release`]: FrozenProcess::release
pub struct FrozenProcess {
    pid: i32,
    threads: Vec<FrozenThread>,
    /// Seized but not yet seen stopped: they still need a detach attempt.
    pending: Vec<i32>,
    was_stopped: bool,
    first_interrupt: Instant,
    _same_thread: PhantomData<*const ()>,
}

impl FrozenProcess {
    /// Stops every thread of `pid`, re-listing `/proc/PID/task` until a pass
    /// finds no thread that is not already stopped.
    pub fn freeze(
        pid: i32,
        timeout: Duration,
        cancel: &CancelToken,
    ) -> Result<FrozenProcess, FreezeError> {
        check_target(pid)?;
        let was_stopped = info::process_state(pid) == Some('T');
        let mut frozen = FrozenProcess {
            pid,
            threads: Vec::new(),
            pending: Vec::new(),
            was_stopped,
            first_interrupt: Instant::now(),
            _same_thread: PhantomData,
        };
        let mut known: BTreeSet<i32> = BTreeSet::new();
        loop {
            let tids = info::thread_ids(pid).map_err(|_| FreezeError::ProcessExited { pid })?;
            let new: Vec<i32> = tids.into_iter().filter(|t| !known.contains(t)).collect();
            if new.is_empty() {
                break;
            }
            for &tid in &new {
                known.insert(tid);
                match ptrace::seize(tid) {
                    Ok(()) => {}
                    Err(Errno::ESRCH) => continue,
                    Err(Errno::EPERM) => return Err(permission_error(pid, tid)),
                    Err(errno) => {
                        return Err(FreezeError::Ptrace {
                            pid,
                            tid,
                            op: "SEIZE",
                            errno,
                        });
                    }
                }
                frozen.pending.push(tid);
                if frozen.threads.is_empty() && frozen.pending.len() == 1 {
                    frozen.first_interrupt = Instant::now();
                }
                match ptrace::interrupt(tid) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(errno) => {
                        return Err(FreezeError::Ptrace {
                            pid,
                            tid,
                            op: "INTERRUPT",
                            errno,
                        });
                    }
                }
            }
            frozen.wait_for_pending(timeout, cancel)?;
        }
        if !frozen.threads.iter().any(|t| t.tid == pid) {
            return Err(FreezeError::ProcessExited { pid });
        }
        Ok(frozen)
    }

    fn wait_for_pending(
        &mut self,
        timeout: Duration,
        cancel: &CancelToken,
    ) -> Result<(), FreezeError> {
        let deadline = Instant::now() + timeout;
        let mut spins = 0u32;
        while !self.pending.is_empty() {
            let mut index = 0;
            while index < self.pending.len() {
                let tid = self.pending[index];
                let event = ptrace::poll_stop(tid).map_err(|errno| FreezeError::Ptrace {
                    pid: self.pid,
                    tid,
                    op: "waitpid",
                    errno,
                })?;
                match event {
                    StopEvent::NotYet => index += 1,
                    StopEvent::Gone => {
                        self.pending.swap_remove(index);
                    }
                    StopEvent::Trapped { .. } => {
                        self.pending.swap_remove(index);
                        self.threads.push(FrozenThread {
                            tid,
                            owed_signal: None,
                        });
                    }
                    StopEvent::SignalDelivery { signal } => {
                        self.pending.swap_remove(index);
                        self.threads.push(FrozenThread {
                            tid,
                            owed_signal: Some(signal),
                        });
                    }
                }
            }
            if self.pending.is_empty() {
                break;
            }
            if let Some(signal) = cancel.signal() {
                return Err(FreezeError::Interrupted { signal });
            }
            if Instant::now() >= deadline {
                let tid = self.pending[0];
                let state = info::thread_state(self.pid, tid).unwrap_or('?');
                return Err(FreezeError::Timeout {
                    pid: self.pid,
                    tid,
                    state,
                    timeout,
                });
            }
            // Most threads stop within microseconds; only back off to sleeping
            // for the stragglers, so the pause stays short.
            spins += 1;
            if spins < 200 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(())
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn threads(&self) -> &[FrozenThread] {
        &self.threads
    }

    /// The target was in a group-stop (state T) before coresnap came.
    pub fn was_stopped(&self) -> bool {
        self.was_stopped
    }

    /// Lets every thread go and returns how long the target was paused,
    /// from the first interrupt to the last detach.
    pub fn release(mut self) -> Duration {
        self.detach_all();
        self.first_interrupt.elapsed()
    }

    fn detach_all(&mut self) {
        for thread in self.threads.drain(..) {
            // ESRCH here means the thread is gone: nothing left to release.
            let _ = ptrace::detach(thread.tid, thread.owed_signal);
        }
        for tid in self.pending.drain(..) {
            // A thread that never reached its stop cannot be detached with
            // PTRACE_DETACH; wait a moment for it, then try again. If it is
            // still running (D state), the kernel detaches it when coresnap
            // exits.
            for _ in 0..50 {
                match ptrace::poll_stop(tid) {
                    Ok(StopEvent::NotYet) => std::thread::sleep(Duration::from_millis(1)),
                    Ok(StopEvent::Trapped { .. }) => {
                        let _ = ptrace::detach(tid, None);
                        break;
                    }
                    Ok(StopEvent::SignalDelivery { signal }) => {
                        let _ = ptrace::detach(tid, Some(signal));
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}

impl Drop for FrozenProcess {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn check_target(pid: i32) -> Result<(), FreezeError> {
    if pid == std::process::id() as i32 {
        return Err(FreezeError::SelfTarget { pid });
    }
    let Some(stat) = info::read_stat(pid) else {
        return Err(FreezeError::NoSuchProcess { pid });
    };
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(FreezeError::Zombie { pid });
    }
    const PF_KTHREAD: u64 = 0x0020_0000;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(FreezeError::KernelThread { pid });
    }
    Ok(())
}

fn permission_error(pid: i32, tid: i32) -> FreezeError {
    if let Some(tracer) = info::tracer_of(pid, tid).filter(|&t| t != 0) {
        let tracer_comm = info::comm(tracer).unwrap_or_else(|| "an unknown process".into());
        return FreezeError::AlreadyTraced {
            pid,
            tid,
            tracer_pid: tracer,
            tracer_comm,
        };
    }
    FreezeError::PermissionDenied {
        pid,
        tid,
        why: info::explain_permission_denied(pid),
    }
}
