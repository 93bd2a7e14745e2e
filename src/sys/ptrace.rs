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
