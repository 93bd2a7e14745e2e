//! `--mode cow`: keep the target paused only while its threads and metadata
//! are captured, then dump memory from a copy-on-write clone of it.
//!
//! Under the freeze, the main thread is made to call `clone` with no flags
//! and no exit signal (a fork whose end the target is not told about); the
//! child is attached to coresnap before it runs a single instruction and
//! killed with coresnap (PTRACE_O_EXITKILL). Memory that a fork does not
//! snapshot is read before the target resumes: shared mappings (the child
//! would see the target's later writes), and MADV_DONTFORK / MADV_WIPEONFORK
//! regions (absent or zeroed in the child). After the dump the child is
//! killed, and the target's main thread is briefly stopped again to reap it
//! (`wait4` with `__WALL`), so no zombie is left in the target's process
//! table.

use crate::process::freeze::FrozenProcess;
use crate::process::inject::{self, BorrowedCode, InjectError, SYS_CLONE, SYS_WAIT4};
use crate::process::memory::{MemoryError, MemoryReader, MemorySource, Unreadable};
use crate::snapshot::Snapshot;
use crate::sys::ptrace::{self, StopEvent};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a copy-on-write dump could not be prepared. The target is still
/// frozen and unchanged, so the dump can go on in stop mode.
#[derive(Debug, Error)]
pub enum CowError {
    #[error("the target runs under a seccomp filter, which could kill it for the injected clone")]
    Seccomp,
    #[error(
        "the target's private memory ({anon_mib} MiB) is more than half of the memory available ({available_mib} MiB); pages it writes during the dump would be duplicated"
    )]
    NotEnoughMemory { anon_mib: u64, available_mib: u64 },
    #[error(
        "its shared and MADV_DONTFORK memory ({mib} MiB) would have to be copied under the freeze, which is more than a quarter of the available memory"
    )]
    TooMuchSharedMemory { mib: u64 },
    #[error("the main thread could not run the injected clone: {0}")]
    Inject(#[from] InjectError),
    #[error("clone failed in the target: {0}")]
    CloneFailed(nix::errno::Errno),
    #[error("reading shared memory under the freeze failed: {0}")]
    Memory(#[from] MemoryError),
}

impl CowError {
    /// What the failed attempt left in the target, for the message that
    /// reports it: nothing, unless the borrowed thread could not be put
    /// back as it was.
    pub fn effect_on_target(&self) -> &'static str {
        match self {
            CowError::Inject(e) if !e.target_unchanged() => {
                "the thread it borrowed may not be as it was (see above)"
            }
            _ => "nothing was changed in it",
        }
    }
}

/// A region read while the target was frozen.
struct Preloaded {
    start: u64,
    bytes: Vec<u8>,
    unreadable: Vec<Unreadable>,
}

/// The frozen copy of the target: memory is read from the clone, except for
/// preloaded regions, and with the borrowed code bytes put back.
pub struct CowCopy {
    target: i32,
    child: i32,
    child_memory: MemoryReader,
    preloaded: Vec<Preloaded>,
    borrowed: BorrowedCode,
    timeout: Duration,
    finished: bool,
}

