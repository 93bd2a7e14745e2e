//! Making a ptrace-stopped thread of the target run one system call of our
//! choosing, then putting it back exactly as it was, without writing a byte
//! of the target's memory.
//!
//! The call runs on a `syscall` instruction the target already has (found
//! in its vDSO, or failing that in another mapping of its code): the
//! thread's instruction pointer is set there, the registers carry the call
//! number and arguments, and the thread is resumed with `PTRACE_SINGLESTEP`.
//! A single step over `syscall` ends where the call returns, in a SIGTRAP
//! signal-delivery-stop, before the thread runs another instruction. Writing
//! code into the target instead (a trampoline) would leave the written page
//! a private copy of the file for the rest of the target's life.
//!
//! That stop is a signal-delivery-stop, which is where the freeze left the
//! thread; once the original registers (and siginfo) are restored there,
//! the kernel finishes (or restarts) the system call that the freeze
//! interrupted, and delivers a signal the thread had stopped on, exactly as
//! if nothing had happened.
//!
//! While a call runs, the thread has `PTRACE_O_EXITKILL`: should coresnap
//! die then, the target is killed rather than left to run on from the
//! middle of its vDSO with registers that are not its own. A task the call
//! creates inherits that option with its tracer at the moment it is
//! created, so it dies with coresnap before it could run.

use crate::process::maps;
use crate::sys::ptrace::{self, TraceStop};
use nix::errno::Errno;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use thiserror::Error;

const PTRACE_EVENT_CLONE: i32 = 3;
const SYSCALL_INSTRUCTION: [u8; 2] = [0x0f, 0x05];
const SYS_GETPID: u64 = 39;

/// Injections under way in this process. Exiting while one runs would kill
/// the target (it holds `PTRACE_O_EXITKILL` then), so a watchdog that ends
/// coresnap on a signal waits for this to drop to zero first.
static IN_PROGRESS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether a thread of the target is running an injected call right now.
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
    #[error(
        "process {pid} has no readable `syscall` instruction to run the call on (none in its vDSO or its code mappings)"
    )]
    NoSyscallInstruction { pid: i32 },
    #[error("cannot read the code mappings of process {pid}: {source}")]
    Code { pid: i32, source: std::io::Error },
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
    /// (registers and every signal it received); only a failure to put it
    /// back says otherwise.
    pub fn target_unchanged(&self) -> bool {
        !matches!(self, InjectError::NotRestored { .. })
    }
}

/// The result of an injected system call.
#[derive(Debug, Clone)]
pub struct Injected {
    /// The raw return value (negative errno on failure).
    pub result: i64,
    /// The task created by a `clone`, stopped and traced by us.
    pub child: Option<i32>,
}

/// A signal the borrowed thread dequeued while it ran the call. It must not
/// run its handler then (its registers are not its own), so it is held back
/// and put back in the thread's queue before the thread goes free.
#[derive(Debug, Clone)]
struct HeldSignal {
    signal: i32,
    siginfo: [u8; 128],
}

/// `si_code` of the SIGTRAP that ends a single step over `syscall`
/// (`user_single_step_report`), and of a hardware single-step trap.
const TRAP_BRKPT: i32 = 1;
const TRAP_TRACE: i32 = 2;

fn siginfo_code(raw: &[u8; 128]) -> i32 {
    i32::from_ne_bytes(raw[8..12].try_into().expect("4 bytes"))
}

/// Return values by which the kernel asks for a system call to be made
/// again (`-ERESTARTSYS` .. `-ERESTART_RESTARTBLOCK`): a signal came before
/// the call did anything.
fn asks_for_restart(result: i64) -> bool {
    (-516..=-512).contains(&result)
}

