//! ptrace requests, all of which must come from the thread that seized the
//! tracee (the kernel ties a tracee to one tracer *thread*).

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// What `waitpid` reported for a tracee we asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopEvent {
    /// Stopped by our `PTRACE_INTERRUPT` or by a group-stop; no signal is owed.
    Trapped {
        /// The stop signal when this is a group-stop (SIGSTOP, SIGTSTP...).
        group_stop: Option<i32>,
    },
    /// Stopped on the way to delivering `signal`, which must be handed back
    /// on detach or the target would lose it.
    SignalDelivery { signal: i32 },
    /// The thread exited (or the whole process did) before it stopped.
    Gone,
    /// Nothing to report yet.
    NotYet,
}

/// `PTRACE_SEIZE` with no options: unlike `PTRACE_ATTACH` it queues no
/// SIGSTOP, so detaching leaves nothing behind.
pub fn seize(tid: i32) -> Result<(), Errno> {
    ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty())
}

/// `PTRACE_SEIZE` with `PTRACE_O_TRACECLONE`, so that threads the tracee
/// creates are attached too (a seized thread that runs cannot be given
/// options later).
pub fn seize_tracing_clones(tid: i32) -> Result<(), Errno> {
    ptrace::seize(Pid::from_raw(tid), ptrace::Options::PTRACE_O_TRACECLONE)
}

pub fn interrupt(tid: i32) -> Result<(), Errno> {
    ptrace::interrupt(Pid::from_raw(tid))
}

/// Detach, re-delivering a signal the thread was stopped on, if any.
pub fn detach(tid: i32, signal: Option<i32>) -> Result<(), Errno> {
    let sig = signal.and_then(|s| Signal::try_from(s).ok());
    ptrace::detach(Pid::from_raw(tid), sig)
}

/// Polls (WNOHANG) for the stop of one tracee; the caller owns the timeout so
/// that a thread stuck in D state cannot hang coresnap.
pub fn poll_stop(tid: i32) -> Result<StopEvent, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable c_int for the duration of the
    // call; waitpid has no other memory effects.
    let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
    if rc == 0 {
        return Ok(StopEvent::NotYet);
    }
    if rc < 0 {
        let err = Errno::last();
        return if err == Errno::ECHILD {
            Ok(StopEvent::Gone)
        } else {
            Err(err)
        };
    }
    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        return Ok(StopEvent::Gone);
    }
    if !libc::WIFSTOPPED(status) {
        return Ok(StopEvent::NotYet);
    }
    let sig = libc::WSTOPSIG(status);
    let event = (status >> 16) & 0xff;
    if event == libc::PTRACE_EVENT_STOP {
        let group_stop = match sig {
            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Some(sig),
            _ => None,
        };
        Ok(StopEvent::Trapped { group_stop })
    } else if event != 0 {
        // Another ptrace event (we set no options, so this should not happen):
        // treat it as a plain stop that owes no signal.
        Ok(StopEvent::Trapped { group_stop: None })
    } else {
        Ok(StopEvent::SignalDelivery { signal: sig })
    }
}

/// `PTRACE_GETREGSET` into `buf`; returns how many bytes the kernel filled,
/// which for variable-size sets (XSTATE) is the real size of the set.
pub fn get_regset(tid: i32, note_type: u32, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: iov describes `buf`, which is valid and writable for iov_len
    // bytes; the kernel writes at most iov_len bytes and updates iov_len.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid as libc::pid_t,
            note_type as usize as *mut libc::c_void,
            &mut iov as *mut libc::iovec as *mut libc::c_void,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(iov.iov_len)
    }
}

/// What a tracee reported, for the injection code, which needs to tell
/// ptrace events (a clone) apart from signal stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceStop {
    /// A `PTRACE_EVENT_*` stop (`event` is its number).
    Event {
        event: i32,
    },
    /// Signal-delivery stop for `signal`.
    Signal {
        signal: i32,
    },
    /// `PTRACE_EVENT_STOP`: a group-stop (`signal` is the stop signal) or
    /// the stop after PTRACE_INTERRUPT or auto-attach (`signal` is SIGTRAP).
    GroupOrInterrupt {
        signal: i32,
    },
    Exited,
    NotYet,
}

