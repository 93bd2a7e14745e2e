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
//! freeze left it; once the original registers are restored there, the
//! kernel finishes (or restarts) the system call that the freeze interrupted
//! exactly as if nothing had happened.

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
    #[error("thread {tid} stopped with signal {signal} during the injected system call")]
    UnexpectedSignal { tid: i32, signal: i32 },
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

/// Runs system call `nr` with `args` in `tid`, which must be in a
/// ptrace-stop under this thread's tracing. With `trace_clone`, a task the
/// call creates is attached to us and left stopped before it runs a single
/// instruction.
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

    let outcome = run_trampoline(tid, saved, addr, nr, args, trace_clone, timeout);

    // Put everything back whatever happened; report the first failure.
    let restored_code = mem
        .write_all_at(&borrowed.original, addr)
        .map_err(|source| InjectError::Code { tid, addr, source });
    let restored_regs = ptrace::set_regs(tid, saved).map_err(pt("SETREGS"));
    let (result, child) = outcome?;
    restored_code?;
    restored_regs?;
    Ok(Injected {
        result,
        child,
        borrowed,
    })
}

fn run_trampoline(
    tid: i32,
    saved: libc::user_regs_struct,
    addr: u64,
    nr: u64,
    args: [u64; 6],
    trace_clone: bool,
    timeout: Duration,
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
    ptrace::resume(tid).map_err(pt("CONT"))?;
    let deadline = Instant::now() + timeout;
    let mut child = None;
    let result = loop {
        match ptrace::poll_trace_stop(tid).map_err(pt("waitpid"))? {
            TraceStop::NotYet => {
                if Instant::now() >= deadline {
                    return Err(InjectError::Timeout { tid, timeout });
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            TraceStop::GroupOrInterrupt { .. } => ptrace::resume(tid).map_err(pt("CONT"))?,
            TraceStop::Event { event } => {
                if event == PTRACE_EVENT_CLONE {
                    let new = ptrace::event_message(tid).map_err(pt("GETEVENTMSG"))? as i32;
                    wait_child_stopped(new, deadline)?;
                    // From here on the child dies with coresnap. Before
                    // this, had coresnap died, the child would have run
                    // the trampoline's exit_group and nothing else.
                    ptrace::set_options(new, false, true).map_err(|errno| InjectError::Ptrace {
                        tid: new,
                        op: "SETOPTIONS",
                        errno,
                    })?;
                    child = Some(new);
                }
                ptrace::resume(tid).map_err(pt("CONT"))?;
            }
            TraceStop::Signal { signal } if signal == libc::SIGTRAP => {
                break ptrace::get_regs(tid).map_err(pt("GETREGS"))?.rax as i64;
            }
            TraceStop::Signal { signal } => {
                return Err(InjectError::UnexpectedSignal { tid, signal });
            }
            TraceStop::Exited => return Err(InjectError::ThreadGone { tid }),
        }
    };
    if trace_clone {
        ptrace::set_options(tid, false, false).map_err(pt("SETOPTIONS"))?;
    }
    Ok((result, child))
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
