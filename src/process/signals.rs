//! What a signal will do to a process, and who sent it: the facts
//! `--on-signal` decides on, and the manifest records.

use crate::process::info;

/// What the kernel does with a signal that has no handler and is not
/// ignored (signal(7), "Standard signals").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    /// Terminate and dump core (SIGSEGV, SIGABRT...).
    Core,
    /// Terminate (SIGTERM, SIGUSR1, real-time signals...).
    Terminate,
    /// Nothing (SIGCHLD, SIGURG, SIGWINCH; SIGCONT only continues).
    Ignore,
    /// Stop the process (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
    Stop,
}

pub fn default_action(signal: i32) -> DefaultAction {
    match signal {
        libc::SIGQUIT
        | libc::SIGILL
        | libc::SIGTRAP
        | libc::SIGABRT
        | libc::SIGBUS
        | libc::SIGFPE
        | libc::SIGSEGV
        | libc::SIGXCPU
        | libc::SIGXFSZ
        | libc::SIGSYS => DefaultAction::Core,
        libc::SIGCHLD | libc::SIGCONT | libc::SIGURG | libc::SIGWINCH => DefaultAction::Ignore,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => DefaultAction::Stop,
        _ => DefaultAction::Terminate,
    }
}

/// How the process has arranged to receive `signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// A handler is installed (`SigCgt`).
    Handled,
    /// `SIG_IGN` (`SigIgn`).
    Ignored,
    /// Neither: the kernel's default action applies.
    Default,
}

impl Disposition {
    /// From the hex masks of `/proc/PID/status` (bit N-1 for signal N).
    pub fn from_masks(caught: u64, ignored: u64, signal: i32) -> Disposition {
        let bit = 1u64.checked_shl(signal as u32 - 1).unwrap_or(0);
        if caught & bit != 0 {
            Disposition::Handled
        } else if ignored & bit != 0 {
            Disposition::Ignored
        } else {
            Disposition::Default
        }
    }
}

/// Reads `SigCgt` and `SigIgn` of `tid` in process `pid` now. Handlers are
/// shared by all threads of a process; the thread's own file is read so
/// that a thread of another process cannot be mistaken for it.
pub fn disposition(pid: i32, tid: i32, signal: i32) -> Option<Disposition> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let mask =
        |key| info::status_field(&status, key).and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    Some(Disposition::from_masks(
        mask("SigCgt:")?,
        mask("SigIgn:")?,
        signal,
    ))
}

/// Whether delivering `signal` now ends the process: neither handled nor
/// ignored, and its default action terminates (with or without a core).
/// A synchronous fault that arrives while its handler is blocked or the
/// signal ignored has had its disposition reset to the default by the
/// kernel before the delivery stop, so reading it then gives the truth.
pub fn will_end_process(disposition: Disposition, signal: i32) -> bool {
    disposition == Disposition::Default
        && matches!(
            default_action(signal),
            DefaultAction::Core | DefaultAction::Terminate
        )
}

/// Who sent a signal, from its `siginfo_t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalOrigin {
    pub si_code: i32,
    /// `SI_USER`, `SEGV_MAPERR`... or the number when the name is unknown.
    pub si_code_name: String,
    /// The kernel raised it (a fault, a timer, SIGIO...), rather than a
    /// process with kill, tgkill, raise, sigqueue or a message queue.
    pub from_kernel: bool,
    /// The sending process and its real uid, as the target's pid namespace
    /// sees them, where the kernel records a sender.
    pub sender_pid: Option<i32>,
    pub sender_uid: Option<u32>,
    /// The faulting address of a SIGSEGV, SIGBUS, SIGILL or SIGFPE that the
    /// kernel raised.
    pub fault_address: Option<u64>,
}

const SI_USER: i32 = 0;
const SI_QUEUE: i32 = -1;
const SI_MESGQ: i32 = -3;
const SI_TKILL: i32 = -6;

impl SignalOrigin {
    /// Decodes the x86_64 `siginfo_t` layout: `si_signo`, `si_errno`,
    /// `si_code` (ints at 0, 4, 8), then the union at 16, whose first
    /// fields are `si_pid` and `si_uid` for a sent signal and `si_addr`
    /// for a fault.
    pub fn from_siginfo(raw: &[u8; 128]) -> SignalOrigin {
        let int = |at: usize| i32::from_ne_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
        let signal = int(0);
        let si_code = int(8);
        let sent = matches!(si_code, SI_USER | SI_QUEUE | SI_MESGQ | SI_TKILL);
        let fault = si_code > 0
            && matches!(
                signal,
                libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
            );
        SignalOrigin {
            si_code,
            si_code_name: si_code_name(signal, si_code)
                .map_or_else(|| si_code.to_string(), str::to_string),
            from_kernel: !sent,
            sender_pid: sent.then(|| int(16)),
            sender_uid: sent.then(|| int(20) as u32),
            fault_address: fault
                .then(|| u64::from_ne_bytes(raw[16..24].try_into().expect("8 bytes"))),
        }
    }

