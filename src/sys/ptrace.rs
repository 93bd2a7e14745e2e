//! ptrace requests, all of which must come from the thread that seized the
//! tracee (the kernel ties a tracee to one tracer *thread*).

use nix::errno::Errno;
use nix::sys::ptrace;
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

/// `PTRACE_SEIZE` for watching: with `PTRACE_O_TRACECLONE`, so that
/// threads the tracee creates are attached too (a seized thread that runs
/// cannot be given options later), and with `trace_exit` also
/// `PTRACE_O_TRACEEXIT`, which stops each thread at the start of its exit,
/// while the process's memory is still whole.
pub fn seize_watching(tid: i32, trace_exit: bool) -> Result<(), Errno> {
    let mut options = ptrace::Options::PTRACE_O_TRACECLONE;
    if trace_exit {
        options |= ptrace::Options::PTRACE_O_TRACEEXIT;
    }
    ptrace::seize(Pid::from_raw(tid), options)
}

pub fn interrupt(tid: i32) -> Result<(), Errno> {
    ptrace::interrupt(Pid::from_raw(tid))
}

/// Detach, re-delivering a signal the thread was stopped on, if any.
///
/// The number goes to the kernel as it is: nix's `Signal` has no real-time
/// signals, and converting through it turned SIGRTMIN into "no signal".
/// Passing the number the thread stopped on keeps its siginfo (sender,
/// value), since the kernel only rewrites it for a different signal.
pub fn detach(tid: i32, signal: Option<i32>) -> Result<(), Errno> {
    raw_request(libc::PTRACE_DETACH, tid, 0, signal.unwrap_or(0) as usize)
}

/// The type of `ptrace`'s request argument: glibc declares an unsigned
/// enum, musl an int (the static build).
#[cfg(not(target_env = "musl"))]
type Request = libc::c_uint;
#[cfg(target_env = "musl")]
type Request = libc::c_int;

