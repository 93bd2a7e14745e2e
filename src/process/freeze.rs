//! Freezing every thread of the target with `PTRACE_SEIZE` +
//! `PTRACE_INTERRUPT`, and the guard that lets it go again on every path.

use crate::cancel::CancelToken;
use crate::process::info;
use crate::process::permission::PtraceFacts;
use crate::sys::ptrace::{self, StopEvent};
use nix::errno::Errno;
use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::{Mutex, MutexGuard};
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
        "{tid} is a thread of process {pid}, not a process; to dump the process it belongs to, run: coresnap {pid}"
    )]
    NotAProcess { tid: i32, pid: i32 },
    #[error(
        "the main thread of process {pid} has exited while {threads} other thread(s) run on; coresnap cannot dump a process whose main thread is gone"
    )]
    LeaderExited { pid: i32, threads: usize },
    #[error(
        "thread {tid} of process {pid} is already traced by {} (pid {tracer_pid}); a thread can have only one tracer: detach it (quit the debugger, stop strace) and run coresnap again, or take a core with partial registers without ptrace: coresnap --no-ptrace {pid}",
        // Any process can name itself: its name reaches the terminal escaped.
        crate::escape::Escaped(.tracer_comm)
    )]
    AlreadyTraced {
        pid: i32,
        tid: i32,
        tracer_pid: i32,
        tracer_comm: String,
    },
    #[error("permission denied to thread {tid} of process {pid}: {why}")]
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