    /// A few words for the summary line: "SI_USER, sent by itself (pid
    /// 1234, uid 0)" or "SEGV_MAPERR at 0x0, from the kernel".
    pub fn describe(&self, target_pid: i32) -> String {
        match (self.sender_pid, self.sender_uid) {
            (Some(pid), Some(uid)) if pid == target_pid => format!(
                "{}, sent by itself (pid {pid}, uid {uid})",
                self.si_code_name
            ),
            (Some(pid), Some(uid)) => {
                format!("{}, sent by pid {pid} (uid {uid})", self.si_code_name)
            }
            _ => match self.fault_address {
                Some(address) => format!("{} at {address:#x}, from the kernel", self.si_code_name),
                None => format!("{}, from the kernel", self.si_code_name),
            },
        }
    }
}

/// The name of an `si_code` (linux/include/uapi/asm-generic/siginfo.h).
pub fn si_code_name(signal: i32, code: i32) -> Option<&'static str> {
    let generic = match code {
        0 => Some("SI_USER"),
        0x80 => Some("SI_KERNEL"),
        -1 => Some("SI_QUEUE"),
        -2 => Some("SI_TIMER"),
        -3 => Some("SI_MESGQ"),
        -4 => Some("SI_ASYNCIO"),
        -5 => Some("SI_SIGIO"),
        -6 => Some("SI_TKILL"),
        -7 => Some("SI_DETHREAD"),
        -60 => Some("SI_ASYNCNL"),
        _ => None,
    };
    if generic.is_some() || code <= 0 {
        return generic;
    }
    let names: &[&str] = match signal {
        libc::SIGSEGV => &[
            "SEGV_MAPERR",
            "SEGV_ACCERR",
            "SEGV_BNDERR",
            "SEGV_PKUERR",
            "SEGV_ACCADI",
            "SEGV_ADIDERR",
            "SEGV_ADIPERR",
            "SEGV_MTEAERR",
            "SEGV_MTESERR",
            "SEGV_CPERR",
        ],
        libc::SIGBUS => &[
            "BUS_ADRALN",
            "BUS_ADRERR",
            "BUS_OBJERR",
            "BUS_MCEERR_AR",
            "BUS_MCEERR_AO",
        ],
        libc::SIGILL => &[
            "ILL_ILLOPC",
            "ILL_ILLOPN",
            "ILL_ILLADR",
            "ILL_ILLTRP",
            "ILL_PRVOPC",
            "ILL_PRVREG",
            "ILL_COPROC",
            "ILL_BADSTK",
            "ILL_BADIADDR",
        ],
        libc::SIGFPE => &[
            "FPE_INTDIV",
            "FPE_INTOVF",
            "FPE_FLTDIV",
            "FPE_FLTOVF",
            "FPE_FLTUND",
            "FPE_FLTRES",
            "FPE_FLTINV",
            "FPE_FLTSUB",
            "FPE_DECOVF",
            "FPE_DECDIV",
            "FPE_DECERR",
            "FPE_INVASC",
            "FPE_INVDEC",
            "FPE_FLTUNK",
            "FPE_CONDTRAP",
        ],
        libc::SIGTRAP => &[
            "TRAP_BRKPT",
            "TRAP_TRACE",
            "TRAP_BRANCH",
            "TRAP_HWBKPT",
            "TRAP_UNK",
            "TRAP_PERF",
        ],
        libc::SIGCHLD => &[
            "CLD_EXITED",
            "CLD_KILLED",
            "CLD_DUMPED",
            "CLD_TRAPPED",
            "CLD_STOPPED",
            "CLD_CONTINUED",
        ],
        libc::SIGIO => &[
            "POLL_IN", "POLL_OUT", "POLL_MSG", "POLL_ERR", "POLL_PRI", "POLL_HUP",
        ],
        libc::SIGSYS => &["SYS_SECCOMP", "SYS_USER_DISPATCH"],
        _ => &[],
    };
    names.get(code as usize - 1).copied()
}

/// The name of a signal (`SIGSEGV`, `SIGRTMIN+3`), or `signal N`.
pub fn signal_name(signal: i32) -> String {
    if let Ok(known) = nix::sys::signal::Signal::try_from(signal) {
        return known.as_str().to_string();
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&signal) {
        return format!("SIGRTMIN+{}", signal - min);
    }
    format!("signal {signal}")
}

/// How a process ended, from the status word the kernel reports at
/// `PTRACE_EVENT_EXIT` (the same encoding as `waitpid`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(N)` or `exit_group(N)`.
    Exited(i32),
    /// Killed by a signal (with `core`: the kernel would write a core).
    Killed { signal: i32, core: bool },
}