fn meminfo_kb(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

/// A number of `/proc/PID/status` (the first word after `key`: kB for sizes).
fn status_number(pid: i32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    crate::process::info::status_field(&text, key)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether a copy-on-write dump is safe, decided before anything is changed
/// in the target.
fn check_preconditions(frozen: &FrozenProcess, snapshot: &Snapshot) -> Result<(), CowError> {
    let pid = frozen.pid();
    if status_number(pid, "Seccomp:").unwrap_or(0) != 0 {
        return Err(CowError::Seccomp);
    }
    let available_kb = meminfo_kb("MemAvailable:").unwrap_or(0);
    let anon_kb = status_number(pid, "RssAnon:").unwrap_or(0);
    if anon_kb > available_kb / 2 {
        return Err(CowError::NotEnoughMemory {
            anon_mib: anon_kb >> 10,
            available_mib: available_kb >> 10,
        });
    }
    let preload: u64 = snapshot
        .regions
        .iter()
        .filter(|r| needs_preload(r))
        .map(|r| r.dumped_len())
        .sum();
    if preload > available_kb * 1024 / 4 {
        return Err(CowError::TooMuchSharedMemory { mib: preload >> 20 });
    }
    Ok(())
}

/// Memory a clone does not hold as it was at the freeze: shared mappings
/// (the target's later writes show through) and MADV_DONTFORK /
/// MADV_WIPEONFORK regions (missing or zeroed in the clone).
pub fn needs_preload(region: &crate::snapshot::Region) -> bool {
    let m = &region.mapping;
    region.dumped_len() > 0 && (m.shared || m.has_vm_flag(b"dc") || m.has_vm_flag(b"wf"))
}

impl CowCopy {
    /// Prepares the copy while `frozen` still holds every thread. On error
    /// the target is exactly as the freeze left it.
    pub fn prepare(
        frozen: &FrozenProcess,
        snapshot: &Snapshot,
        target_memory: &MemoryReader,
        timeout: Duration,
    ) -> Result<CowCopy, CowError> {
        check_preconditions(frozen, snapshot)?;
        let pid = frozen.pid();
        let mut preloaded = Vec::new();
        for region in snapshot.regions.iter().filter(|r| needs_preload(r)) {
            let mut bytes = vec![0u8; region.dumped_len() as usize];
            let mut unreadable = Vec::new();
            target_memory.read(region.mapping.start, &mut bytes, &mut unreadable)?;
            preloaded.push(Preloaded {
                start: region.mapping.start,
                bytes,
                unreadable,
            });
        }
        // clone(flags = 0): a fork with no exit signal, so the target gets
        // no SIGCHLD for it and a plain wait() in the target cannot reap it.
        let injected = inject::inject_syscall(pid, pid, SYS_CLONE, [0; 6], true, timeout)?;
        let Some(child) = injected.child else {
            return Err(CowError::CloneFailed(nix::errno::Errno::from_raw(
                (-injected.result) as i32,
            )));
        };
        // Every private page of the clone is shared with the target: read
        // it without pinning, or the kernel would copy each page it reads.
        let child_memory = match MemoryReader::open_clone(child) {
            Ok(reader) => reader,
            Err(e) => {
                kill_and_wait(child, timeout);
                let _ = reap_in_target(pid, child, timeout);
                return Err(e.into());
            }
        };
        Ok(CowCopy {
            target: pid,
            child,
            child_memory,
            preloaded,
            borrowed: injected.borrowed,
            timeout,
            finished: false,
        })
    }

    pub fn child_pid(&self) -> i32 {
        self.child
    }

    /// Kills the clone and has the target reap it. Call after the target has
    /// been released; it stops the target's main thread again for the
    /// duration of one `wait4` (well under a millisecond).
    pub fn finish(mut self) -> Result<(), InjectError> {
        self.finished = true;
        kill_and_wait(self.child, self.timeout);
        reap_in_target(self.target, self.child, self.timeout)
    }
}

impl Drop for CowCopy {
    fn drop(&mut self) {
        if !self.finished {
            kill_and_wait(self.child, self.timeout);
            let _ = reap_in_target(self.target, self.child, self.timeout);
        }
    }
}

impl MemorySource for CowCopy {
    fn read(
        &self,
        addr: u64,
        buf: &mut [u8],
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<(), MemoryError> {
        let end = addr + buf.len() as u64;
        if let Some(pre) = self
            .preloaded
            .iter()
            .find(|p| p.start <= addr && end <= p.start + p.bytes.len() as u64)
        {
            let from = (addr - pre.start) as usize;
            buf.copy_from_slice(&pre.bytes[from..from + buf.len()]);
            unreadable.extend(
                pre.unreadable
                    .iter()
                    .filter(|u| u.start < end && addr < u.start + u.len),
            );
        } else {
            self.child_memory.read(addr, buf, unreadable)?;
        }
        // The clone was made while the trampoline sat in the target's code.
        let code_start = self.borrowed.addr;
        let code_end = code_start + self.borrowed.original.len() as u64;
        if code_start < end && addr < code_end {
            for at in code_start.max(addr)..code_end.min(end) {
                buf[(at - addr) as usize] = self.borrowed.original[(at - code_start) as usize];
            }
        }
        Ok(())
    }

    fn read_pieces(
        &self,
        pieces: &[(u64, usize, usize)],
        buf: &mut [u8],
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<(), MemoryError> {
        let special = |&(addr, _, len): &(u64, usize, usize)| {
            let end = addr + len as u64;
            let borrowed_end = self.borrowed.addr + self.borrowed.original.len() as u64;
            (self.borrowed.addr < end && addr < borrowed_end)
                || self
                    .preloaded
                    .iter()
                    .any(|p| p.start < end && addr < p.start + p.bytes.len() as u64)
        };
        if pieces.iter().any(special) {
            crate::process::memory::read_each(self, pieces, buf, unreadable)
        } else {
            self.child_memory.read_pieces(pieces, buf, unreadable)
        }
    }
}

fn kill_and_wait(child: i32, timeout: Duration) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match ptrace::poll_stop(child) {
            Ok(StopEvent::Gone) | Err(_) => return,
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

/// Stops the target's main thread, has it `wait4(child, NULL, __WALL, NULL)`,
/// and lets it go: the dead clone is the target's child, and only the
/// target can remove it from the process table.
fn reap_in_target(pid: i32, child: i32, timeout: Duration) -> Result<(), InjectError> {
    let pt = |op| {
        move |errno| InjectError::Ptrace {
            tid: pid,
            op,
            errno,
        }
    };
    ptrace::seize(pid).map_err(pt("SEIZE"))?;
    // A signal the thread stops on instead of the interrupt is handed back
    // when it is let go, whatever else happens.
    let mut owed = None;
    let outcome = (|| {
        ptrace::interrupt(pid).map_err(pt("INTERRUPT"))?;
        let deadline = Instant::now() + timeout;
        loop {
            match ptrace::poll_stop(pid).map_err(pt("waitpid"))? {
                StopEvent::NotYet if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(50))
                }
                StopEvent::NotYet => return Err(InjectError::Timeout { tid: pid, timeout }),
                StopEvent::Gone => return Err(InjectError::ThreadGone { tid: pid }),
                StopEvent::Trapped { .. } => break,
                StopEvent::SignalDelivery { signal } => {
                    owed = Some(signal);
                    break;
                }
            }
        }
        let args = [child as u64, 0, libc::__WALL as u64, 0, 0, 0];
        inject::inject_syscall(pid, pid, SYS_WAIT4, args, false, timeout).map(drop)
    })();
    let _ = ptrace::detach(pid, owed);
    outcome
}
