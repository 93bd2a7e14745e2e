//! Building a [`Snapshot`] from a frozen live process.

use super::select::{SelectionPolicy, decide};
use super::{Region, Snapshot, ThreadInfo};
use crate::arch;
use crate::process::freeze::FrozenProcess;
use crate::process::info;
use crate::process::maps::{self, Mapping, MapsError};
use crate::process::memory::{MemoryReader, MemorySource};
use crate::process::unattached::UnattachedFreeze;
use crate::sys::pagemap::PageMap;
use crate::watch::SignalTrigger;
use std::collections::HashMap;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CollectError {
    #[error("cannot read {what} of process {pid}: {source}")]
    Proc {
        pid: i32,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot read the registers of thread {tid}: {errno}")]
    Registers { tid: i32, errno: nix::errno::Errno },
    #[error("cannot parse /proc/{pid}/smaps: {source}")]
    Maps { pid: i32, source: MapsError },
}

/// Reads threads, registers, identity, auxv and mappings of `frozen`.
/// `state_before` is the process state letter seen before the freeze.
pub fn collect(
    frozen: &FrozenProcess,
    state_before: u8,
    policy: SelectionPolicy,
    memory: &MemoryReader,
) -> Result<Snapshot, CollectError> {
    collect_with_signal(frozen, state_before, policy, memory, None)
}

/// As [`collect`], for a snapshot caused by a signal: the thread that
/// received it comes first and carries its `siginfo_t`, and every thread's
/// NT_PRSTATUS names the signal, as in the kernel's own cores.
pub fn collect_with_signal(
    frozen: &FrozenProcess,
    state_before: u8,
    policy: SelectionPolicy,
    memory: &MemoryReader,
    signal: Option<&SignalTrigger>,
) -> Result<Snapshot, CollectError> {
    let tids: Vec<i32> = frozen.threads().iter().map(|t| t.tid).collect();
    collect_threads(
        frozen.pid(),
        tids,
        RegisterSource::Ptrace,
        state_before,
        policy,
        memory,
        signal,
    )
}

/// As [`collect`], for a target held without ptrace (`--no-ptrace`): the
/// registers are only what `/proc` shows (see
/// [`arch::registers_from_syscall_state`]).
pub fn collect_unattached(
    held: &UnattachedFreeze,
    state_before: u8,
    policy: SelectionPolicy,
    memory: &MemoryReader,
) -> Result<Snapshot, CollectError> {
    collect_threads(
        held.pid(),
        held.tids().to_vec(),
        RegisterSource::Procfs,
        state_before,
        policy,
        memory,
        None,
    )
}

/// Where the threads' registers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegisterSource {
    /// `PTRACE_GETREGSET` on threads this thread holds stopped: complete.
    Ptrace,
    /// `/proc/PID/task/TID/syscall`: partial.
    Procfs,
}

fn collect_threads(
    pid: i32,
    tids: Vec<i32>,
    source: RegisterSource,
    state_before: u8,
    policy: SelectionPolicy,
    memory: &MemoryReader,
    signal: Option<&SignalTrigger>,
) -> Result<Snapshot, CollectError> {
    let threads = capture(pid, tids, source, signal)?;
    let mappings = read_mappings(pid)?;
    describe(pid, threads, state_before, policy, mappings, memory)
}

/// The threads of `frozen` in the order the core lists them, with their
/// registers: the part of the snapshot that has to be read while the
/// target is held. [`describe`] completes it.
pub fn capture_threads(
    frozen: &FrozenProcess,
    signal: Option<&SignalTrigger>,
) -> Result<Vec<ThreadInfo>, CollectError> {
    let tids: Vec<i32> = frozen.threads().iter().map(|t| t.tid).collect();
    capture(frozen.pid(), tids, RegisterSource::Ptrace, signal)
}

fn capture(
    pid: i32,
    mut tids: Vec<i32>,
    source: RegisterSource,
    signal: Option<&SignalTrigger>,
) -> Result<Vec<ThreadInfo>, CollectError> {
    // The kernel's order, as gdb -p numbers the threads, except that the
    // thread a signal was for comes first, as in the kernel's own cores.
    // Every thread is held, so the list no longer changes.
    let listed: HashMap<i32, usize> = info::thread_ids(pid)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(position, tid)| (tid, position))
        .collect();
    let first = signal.map_or(pid, |s| s.tid);
    tids.sort_by_key(|&tid| {
        let position = listed.get(&tid).copied().unwrap_or(usize::MAX);
        (tid != first, tid != pid, position, tid)
    });
    let mut threads = Vec::with_capacity(tids.len());
    for tid in tids {
        let registers = match source {
            RegisterSource::Ptrace => arch::capture_registers(tid)
                .map_err(|errno| CollectError::Registers { tid, errno })?,
            // A thread that exited since the listing, or runs (--no-freeze),
            // shows nothing: its registers stay unknown.
            RegisterSource::Procfs => arch::registers_from_syscall_state(
                &info::thread_syscall(pid, tid).unwrap_or(info::SyscallState::Running),
            ),
        };
        threads.push(ThreadInfo {
            tid,
            tid_inside: tid,
            registers,
            signals_pending: 0,
            signals_blocked: 0,
            current_signal: signal.map_or(0, |s| s.signal),
            siginfo: signal.filter(|s| s.tid == tid).map(|s| s.siginfo),
            user_time: Default::default(),
            system_time: Default::default(),
            children_user_time: Default::default(),
            children_system_time: Default::default(),
        });
    }
    Ok(threads)
}

