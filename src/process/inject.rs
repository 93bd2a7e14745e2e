//! Making a ptrace-stopped thread of the target run one system call of our
//! choosing, then putting it back exactly as it was (registers, and the code
//! bytes borrowed for the call).
//!
//! The code written at the thread's page is a trampoline:
//!
//! ```text
//!     syscall
//!     test  %rax, %rax
//!     jnz   1f            # the caller (or an error): go to the breakpoint
//!     mov   $231, %eax    # a child created by clone lands here:
//!     xor   %edi, %edi    #   exit_group(0) at once, so it can never run
//!     syscall             #   the program's own code
//! 1:  int3                # SIGTRAP stop: the caller is back under control
//! ```
//!
//! The breakpoint stops the thread in signal-delivery, which is where the
//! freeze left it; once the original registers (and siginfo) are restored
//! there, the kernel finishes (or restarts) the system call that the freeze
//! interrupted, and delivers a signal the thread had stopped on, exactly as
//! if nothing had happened.

use crate::sys::ptrace::{self, TraceStop};
use nix::errno::Errno;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use thiserror::Error;

const TRAMPOLINE: [u8; 17] = [
    0x0f, 0x05, // syscall
    0x48, 0x85, 0xc0, // test %rax,%rax
    0x75, 0x09, // jnz +9
    0xb8, 0xe7, 0x00, 0x00, 0x00, // mov $231,%eax
    0x31, 0xff, // xor %edi,%edi
    0x0f, 0x05, // syscall
    0xcc, // int3
];
const PTRACE_EVENT_CLONE: i32 = 3;

/// Injections under way in this process. Exiting while one runs would leave
/// the target with borrowed code and registers, so a watchdog that ends
/// coresnap on a signal waits for this to drop to zero first.
static IN_PROGRESS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether a thread of the target is running injected code right now.
pub fn injection_in_progress() -> bool {
    IN_PROGRESS.load(std::sync::atomic::Ordering::SeqCst) > 0
}

struct InProgress;

impl InProgress {
    fn enter() -> InProgress {
        IN_PROGRESS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InProgress
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        IN_PROGRESS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
pub const SYS_CLONE: u64 = 56;
pub const SYS_WAIT4: u64 = 61;

#[derive(Debug, Error)]
pub enum InjectError {
    #[error("ptrace {op} on thread {tid} failed: {errno}")]
    Ptrace {
        tid: i32,
        op: &'static str,
        errno: Errno,
    },
    #[error("cannot borrow code bytes at {addr:#x} in thread {tid}: {source}")]
    Code {
        tid: i32,
        addr: u64,
        source: std::io::Error,
    },
    #[error(
        "thread {tid} did not come back from the injected system call within {0:?}",
        timeout
    )]
    Timeout { tid: i32, timeout: Duration },
    #[error("thread {tid} exited during the injected system call")]
    ThreadGone { tid: i32 },
    #[error(
        "thread {tid} could not be put back as it was ({why}); it may have lost {signals} signal(s) it received meanwhile"
    )]
    NotRestored {
        tid: i32,
        why: Box<InjectError>,
        signals: usize,
    },
}

impl InjectError {
    /// Whether the thread was left exactly as it was before the injection
    /// (code, registers and every signal it received); only a failure to
    /// put it back says otherwise.
    pub fn target_unchanged(&self) -> bool {
        !matches!(self, InjectError::NotRestored { .. })
    }
}

/// Where the trampoline was written, so a reader of memory copied while it
/// was there can put the original bytes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BorrowedCode {
    pub addr: u64,
    pub original: Vec<u8>,
}

/// The result of an injected system call.
#[derive(Debug, Clone)]
pub struct Injected {
    /// The raw return value (negative errno on failure).
    pub result: i64,
    /// The task created by a `clone`, stopped and traced by us.
    pub child: Option<i32>,
    pub borrowed: BorrowedCode,
}

/// A signal the borrowed thread dequeued while it ran the trampoline. It
/// must not run its handler then (the program's code page holds the
/// trampoline, its registers are not its own), so it is held back and put
/// back in the thread's queue before the thread goes free.
#[derive(Debug, Clone)]
struct HeldSignal {
    signal: i32,
    siginfo: [u8; 128],
}

/// `si_code` of a signal the kernel raised itself, as for `int3`.
const SI_KERNEL: i32 = 0x80;

fn siginfo_code(raw: &[u8; 128]) -> i32 {
    i32::from_ne_bytes(raw[8..12].try_into().expect("4 bytes"))
}