/// A thread seen in uninterruptible sleep (state D) and not attached yet.
/// `PTRACE_INTERRUPT` cannot stop it before it wakes up, and a seized thread
/// that never stops cannot be detached (`PTRACE_DETACH` needs a stopped
/// tracee): it would stay traced, and stop as soon as it woke, until the
/// tracing thread exits. So it is seized only once it shows that it is not
/// stuck: it left D state, or it was switched out again since it was first
/// seen (a thread busy with I/O sleeps in D over and over).
#[derive(Debug, Clone, Copy)]
struct Sleeper {
    tid: i32,
    switches: u64,
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
        let mut sleepers: Vec<Sleeper> = Vec::new();
        loop {
            let tids = info::thread_ids(pid).map_err(|_| FreezeError::ProcessExited { pid })?;
            let new: Vec<i32> = tids.into_iter().filter(|t| !known.contains(t)).collect();
            if new.is_empty() {
                break;
            }
            for &tid in &new {
                known.insert(tid);
                match info::thread_progress(pid, tid) {
                    Some(('D', switches)) => sleepers.push(Sleeper { tid, switches }),
                    _ => frozen.attach(tid)?,
                }
            }
            frozen.wait_for_pending(&mut sleepers, timeout, cancel)?;
        }
        if !frozen.threads.iter().any(|t| t.tid == pid) {
            if info::process_state(pid) == Some('Z') && !frozen.threads.is_empty() {
                let threads = threads_left_after_exit(pid);
                if threads > 0 {
                    return Err(FreezeError::LeaderExited { pid, threads });
                }
            }
            return Err(FreezeError::ProcessExited { pid });
        }
        Ok(frozen)
    }

    /// `PTRACE_SEIZE` + `PTRACE_INTERRUPT` of one thread, which is then
    /// pending until its stop is seen. A thread that is gone or exiting
    /// (the kernel refuses to attach to those with EPERM) is skipped.
    fn attach(&mut self, tid: i32) -> Result<(), FreezeError> {
        let pid = self.pid;
        match ptrace::seize(tid) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(()),
            Err(Errno::EPERM) if thread_is_exiting(pid, tid) => return Ok(()),
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
        if self.threads.is_empty() && self.pending.is_empty() {
            self.first_interrupt = Instant::now();
        }
        self.pending.push(tid);
        match ptrace::interrupt(tid) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(errno) => Err(FreezeError::Ptrace {
                pid,
                tid,
                op: "INTERRUPT",
                errno,
            }),
        }
    }

    /// Waits until every pending thread has stopped (or is gone) and every
    /// sleeper has woken and been attached, or fails after `timeout`.
    fn wait_for_pending(
        &mut self,
        sleepers: &mut Vec<Sleeper>,
        timeout: Duration,
        cancel: &CancelToken,
    ) -> Result<(), FreezeError> {
        let deadline = Instant::now() + timeout;
        let mut spins = 0u32;
        while !self.pending.is_empty() || !sleepers.is_empty() {
            let mut index = 0;
            while index < sleepers.len() {
                let sleeper = sleepers[index];
                match info::thread_progress(self.pid, sleeper.tid) {
                    None => {
                        sleepers.swap_remove(index);
                    }
                    Some(('D', switches)) if switches == sleeper.switches => index += 1,
                    Some(_) => {
                        sleepers.swap_remove(index);
                        self.attach(sleeper.tid)?;
                    }
                }
            }
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
                    // A zombie never stops: that thread has exited (often the
                    // main thread of a process that is exiting as a whole).
                    StopEvent::NotYet if spins >= 200 && thread_is_exiting(self.pid, tid) => {
                        self.pending.swap_remove(index);
                    }
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
                        remember_owed(self.pid, tid, signal);
                        self.threads.push(FrozenThread {
                            tid,
                            owed_signal: Some(signal),
                        });
                    }
                }
            }
            if self.pending.is_empty() && sleepers.is_empty() {
                break;
            }
            if let Some(signal) = cancel.signal() {
                return Err(FreezeError::Interrupted { signal });
            }
            if Instant::now() >= deadline {
                // Name a thread that was never attached first: it is the
                // one that is stuck, the pending ones may only be slow.
                let tid = sleepers.first().map_or_else(|| self.pending[0], |s| s.tid);
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

    /// Takes over threads that the caller already holds in ptrace-stops
    /// (the signal watcher freezes a process around the thread that got
    /// the signal). From here on they are released like any frozen thread.
    pub fn adopt(pid: i32, threads: Vec<FrozenThread>, first_interrupt: Instant) -> FrozenProcess {
        for thread in &threads {
            if let Some(signal) = thread.owed_signal {
                remember_owed(pid, thread.tid, signal);
            }
        }
        FrozenProcess {
            pid,
            threads,
            pending: Vec::new(),
            was_stopped: false,
            first_interrupt,
            _same_thread: PhantomData,
        }
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
            // Under the lock, so that a signal is either handed back here or
            // sent again by an exit that could not wait (never both).
            let mut owed = owed_signals();
            let signal = thread
                .owed_signal
                .filter(|_| take_owed(&mut owed, thread.tid));
            // ESRCH here means the thread is gone: nothing left to release.
            let _ = ptrace::detach(thread.tid, signal);
        }
        for tid in self.pending.drain(..) {
            // A thread that never reached its stop cannot be detached with
            // PTRACE_DETACH; wait a moment for it, then try again. If it is
            // still running (it went into D state between the check and the
            // interrupt), the kernel detaches it when this thread exits.
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

/// A signal a held thread had taken off its queue when it stopped, which
/// only `PTRACE_DETACH` (or `PTRACE_CONT`) with its number delivers: if
/// coresnap exits without detaching, the kernel lets the thread go without
/// it.
struct OwedSignal {
    pid: i32,
    tid: i32,
    signal: i32,
    siginfo: Option<[u8; 128]>,
}

/// Every signal owed by a live freeze of this process, for
/// [`resend_owed_before_exit`].
static OWED: Mutex<Vec<OwedSignal>> = Mutex::new(Vec::new());

fn owed_signals() -> MutexGuard<'static, Vec<OwedSignal>> {
    OWED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Must run on the tracing thread, with `tid` in its signal-delivery-stop.
fn remember_owed(pid: i32, tid: i32, signal: i32) {
    let siginfo = ptrace::get_siginfo(tid).ok();
    owed_signals().push(OwedSignal {
        pid,
        tid,
        signal,
        siginfo,
    });
}

/// Whether `tid` still owes its signal (and it is now the caller's to hand
/// back).
fn take_owed(owed: &mut Vec<OwedSignal>, tid: i32) -> bool {
    let before = owed.len();
    owed.retain(|o| o.tid != tid);
    owed.len() != before
}

/// For an exit that cannot wait for the tracing thread (stuck in a write
/// after SIGINT): sends every owed signal again, since the kernel releases
/// the held threads without them. A signal sent with `sigqueue` or the like
/// goes back with its siginfo unchanged (`rt_tgsigqueueinfo`); one the
/// kernel or `kill` sent goes back with `tgkill` (same signal and thread,
/// coresnap as sender). A fault (SIGSEGV, SIGBUS, SIGILL, SIGFPE from the
/// CPU) is not sent: the instruction runs again and faults again.
pub fn resend_owed_before_exit() {
    const SI_TKILL: i32 = -6;
    let mut owed = owed_signals();
    for owed in owed.drain(..) {
        let code = owed
            .siginfo
            .map(|raw| i32::from_ne_bytes(raw[8..12].try_into().expect("4 bytes")));
        let fault = matches!(
            owed.signal,
            libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
        ) && code.is_some_and(|c| c > 0);
        if fault {
            continue;
        }
        match (owed.siginfo, code) {
            (Some(raw), Some(code)) if code < 0 && code != SI_TKILL => {
                // SAFETY: the kernel reads sizeof(siginfo_t) = 128 bytes
                // from the pointer, and `raw` is 128 readable bytes.
                unsafe {
                    libc::syscall(
                        libc::SYS_rt_tgsigqueueinfo,
                        owed.pid,
                        owed.tid,
                        owed.signal,
                        raw.as_ptr(),
                    )
                };
            }
            _ => {
                // SAFETY: plain system call with integer arguments.
                unsafe { libc::syscall(libc::SYS_tgkill, owed.pid, owed.tid, owed.signal) };
            }
        }
    }
}

/// What can be told before attaching: the pid names a live user process
/// other than coresnap.
pub(crate) fn check_target(pid: i32) -> Result<(), FreezeError> {
    let me = std::process::id() as i32;
    if pid == me {
        return Err(FreezeError::SelfTarget { pid });
    }
    let Some(stat) = info::read_stat(pid) else {
        return Err(FreezeError::NoSuchProcess { pid });
    };
    const PF_KTHREAD: u64 = 0x0020_0000;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(FreezeError::KernelThread { pid });
    }
    // /proc/TID exists for every thread, not only for the main ones.
    match info::thread_group(pid) {
        Some(tgid) if tgid == me => return Err(FreezeError::SelfTarget { pid }),
        Some(tgid) if tgid != pid => {
            return Err(FreezeError::NotAProcess {
                tid: pid,
                pid: tgid,
            });
        }
        _ => {}
    }
    if stat.state == 'Z' || stat.state == 'X' {
        let live = threads_left_after_exit(pid);
        if live > 0 {
            return Err(FreezeError::LeaderExited { pid, threads: live });
        }
        return Err(FreezeError::Zombie { pid });
    }
    Ok(())
}

/// How many threads of `pid`, whose main thread has exited, go on running.
/// A process that is exiting as a whole (killed, or `exit()`) loses its
/// main thread first and the others within milliseconds, so they are
/// given a moment to go before the main thread is said to have exited alone.
fn threads_left_after_exit(pid: i32) -> usize {
    let live = || {
        info::thread_ids(pid)
            .unwrap_or_default()
            .into_iter()
            .filter(|&tid| tid != pid && !thread_is_exiting(pid, tid))
            .count()
    };
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut threads = live();
    while threads > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        threads = live();
    }
    threads
}