/// The mappings of `pid` from its smaps: the target's, or a copy-on-write
/// clone's, whose mappings are the target's at the instant of the clone.
pub fn read_mappings(pid: i32) -> Result<Vec<Mapping>, CollectError> {
    let smaps = info::smaps(pid).map_err(|source| CollectError::Proc {
        pid,
        what: "smaps",
        source,
    })?;
    let mut mappings =
        maps::parse_smaps(&smaps).map_err(|source| CollectError::Maps { pid, source })?;
    // smaps shows a newline in a file name as `\012` but leaves a literal
    // `\012` alone; the map_files link has the name byte for byte.
    for mapping in mappings
        .iter_mut()
        .filter(|m| m.is_file() && m.name.contains(&b'\n'))
    {
        if let Some(real) = info::mapped_file_path(pid, mapping.start, mapping.end) {
            mapping.name = real;
        }
    }
    Ok(mappings)
}

/// Completes the snapshot of `pid` from its captured `threads` and
/// `mappings`: identity, each thread's signal sets and times, auxv, and
/// the decision for each mapping (`memory` answers whether a file mapping
/// starts with an ELF header). None of it changes while the target runs
/// on, or none that a debugger relies on, so in copy-on-write mode this
/// happens after the release.
pub fn describe(
    pid: i32,
    mut threads: Vec<ThreadInfo>,
    state_before: u8,
    policy: SelectionPolicy,
    mappings: Vec<Mapping>,
    memory: &dyn MemorySource,
) -> Result<Snapshot, CollectError> {
    let proc_err = |what| move |source| CollectError::Proc { pid, what, source };
    let process = info::process_info(pid, state_before).map_err(proc_err("status"))?;
    for thread in &mut threads {
        // Missing /proc facts (a thread that has exited since) only cost
        // timing fields and signal sets, not the thread.
        let facts = info::thread_facts(pid, thread.tid).unwrap_or_default();
        thread.tid_inside = info::tid_inside(pid, thread.tid);
        thread.signals_pending = facts.signals_pending;
        thread.signals_blocked = facts.signals_blocked;
        thread.user_time = facts.user_time;
        thread.system_time = facts.system_time;
        thread.children_user_time = facts.children_user_time;
        thread.children_system_time = facts.children_system_time;
    }
    let auxv = info::auxv(pid).map_err(proc_err("auxv"))?;
    // Without a page map every byte is read; the core is still exact, only
    // slower on sparse processes.
    let regions: Vec<Region> = mappings
        .into_iter()
        .map(|mapping| {
            let decision = decide(&mapping, policy, || {
                starts_with_elf_magic(memory, mapping.start)
            });
            Region {
                mapping,
                decision,
                populated: None,
                read_after_release: false,
            }
        })
        .collect();
    Ok(Snapshot {
        process,
        threads,
        auxv,
        regions,
        policy,
    })
}

/// Finds which pages of the private anonymous regions hold data, from the
/// page map of `pid`: the frozen target, or (in copy-on-write mode, after
/// the target is released) its clone, whose anonymous pages are the
/// target's, shared. Regions for which `read_whole` says so are left to be
/// read in full. Without a page map every byte is read: the core is the
/// same, the dump only slower on sparse processes.
pub fn find_populated(snapshot: &mut Snapshot, pid: i32, read_whole: impl Fn(&Region) -> bool) {
    let regions = &mut snapshot.regions;
    let sparse: Vec<usize> = (0..regions.len())
        .filter(|&i| {
            regions[i].dumped_len() > 0
                && regions[i].is_private_anonymous()
                && !read_whole(&regions[i])
        })
        .collect();
    let spans: Vec<(u64, u64)> = sparse
        .iter()
        .map(|&i| {
            (
                regions[i].mapping.start,
                regions[i].mapping.start + regions[i].dumped_len(),
            )
        })
        .collect();
    if let Some(populated) = PageMap::open(pid)
        .ok()
        .and_then(|mut map| map.populated_in(&spans).ok())
    {
        for (i, found) in sparse.into_iter().zip(populated) {
            regions[i].populated = Some(found);
        }
    }
}

fn starts_with_elf_magic(memory: &dyn MemorySource, addr: u64) -> bool {
    let mut magic = [0u8; 4];
    let mut unreadable = Vec::new();
    memory.read(addr, &mut magic, &mut unreadable).is_ok()
        && unreadable.is_empty()
        && magic == *b"\x7fELF"
}