/// Runs system call `nr` with `args` in `tid`, which must be in a
/// ptrace-stop under this thread's tracing. With `trace_clone`, a task the
/// call creates is attached to us and left stopped before it runs a single
/// instruction.
///
/// Signals are not lost: the stop the thread was in is restored with its
/// siginfo (so a signal-delivery-stop still delivers its signal, unchanged,
/// when the caller lets it go), and a signal the thread receives during the
/// call is put back in its queue, with its siginfo, for the kernel to
/// deliver once the thread runs its own code again.
pub fn inject_syscall(
    pid: i32,
    tid: i32,
    nr: u64,
    args: [u64; 6],
    trace_clone: bool,
    timeout: Duration,
) -> Result<Injected, InjectError> {
    let _in_progress = InProgress::enter();
    let pt = |op| move |errno| InjectError::Ptrace { tid, op, errno };
    let saved = ptrace::get_regs(tid).map_err(pt("GETREGS"))?;
    let saved_siginfo = ptrace::get_siginfo(tid).map_err(pt("GETSIGINFO"))?;
    // The start of the thread's current code page: executable, mapped, and
    // room for the whole trampoline without crossing into another page.
    let addr = saved.rip & !0xfff;
    let mem = File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(|source| InjectError::Code { tid, addr, source })?;
    let mut original = vec![0u8; TRAMPOLINE.len()];
    mem.read_exact_at(&mut original, addr)
        .map_err(|source| InjectError::Code { tid, addr, source })?;
    let borrowed = BorrowedCode { addr, original };
    mem.write_all_at(&TRAMPOLINE, addr)
        .map_err(|source| InjectError::Code { tid, addr, source })?;

    let deadline = Instant::now() + timeout;
    let mut held = Vec::new();
    let outcome = run_trampoline(tid, saved, addr, nr, args, trace_clone, deadline, &mut held)
        .map_err(|e| match e {
            InjectError::Timeout { tid, .. } => InjectError::Timeout { tid, timeout },
            other => other,
        });
    if let Err(InjectError::Timeout { .. }) = outcome {
        // Take the thread back wherever it is, so that it can be restored.
        if regain(tid, addr, &mut held).is_err() {
            return Err(InjectError::NotRestored {
                tid,
                why: Box::new(outcome.unwrap_err()),
                signals: held.len(),
            });
        }
    }
    let gone = matches!(outcome, Err(InjectError::ThreadGone { .. }));
    // From here on the thread sits on the trampoline's breakpoint (unless
    // it is gone): put everything back, first the signals (their round
    // trip runs the breakpoint again), then code, registers and siginfo.
    let mut restored = Ok(());
    if !gone {
        restored = restored.and(hand_back(tid, addr, &mut held));
        if trace_clone {
            restored =
                restored.and(ptrace::set_options(tid, false, false).map_err(pt("SETOPTIONS")));
        }
    }
    restored = restored.and(
        mem.write_all_at(&borrowed.original, addr)
            .map_err(|source| InjectError::Code { tid, addr, source }),
    );
    if !gone {
        restored = restored
            .and(ptrace::set_regs(tid, saved).map_err(pt("SETREGS")))
            .and(ptrace::set_siginfo(tid, &saved_siginfo).map_err(pt("SETSIGINFO")));
        if restored.is_ok() {
            restored = resend_unblockable(pid, tid, &mut held);
        }
    }
    if let Err(why) = restored {
        return Err(InjectError::NotRestored {
            tid,
            why: Box::new(why),
            signals: held.len(),
        });
    }
    let (result, child) = outcome?;
    Ok(Injected {
        result,
        child,
        borrowed,
    })
}

#[allow(clippy::too_many_arguments)]
fn run_trampoline(
    tid: i32,
    saved: libc::user_regs_struct,
    addr: u64,
    nr: u64,
    args: [u64; 6],
    trace_clone: bool,
    deadline: Instant,
    held: &mut Vec<HeldSignal>,
) -> Result<(i64, Option<i32>), InjectError> {
    let pt = |op| move |errno| InjectError::Ptrace { tid, op, errno };
    let mut regs = saved;
    regs.rip = addr;
    regs.rax = nr;
    // No system call in progress as far as the kernel's restart logic is
    // concerned, or it would rewind our instruction pointer.
    regs.orig_rax = u64::MAX;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs.r9 = args[5];
    ptrace::set_regs(tid, regs).map_err(pt("SETREGS"))?;
    if trace_clone {
        ptrace::set_options(tid, true, false).map_err(pt("SETOPTIONS"))?;
    }
    // Resumed without a signal: a signal the thread was stopped on is
    // delivered when the caller releases it from the breakpoint, with the
    // siginfo put back there.
    ptrace::resume(tid).map_err(pt("CONT"))?;
    let mut child = None;
    run_to_breakpoint(tid, addr, deadline, held, |event| {
        if event == PTRACE_EVENT_CLONE {
            let new = ptrace::event_message(tid).map_err(pt("GETEVENTMSG"))? as i32;
            wait_child_stopped(new, deadline)?;
            // From here on the child dies with coresnap. Before this, had
            // coresnap died, the child would have run the trampoline's
            // exit_group and nothing else.
            ptrace::set_options(new, false, true).map_err(|errno| InjectError::Ptrace {
                tid: new,
                op: "SETOPTIONS",
                errno,
            })?;
            child = Some(new);
        }
        Ok(())
    })?;
    let result = ptrace::get_regs(tid).map_err(pt("GETREGS"))?.rax as i64;
    Ok((result, child))
}