/// Gone, or a zombie that only waits to be released.
fn thread_is_exiting(pid: i32, tid: i32) -> bool {
    matches!(info::thread_state(pid, tid), None | Some('Z' | 'X' | 'x'))
}

/// Why the kernel said EPERM, from what /proc shows now.
pub(crate) fn explain_permission_denied(pid: i32) -> String {
    PtraceFacts::read(pid).map_or_else(
        || "the process may have exited meanwhile".to_string(),
        |facts| facts.explain(),
    )
}

/// The error for EPERM from PTRACE_SEIZE of `tid`: another tracer, named,
/// or the reasons the kernel refuses.
pub(crate) fn permission_error(pid: i32, tid: i32) -> FreezeError {
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
        why: explain_permission_denied(pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// coresnap cannot stop itself (its own threads would have to do the
    /// stopping); it says so for its pid and for any of its thread ids,
    /// before attaching to anything.
    #[test]
    fn refuses_its_own_process_and_threads() {
        let me = std::process::id() as i32;
        let cancel = CancelToken::new();
        let err = FrozenProcess::freeze(me, Duration::from_secs(1), &cancel)
            .err()
            .expect("must fail");
        assert!(
            matches!(err, FreezeError::SelfTarget { pid } if pid == me),
            "{err}"
        );
        assert!(err.to_string().contains("is coresnap itself"), "{err}");

        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let err = FrozenProcess::freeze(tid, Duration::from_secs(1), &cancel)
            .err()
            .expect("must fail");
        assert!(
            matches!(err, FreezeError::SelfTarget { pid } if pid == tid),
            "{err}"
        );
        drop(done_tx);
        helper.join().unwrap();
        assert_eq!(info::tracer_of(me, me), Some(0));
    }

    #[test]
    fn thread_progress_reads_state_and_switches() {
        let me = std::process::id() as i32;
        // The test runs on a thread of its own, not on the main one.
        let tid = nix::unistd::gettid().as_raw();
        let (state, before) = info::thread_progress(me, tid).unwrap();
        assert_eq!(state, 'R');
        std::thread::sleep(Duration::from_millis(2));
        let (_, after) = info::thread_progress(me, tid).unwrap();
        assert!(after > before, "{before} -> {after}");
        assert_eq!(info::thread_group(tid), Some(me));
        assert_eq!(info::thread_group(me), Some(me));
    }
}