/// The address of a `syscall` instruction (`0f 05`) in the target's
/// executable memory: in the vDSO, which every process has and which no
/// syscall filter by address (syscall user dispatch) blocks, else in the
/// other code mappings. The two bytes need not start an instruction of the
/// program: the thread is sent straight to them and runs only them.
pub fn find_syscall_instruction(pid: i32) -> Result<u64, InjectError> {
    let code_err = |source| InjectError::Code { pid, source };
    let text = std::fs::read(format!("/proc/{pid}/maps")).map_err(code_err)?;
    let mappings = maps::parse_smaps(&text).map_err(|e| InjectError::Code {
        pid,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let mem = File::open(format!("/proc/{pid}/mem")).map_err(code_err)?;
    let mut code: Vec<_> = mappings
        .iter()
        .filter(|m| m.readable && m.executable && m.pseudo_name() != Some(b"[vsyscall]"))
        .collect();
    code.sort_by_key(|m| m.pseudo_name() != Some(b"[vdso]"));
    // Enough to find one in any real code; a mapping with none in its first
    // megabyte is passed over rather than read to its end.
    const LOOK_AT: u64 = 1 << 20;
    let mut buf = vec![0u8; 64 << 10];
    for mapping in code {
        let end = mapping.end.min(mapping.start + LOOK_AT);
        let mut at = mapping.start;
        while at + 1 < end {
            let len = (end - at).min(buf.len() as u64) as usize;
            let Ok(read) = mem.read_at(&mut buf[..len], at) else {
                break;
            };
            if read < 2 {
                break;
            }
            if let Some(i) = buf[..read]
                .windows(2)
                .position(|w| w == SYSCALL_INSTRUCTION)
            {
                return Ok(at + i as u64);
            }
            // One byte back, for an instruction split across two reads.
            at += read as u64 - 1;
        }
    }
    Err(InjectError::NoSyscallInstruction { pid })
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
    let syscall_at = find_syscall_instruction(pid)?;
    let saved = ptrace::get_regs(tid).map_err(pt("GETREGS"))?;
    let saved_siginfo = ptrace::get_siginfo(tid).map_err(pt("GETSIGINFO"))?;
    let thread = Borrowed { tid, syscall_at };
    ptrace::set_options(tid, trace_clone, true).map_err(pt("SETOPTIONS"))?;

    let deadline = Instant::now() + timeout;
    let mut held = Vec::new();
    let outcome = thread
        .run_call(saved, nr, args, deadline, &mut held)
        .map_err(|e| match e {
            InjectError::Timeout { tid, .. } => InjectError::Timeout { tid, timeout },
            other => other,
        });
    if let Err(InjectError::Timeout { .. }) = outcome {
        // Take the thread back wherever it is, so that it can be restored.
        if thread.regain(&mut held).is_err() {
            return Err(InjectError::NotRestored {
                tid,
                why: Box::new(outcome.unwrap_err()),
                signals: held.len(),
            });
        }
    }
    let outcome = match outcome {
        Err(gone @ InjectError::ThreadGone { .. }) => return Err(gone),
        outcome => outcome,
    };
    // From here on the thread sits in the SIGTRAP stop that ended a step:
    // put everything back, first the signals (their round trip needs more
    // steps), then registers and siginfo. Each is tried whatever became of
    // the one before. EXITKILL goes only once the registers are the
    // thread's own again.
    let handed_back = thread.hand_back(&mut held);
    let registers_back = ptrace::set_regs(tid, saved).map_err(pt("SETREGS"));
    let siginfo_back = ptrace::set_siginfo(tid, &saved_siginfo).map_err(pt("SETSIGINFO"));
    let options_back = match registers_back {
        Ok(()) => ptrace::set_options(tid, false, false).map_err(pt("SETOPTIONS")),
        Err(_) => Ok(()),
    };
    let mut restored = handed_back
        .and(registers_back)
        .and(siginfo_back)
        .and(options_back);
    if restored.is_ok() {
        restored = resend_unblockable(pid, tid, &mut held);
    }
    if let Err(why) = restored {
        return Err(InjectError::NotRestored {
            tid,
            why: Box::new(why),
            signals: held.len(),
        });
    }
    let (result, child) = outcome?;
    Ok(Injected { result, child })
}

/// The thread lent to the call, and where its `syscall` instruction is.
struct Borrowed {
    tid: i32,
    syscall_at: u64,
}

impl Borrowed {
    fn pt(&self, op: &'static str) -> impl Fn(Errno) -> InjectError {
        let tid = self.tid;
        move |errno| InjectError::Ptrace { tid, op, errno }
    }

    /// Points the thread at the `syscall` instruction with `regs`' call
    /// number and arguments, and steps it over it, delivering `signal`.
    fn step_call(
        &self,
        mut regs: libc::user_regs_struct,
        signal: Option<i32>,
    ) -> Result<(), InjectError> {
        regs.rip = self.syscall_at;
        // No system call in progress as far as the kernel's restart logic
        // is concerned, or it would rewind our instruction pointer.
        regs.orig_rax = u64::MAX;
        ptrace::set_regs(self.tid, regs).map_err(self.pt("SETREGS"))?;
        ptrace::step_with(self.tid, signal).map_err(self.pt("SINGLESTEP"))
    }

    /// Steps over a harmless call (`getpid`), to come back to a SIGTRAP
    /// stop from any other stop, delivering `signal` on the way.
    fn step_getpid(
        &self,
        signal: Option<i32>,
        held: &mut Vec<HeldSignal>,
    ) -> Result<(), InjectError> {
        let mut regs = ptrace::get_regs(self.tid).map_err(self.pt("GETREGS"))?;
        regs.rax = SYS_GETPID;
        self.step_call(regs, signal)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        self.run_until_returned(deadline, held, |_| Ok(()))
    }

    fn run_call(
        &self,
        saved: libc::user_regs_struct,
        nr: u64,
        args: [u64; 6],
        deadline: Instant,
        held: &mut Vec<HeldSignal>,
    ) -> Result<(i64, Option<i32>), InjectError> {
        let mut regs = saved;
        regs.rax = nr;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        let mut child = None;
        loop {
            // Resumed without a signal: a signal the thread was stopped on
            // is delivered when the caller releases it, with the siginfo
            // put back then.
            self.step_call(regs, None)?;
            self.run_until_returned(deadline, held, |event| {
                if event == PTRACE_EVENT_CLONE {
                    child = Some(self.take_child(deadline)?);
                }
                Ok(())
            })?;
            let result = ptrace::get_regs(self.tid).map_err(self.pt("GETREGS"))?.rax as i64;
            // A signal arrived first; it is held now (the kernel dequeues
            // it before the thread could reach the call again).
            if !asks_for_restart(result) {
                return Ok((result, child));
            }
        }
    }

    /// The task a `clone` created: stopped before its first instruction,
    /// given `PTRACE_O_EXITKILL` of its own (it inherited it already, with
    /// `PTRACE_O_TRACECLONE`, which it does not need).
    fn take_child(&self, deadline: Instant) -> Result<i32, InjectError> {
        let new = ptrace::event_message(self.tid).map_err(self.pt("GETEVENTMSG"))? as i32;
        wait_child_stopped(new, deadline)?;
        ptrace::set_options(new, false, true).map_err(|errno| InjectError::Ptrace {
            tid: new,
            op: "SETOPTIONS",
            errno,
        })?;
        Ok(new)
    }

    /// Lets the stepping thread go on until the step over `syscall` ends.
    /// Any other signal it dequeues on the way is held back in `held`
    /// (resumed without it); other ptrace events go to `on_event`.
    fn run_until_returned(
        &self,
        deadline: Instant,
        held: &mut Vec<HeldSignal>,
        mut on_event: impl FnMut(i32) -> Result<(), InjectError>,
    ) -> Result<(), InjectError> {
        let tid = self.tid;
        let step = || ptrace::step_with(tid, None).map_err(self.pt("SINGLESTEP"));
        loop {
            match ptrace::poll_trace_stop(tid).map_err(self.pt("waitpid"))? {
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
                TraceStop::GroupOrInterrupt { .. } => step()?,
                TraceStop::Event { event } => {
                    on_event(event)?;
                    step()?;
                }
                TraceStop::Signal { signal } => {
                    let siginfo = ptrace::get_siginfo(tid).map_err(self.pt("GETSIGINFO"))?;
                    let ours = signal == libc::SIGTRAP
                        && matches!(siginfo_code(&siginfo), TRAP_BRKPT | TRAP_TRACE)
                        && ptrace::get_regs(tid).map_err(self.pt("GETREGS"))?.rip
                            == self.syscall_at + SYSCALL_INSTRUCTION.len() as u64;
                    if ours {
                        return Ok(());
                    }
                    held.push(HeldSignal { signal, siginfo });
                    step()?;
                }
                TraceStop::Exited => return Err(InjectError::ThreadGone { tid }),
            }
        }
    }

    /// After a timeout: stops the thread wherever it is and brings it to
    /// the SIGTRAP stop at the end of a step, where it can be restored.
    fn regain(&self, held: &mut Vec<HeldSignal>) -> Result<(), InjectError> {
        let tid = self.tid;
        ptrace::interrupt(tid).map_err(self.pt("INTERRUPT"))?;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match ptrace::poll_trace_stop(tid).map_err(self.pt("waitpid"))? {
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
                    let siginfo = ptrace::get_siginfo(tid).map_err(self.pt("GETSIGINFO"))?;
                    held.push(HeldSignal { signal, siginfo });
                    break;
                }
                TraceStop::Event { .. } | TraceStop::GroupOrInterrupt { .. } => break,
            }
        }
        self.step_getpid(None, held)
    }

    /// Puts the held signals back in the thread's queue, oldest first, each
    /// with its own siginfo: at the SIGTRAP signal-delivery-stop, with the
    /// signal blocked, resuming with it makes the kernel queue it again
    /// (`ptrace_signal`: "if the (new) signal is now blocked, requeue it"),
    /// and the siginfo is kept because the signal number matches it. A step
    /// over `getpid` then brings the thread back to a SIGTRAP stop for the
    /// next one. Its own mask is back in place before this returns; SIGSTOP
    /// (never blocked) and a foreign SIGTRAP stay in `held` for
    /// [`resend_unblockable`].
    fn hand_back(&self, held: &mut Vec<HeldSignal>) -> Result<(), InjectError> {
        let requeueable = |h: &HeldSignal| h.signal != libc::SIGSTOP && h.signal != libc::SIGTRAP;
        if !held.iter().any(requeueable) {
            return Ok(());
        }
        let tid = self.tid;
        // The thread returned to its user mode since the freeze (it ran the
        // `syscall` instruction), so a mask a ppoll() or sigsuspend() had
        // swapped in temporarily has been put back already: this is its own
        // mask.
        let mask = ptrace::get_sigmask(tid).map_err(self.pt("GETSIGMASK"))?;
        ptrace::set_sigmask(tid, all_but_sigtrap()).map_err(self.pt("SETSIGMASK"))?;
        let mut requeue = || -> Result<(), InjectError> {
            while let Some(index) = held.iter().position(requeueable) {
                let signal = held.remove(index);
                ptrace::set_siginfo(tid, &signal.siginfo).map_err(self.pt("SETSIGINFO"))?;
                self.step_getpid(Some(signal.signal), held)?;
            }
            Ok(())
        };
        let requeued = requeue();
        let unmasked = ptrace::set_sigmask(tid, mask).map_err(self.pt("SETSIGMASK"));
        requeued.and(unmasked)
    }
}

/// Every blockable signal but SIGTRAP, which ends each step: the kernel
/// would make a blocked SIGTRAP unblocked *and* reset its handler.
fn all_but_sigtrap() -> u64 {
    !(1u64 << (libc::SIGTRAP - 1))
}

/// SIGSTOP cannot be blocked, so it cannot be queued again the way
/// [`Borrowed::hand_back`] does; neither can SIGTRAP (the steps need it).
/// Sent again instead, once the thread is restored: the same signal reaches
/// the same place (the process for SIGSTOP, which stops all of it, the
/// thread for SIGTRAP), only the sender in its siginfo is now coresnap.
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