/// Lets the running thread go on until it stops on the trampoline's final
/// `int3`. Any other signal it dequeues on the way is held back in `held`
/// (resumed without it); other ptrace events go to `on_event`.
fn run_to_breakpoint(
    tid: i32,
    addr: u64,
    deadline: Instant,
    held: &mut Vec<HeldSignal>,
    mut on_event: impl FnMut(i32) -> Result<(), InjectError>,
) -> Result<(), InjectError> {
    let pt = |op| move |errno| InjectError::Ptrace { tid, op, errno };
    let breakpoint_end = addr + TRAMPOLINE.len() as u64;
    loop {
        match ptrace::poll_trace_stop(tid).map_err(pt("waitpid"))? {
            TraceStop::NotYet => {
                if Instant::now() >= deadline {
                    // The caller knows the whole time it gave.
                    return Err(InjectError::Timeout {
                        tid,
                        timeout: Duration::ZERO,
                    });
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            // The interrupt of the freeze, still pending after a
            // signal-delivery-stop, or a group-stop: the call must finish.
            TraceStop::GroupOrInterrupt { .. } => ptrace::resume(tid).map_err(pt("CONT"))?,
            TraceStop::Event { event } => {
                on_event(event)?;
                ptrace::resume(tid).map_err(pt("CONT"))?;
            }
            TraceStop::Signal { signal } => {
                let siginfo = ptrace::get_siginfo(tid).map_err(pt("GETSIGINFO"))?;
                let ours = signal == libc::SIGTRAP
                    && siginfo_code(&siginfo) == SI_KERNEL
                    && ptrace::get_regs(tid).map_err(pt("GETREGS"))?.rip == breakpoint_end;
                if ours {
                    return Ok(());
                }
                held.push(HeldSignal { signal, siginfo });
                ptrace::resume(tid).map_err(pt("CONT"))?;
            }
            TraceStop::Exited => return Err(InjectError::ThreadGone { tid }),
        }
    }
}

/// After a timeout: stops the thread wherever it is and brings it to the
/// trampoline's breakpoint, where it can be restored.
fn regain(tid: i32, addr: u64, held: &mut Vec<HeldSignal>) -> Result<(), InjectError> {
    let pt = |op| move |errno| InjectError::Ptrace { tid, op, errno };
    ptrace::interrupt(tid).map_err(pt("INTERRUPT"))?;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match ptrace::poll_trace_stop(tid).map_err(pt("waitpid"))? {
            TraceStop::NotYet if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(100))
            }
            TraceStop::NotYet => {
                return Err(InjectError::Timeout {
                    tid,
                    timeout: Duration::from_secs(1),
                });
            }
            TraceStop::Exited => return Err(InjectError::ThreadGone { tid }),
            TraceStop::Signal { signal } => {
                let siginfo = ptrace::get_siginfo(tid).map_err(pt("GETSIGINFO"))?;
                held.push(HeldSignal { signal, siginfo });
                break;
            }
            TraceStop::Event { .. } | TraceStop::GroupOrInterrupt { .. } => break,
        }
    }
    jump_to_breakpoint(tid, addr, held)
}

/// From any ptrace-stop: runs the thread into the trampoline's `int3`.
fn jump_to_breakpoint(tid: i32, addr: u64, held: &mut Vec<HeldSignal>) -> Result<(), InjectError> {
    let pt = |op| move |errno| InjectError::Ptrace { tid, op, errno };
    let mut regs = ptrace::get_regs(tid).map_err(pt("GETREGS"))?;
    regs.rip = addr + TRAMPOLINE.len() as u64 - 1;
    regs.orig_rax = u64::MAX;
    ptrace::set_regs(tid, regs).map_err(pt("SETREGS"))?;
    ptrace::resume(tid).map_err(pt("CONT"))?;
    let deadline = Instant::now() + Duration::from_secs(1);
    run_to_breakpoint(tid, addr, deadline, held, |_| Ok(()))
}