/// A ptrace request whose `addr` and `data` are plain numbers.
fn raw_request(request: Request, tid: i32, addr: usize, data: usize) -> Result<(), Errno> {
    // SAFETY: every caller passes a request whose addr and data are values,
    // not pointers, so the kernel reads or writes no memory of ours.
    let rc = unsafe {
        libc::ptrace(
            request,
            tid as libc::pid_t,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `waitpid(tid, __WALL | WNOHANG)`, undecoded: `None` when nothing is
/// reported yet. nix's `waitpid` fails with EINVAL on a stop for a
/// real-time signal (its `Signal` cannot hold one) after the kernel has
/// already consumed the report, so the status is decoded here instead.
fn wait_raw(tid: i32) -> Result<Option<(i32, libc::c_int)>, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable c_int for the duration of the
    // call; waitpid has no other memory effects.
    let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
    match rc {
        0 => Ok(None),
        rc if rc < 0 => Err(Errno::last()),
        rc => Ok(Some((rc, status))),
    }
}

/// What a `waitpid` status says, for a tracee.
fn decode(status: libc::c_int) -> TraceStop {
    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        return TraceStop::Exited;
    }
    if !libc::WIFSTOPPED(status) {
        return TraceStop::NotYet;
    }
    let signal = libc::WSTOPSIG(status);
    match (status >> 16) & 0xff {
        0 => TraceStop::Signal { signal },
        libc::PTRACE_EVENT_STOP => TraceStop::GroupOrInterrupt { signal },
        event => TraceStop::Event { event },
    }
}

/// Polls (WNOHANG) for the stop of one tracee; the caller owns the timeout so
/// that a thread stuck in D state cannot hang coresnap.
pub fn poll_stop(tid: i32) -> Result<StopEvent, Errno> {
    let status = match wait_raw(tid) {
        Ok(Some((_, status))) => status,
        Ok(None) => return Ok(StopEvent::NotYet),
        Err(Errno::ECHILD) => return Ok(StopEvent::Gone),
        Err(errno) => return Err(errno),
    };
    Ok(match decode(status) {
        TraceStop::NotYet => StopEvent::NotYet,
        TraceStop::Exited => StopEvent::Gone,
        TraceStop::Signal { signal } => StopEvent::SignalDelivery { signal },
        TraceStop::GroupOrInterrupt { signal } => StopEvent::Trapped {
            group_stop: matches!(
                signal,
                libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
            )
            .then_some(signal),
        },
        // Another ptrace event (we set no options, so this should not happen):
        // a plain stop that owes no signal.
        TraceStop::Event { .. } => StopEvent::Trapped { group_stop: None },
    })
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
    Ok(wait_raw(tid)?.map_or(TraceStop::NotYet, |(_, status)| decode(status)))
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
    raw_request(libc::PTRACE_CONT, tid, 0, signal.unwrap_or(0) as usize)
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
    match wait_raw(-1) {
        Err(Errno::ECHILD) => Ok(None),
        Err(errno) => Err(errno),
        Ok(None) => Ok(None),
        Ok(Some((pid, status))) => match decode(status) {
            TraceStop::NotYet => Ok(None),
            stop => Ok(Some((pid, stop))),
        },
    }
}

/// `PTRACE_SETSIGINFO`: the siginfo the kernel hands on with the signal
/// when a signal-delivery-stop is resumed with that same signal.
pub fn set_siginfo(tid: i32, raw: &[u8; 128]) -> Result<(), Errno> {
    // SAFETY: the kernel reads exactly sizeof(siginfo_t) = 128 bytes from
    // the data pointer, and `raw` is 128 readable bytes.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGINFO,
            tid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            raw.as_ptr() as *mut libc::c_void,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The kernel's signal set is one 64-bit word on x86_64 (bit N-1 for
/// signal N).
const SIGSET_BYTES: usize = 8;

// libc gives these two the wrong type for musl's `ptrace` (unsigned, where
// its other requests are int): defined here with the type `ptrace` takes.
const PTRACE_GETSIGMASK: Request = 0x420a;
const PTRACE_SETSIGMASK: Request = 0x420b;

/// `PTRACE_GETSIGMASK`: the signals the thread blocks.
pub fn get_sigmask(tid: i32) -> Result<u64, Errno> {
    let mut mask = 0u64;
    // SAFETY: the kernel writes SIGSET_BYTES (8) bytes to the data pointer,
    // which points at `mask`, 8 writable bytes.
    let rc = unsafe {
        libc::ptrace(
            PTRACE_GETSIGMASK,
            tid as libc::pid_t,
            SIGSET_BYTES as *mut libc::c_void,
            &mut mask as *mut u64 as *mut libc::c_void,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(mask) }
}

/// `PTRACE_SETSIGMASK` (the kernel never blocks SIGKILL or SIGSTOP).
pub fn set_sigmask(tid: i32, mask: u64) -> Result<(), Errno> {
    // SAFETY: the kernel reads SIGSET_BYTES (8) bytes from the data
    // pointer, which points at `mask`, 8 readable bytes.
    let rc = unsafe {
        libc::ptrace(
            PTRACE_SETSIGMASK,
            tid as libc::pid_t,
            SIGSET_BYTES as *mut libc::c_void,
            &mask as *const u64 as *mut libc::c_void,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `PTRACE_SINGLESTEP`: resumes a stopped tracee for one instruction,
/// delivering `signal` as [`resume_with`] does. Over a `syscall`
/// instruction the step ends at the system call's return, in a SIGTRAP
/// signal-delivery-stop (`si_code` `TRAP_BRKPT`), before the thread runs
/// any other instruction.
pub fn step_with(tid: i32, signal: Option<i32>) -> Result<(), Errno> {
    raw_request(
        libc::PTRACE_SINGLESTEP,
        tid,
        0,
        signal.unwrap_or(0) as usize,
    )
}