pub fn poll_trace_stop(tid: i32) -> Result<TraceStop, Errno> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    match waitpid(
        Pid::from_raw(tid),
        Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG),
    )? {
        WaitStatus::StillAlive => Ok(TraceStop::NotYet),
        WaitStatus::PtraceEvent(_, signal, event) if event == libc::PTRACE_EVENT_STOP => {
            Ok(TraceStop::GroupOrInterrupt {
                signal: signal as i32,
            })
        }
        WaitStatus::PtraceEvent(_, _, event) => Ok(TraceStop::Event { event }),
        WaitStatus::Stopped(_, signal) => Ok(TraceStop::Signal {
            signal: signal as i32,
        }),
        WaitStatus::Exited(..) | WaitStatus::Signaled(..) => Ok(TraceStop::Exited),
        _ => Ok(TraceStop::NotYet),
    }
}

pub fn set_options(tid: i32, trace_clone: bool, exit_kill: bool) -> Result<(), Errno> {
    let mut options = ptrace::Options::empty();
    if trace_clone {
        options |= ptrace::Options::PTRACE_O_TRACECLONE;
    }
    if exit_kill {
        options |= ptrace::Options::PTRACE_O_EXITKILL;
    }
    ptrace::setoptions(Pid::from_raw(tid), options)
}

/// Resumes a stopped tracee without delivering a signal.
pub fn resume(tid: i32) -> Result<(), Errno> {
    ptrace::cont(Pid::from_raw(tid), None)
}

/// `PTRACE_GETEVENTMSG`: for a clone event, the new task's pid.
pub fn event_message(tid: i32) -> Result<i64, Errno> {
    ptrace::getevent(Pid::from_raw(tid))
}

pub fn get_regs(tid: i32) -> Result<libc::user_regs_struct, Errno> {
    ptrace::getregs(Pid::from_raw(tid))
}

pub fn set_regs(tid: i32, regs: libc::user_regs_struct) -> Result<(), Errno> {
    ptrace::setregs(Pid::from_raw(tid), regs)
}

/// Resumes a stopped tracee, delivering `signal` (the one it stopped on, for
/// a signal that is passed through unchanged).
pub fn resume_with(tid: i32, signal: Option<i32>) -> Result<(), Errno> {
    let sig = signal.and_then(|s| Signal::try_from(s).ok());
    ptrace::cont(Pid::from_raw(tid), sig)
}

/// `PTRACE_LISTEN`: leave a seized tracee in its group-stop (as SIGSTOP
/// asked) while still reporting when it is continued.
pub fn listen(tid: i32) -> Result<(), Errno> {
    // SAFETY: PTRACE_LISTEN takes no pointers (addr and data are ignored).
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_LISTEN,
            tid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `PTRACE_GETSIGINFO`: the raw 128-byte `siginfo_t` of the signal a tracee
/// is stopped on, kept as bytes because it goes into the core unchanged.
pub fn get_siginfo(tid: i32) -> Result<[u8; 128], Errno> {
    let mut raw = [0u8; 128];
    // SAFETY: the kernel writes exactly sizeof(siginfo_t) = 128 bytes to the
    // data pointer, and `raw` is 128 writable bytes.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGINFO,
            tid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            raw.as_mut_ptr() as *mut libc::c_void,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(raw) }
}

/// Any event from any tracee of this thread (`waitpid(-1, __WALL|WNOHANG)`):
/// the pid it concerns and what happened.
pub fn poll_any() -> Result<Option<(i32, TraceStop)>, Errno> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let status = match waitpid(None, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
        Err(Errno::ECHILD) => return Ok(None),
        other => other?,
    };
    let stop = match status {
        WaitStatus::StillAlive => return Ok(None),
        WaitStatus::PtraceEvent(pid, signal, event) => (
            pid,
            if event == libc::PTRACE_EVENT_STOP {
                TraceStop::GroupOrInterrupt {
                    signal: signal as i32,
                }
            } else {
                TraceStop::Event { event }
            },
        ),
        WaitStatus::Stopped(pid, signal) => (
            pid,
            TraceStop::Signal {
                signal: signal as i32,
            },
        ),
        WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => (pid, TraceStop::Exited),
        _ => return Ok(None),
    };
    Ok(Some((stop.0.as_raw(), stop.1)))
}