/// Every blockable signal but SIGTRAP, which the breakpoint raises: the
/// kernel would make a blocked SIGTRAP unblocked *and* reset its handler.
fn all_but_sigtrap() -> u64 {
    !(1u64 << (libc::SIGTRAP - 1))
}

/// Puts the held signals back in the thread's queue, oldest first, each
/// with its own siginfo: at the breakpoint's signal-delivery-stop, with the
/// signal blocked, resuming with it makes the kernel queue it again
/// (`ptrace_signal`: "if the (new) signal is now blocked, requeue it"),
/// and the siginfo is kept because the signal number matches it. The
/// thread then runs into the breakpoint again for the next one. Its own
/// mask is back in place before this returns; SIGSTOP (never blocked) and
/// a foreign SIGTRAP stay in `held` for [`resend_unblockable`].
fn hand_back(tid: i32, addr: u64, held: &mut Vec<HeldSignal>) -> Result<(), InjectError> {
    let requeueable = |h: &HeldSignal| h.signal != libc::SIGSTOP && h.signal != libc::SIGTRAP;
    if !held.iter().any(requeueable) {
        return Ok(());
    }
    let pt = |op| move |errno| InjectError::Ptrace { tid, op, errno };
    // The thread returned to its user mode since the freeze (it ran the
    // trampoline), so a mask a ppoll() or sigsuspend() had swapped in
    // temporarily has been put back already: this is its own mask.
    let mask = ptrace::get_sigmask(tid).map_err(pt("GETSIGMASK"))?;
    ptrace::set_sigmask(tid, all_but_sigtrap()).map_err(pt("SETSIGMASK"))?;
    let mut requeue = || -> Result<(), InjectError> {
        while let Some(index) = held.iter().position(requeueable) {
            let mut regs = ptrace::get_regs(tid).map_err(pt("GETREGS"))?;
            regs.rip = addr + TRAMPOLINE.len() as u64 - 1;
            regs.orig_rax = u64::MAX;
            ptrace::set_regs(tid, regs).map_err(pt("SETREGS"))?;
            let signal = held.remove(index);
            ptrace::set_siginfo(tid, &signal.siginfo).map_err(pt("SETSIGINFO"))?;
            ptrace::resume_with(tid, Some(signal.signal)).map_err(pt("CONT"))?;
            let deadline = Instant::now() + Duration::from_secs(1);
            run_to_breakpoint(tid, addr, deadline, held, |_| Ok(()))?;
        }
        Ok(())
    };
    let requeued = requeue();
    let unmasked = ptrace::set_sigmask(tid, mask).map_err(pt("SETSIGMASK"));
    requeued.and(unmasked)
}

/// SIGSTOP cannot be blocked, so it cannot be queued again the way
/// [`hand_back`] does; neither can SIGTRAP (the breakpoint needs it). Sent
/// again instead, once the thread is restored: the same signal reaches the
/// same place (the process for SIGSTOP, which stops all of it, the thread
/// for SIGTRAP), only the sender in its siginfo is now coresnap.
fn resend_unblockable(pid: i32, tid: i32, held: &mut Vec<HeldSignal>) -> Result<(), InjectError> {
    while let Some(signal) = held.first() {
        let sent = if signal.signal == libc::SIGSTOP {
            // SAFETY: plain system call with integer arguments.
            unsafe { libc::kill(pid, libc::SIGSTOP) }
        } else {
            // SAFETY: plain system call with integer arguments.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal.signal) as i32 }
        };
        if sent != 0 {
            return Err(InjectError::Ptrace {
                tid,
                op: "kill",
                errno: Errno::last(),
            });
        }
        held.remove(0);
    }
    Ok(())
}

fn wait_child_stopped(child: i32, deadline: Instant) -> Result<(), InjectError> {
    loop {
        match ptrace::poll_trace_stop(child).map_err(|errno| InjectError::Ptrace {
            tid: child,
            op: "waitpid",
            errno,
        })? {
            TraceStop::NotYet if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(50))
            }
            TraceStop::NotYet => {
                return Err(InjectError::Timeout {
                    tid: child,
                    timeout: Duration::ZERO,
                });
            }
            TraceStop::Exited => return Err(InjectError::ThreadGone { tid: child }),
            TraceStop::Event { .. }
            | TraceStop::Signal { .. }
            | TraceStop::GroupOrInterrupt { .. } => return Ok(()),
        }
    }
}