impl ExitStatus {
    pub fn from_wait_status(status: i32) -> ExitStatus {
        let signal = status & 0x7f;
        if signal == 0 {
            ExitStatus::Exited((status >> 8) & 0xff)
        } else {
            ExitStatus::Killed {
                signal,
                core: status & 0x80 != 0,
            }
        }
    }

    /// Anything but `exit(0)`.
    pub fn is_failure(self) -> bool {
        self != ExitStatus::Exited(0)
    }

    pub fn describe(self) -> String {
        match self {
            ExitStatus::Exited(code) => format!("exit status {code}"),
            ExitStatus::Killed { signal, .. } => format!("killed by {}", signal_name(signal)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_give_the_disposition_of_each_signal() {
        // SIGSEGV (11) caught, SIGPIPE (13) ignored.
        let caught = 1 << 10;
        let ignored = 1 << 12;
        assert_eq!(
            Disposition::from_masks(caught, ignored, libc::SIGSEGV),
            Disposition::Handled
        );
        assert_eq!(
            Disposition::from_masks(caught, ignored, libc::SIGPIPE),
            Disposition::Ignored
        );
        assert_eq!(
            Disposition::from_masks(caught, ignored, libc::SIGABRT),
            Disposition::Default
        );
        assert_eq!(
            Disposition::from_masks(u64::MAX, 0, 64),
            Disposition::Handled
        );
    }

    #[test]
    fn only_a_default_terminating_action_ends_the_process() {
        assert!(will_end_process(Disposition::Default, libc::SIGSEGV));
        assert!(will_end_process(Disposition::Default, libc::SIGTERM));
        assert!(will_end_process(Disposition::Default, libc::SIGRTMIN()));
        assert!(!will_end_process(Disposition::Handled, libc::SIGSEGV));
        assert!(!will_end_process(Disposition::Ignored, libc::SIGABRT));
        assert!(!will_end_process(Disposition::Default, libc::SIGURG));
        assert!(!will_end_process(Disposition::Default, libc::SIGCHLD));
        assert!(!will_end_process(Disposition::Default, libc::SIGTSTP));
    }

    fn siginfo(signal: i32, code: i32, word16: u64) -> [u8; 128] {
        let mut raw = [0u8; 128];
        raw[0..4].copy_from_slice(&signal.to_ne_bytes());
        raw[8..12].copy_from_slice(&code.to_ne_bytes());
        raw[16..24].copy_from_slice(&word16.to_ne_bytes());
        raw
    }

    #[test]
    fn a_sent_signal_names_its_sender_and_a_fault_its_address() {
        // kill(1234, SIGSEGV) by uid 1000.
        let sent = SignalOrigin::from_siginfo(&siginfo(11, 0, (1000u64 << 32) | 1234));
        assert_eq!(sent.si_code_name, "SI_USER");
        assert!(!sent.from_kernel);
        assert_eq!((sent.sender_pid, sent.sender_uid), (Some(1234), Some(1000)));
        assert_eq!(sent.fault_address, None);
        assert_eq!(
            sent.describe(1234),
            "SI_USER, sent by itself (pid 1234, uid 1000)"
        );
        assert_eq!(sent.describe(1), "SI_USER, sent by pid 1234 (uid 1000)");

        let fault = SignalOrigin::from_siginfo(&siginfo(11, 1, 0x10));
        assert_eq!(fault.si_code_name, "SEGV_MAPERR");
        assert!(fault.from_kernel);
        assert_eq!(fault.sender_pid, None);
        assert_eq!(fault.fault_address, Some(0x10));
        assert_eq!(fault.describe(1), "SEGV_MAPERR at 0x10, from the kernel");

        let raised = SignalOrigin::from_siginfo(&siginfo(6, -6, 77));
        assert_eq!(raised.si_code_name, "SI_TKILL");
        assert_eq!(raised.sender_pid, Some(77));
        assert_eq!(si_code_name(libc::SIGFPE, 15), Some("FPE_CONDTRAP"));
        assert_eq!(si_code_name(libc::SIGSEGV, 99), None);
    }

    #[test]
    fn exit_statuses_decode_like_waitpid() {
        assert_eq!(ExitStatus::from_wait_status(2 << 8), ExitStatus::Exited(2));
        assert!(!ExitStatus::from_wait_status(0).is_failure());
        assert_eq!(
            ExitStatus::from_wait_status(libc::SIGSEGV | 0x80),
            ExitStatus::Killed {
                signal: libc::SIGSEGV,
                core: true
            }
        );
        assert_eq!(
            ExitStatus::from_wait_status(libc::SIGTERM).describe(),
            "killed by SIGTERM"
        );
    }
}
