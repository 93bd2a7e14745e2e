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
use crate::process::inject::{self, InjectError, SYS_CLONE, SYS_WAIT4};
use crate::process::maps::{self, Mapping};
use crate::process::memory::{MemoryError, MemoryReader, MemorySource, Unreadable};
use crate::snapshot::Region;
use crate::snapshot::collect::{self, CollectError};
use crate::snapshot::select::{SelectionPolicy, decide, filter_bits};
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
        "{setting}, so the clone is not what runs out of memory first; the target's private memory ({anon_mib} MiB), all of which it could duplicate during the dump, is more than the copy may cost ({cap_mib} MiB; raise it with --cow-max-copy)"
    )]
    OomKillerWouldSpareClone {
        setting: &'static str,
        anon_mib: u64,
        cap_mib: u64,
    },
    #[error(
        "the clone could not be made the out-of-memory killer's first choice (writing 1000 to /proc/{clone}/oom_score_adj: {source})"
    )]
    OomScore { clone: i32, source: std::io::Error },
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
    #[error("reading the mappings under the freeze failed: {0}")]
    Mappings(#[from] CollectError),
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
/// preloaded regions.
pub struct CowCopy {
    target: i32,
    child: i32,
    child_memory: MemoryReader,
    preloaded: Vec<Preloaded>,
    /// The target's smaps, when it had to be read under the freeze (to
    /// know which memory the clone cannot hold); else the clone's smaps is
    /// read after the release.
    mappings_at_freeze: Option<Vec<Mapping>>,
    /// MADV_WIPEONFORK regions found only after the release (the clone
    /// holds zeros there): read from the target itself, as it is then.
    wiped_in_clone: Vec<(u64, u64)>,
    target_memory: Option<MemoryReader>,
    timeout: Duration,
    finished: bool,
    watch: std::sync::Mutex<CostWatch>,
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

/// The target's mappings as `/proc/PID/maps` lists them: no counters and
/// no `VmFlags`, but cheap to read (no walk of the page tables, which is
/// what makes smaps take tens of milliseconds for a large process).
fn maps_of(pid: i32) -> Result<Vec<Mapping>, CollectError> {
    let text = std::fs::read(format!("/proc/{pid}/maps")).map_err(|source| CollectError::Proc {
        pid,
        what: "maps",
        source,
    })?;
    maps::parse_smaps(&text).map_err(|source| CollectError::Maps { pid, source })
}

/// Whether the filter may select the shared mapping `m`, as far as
/// `/proc/PID/maps` tells (it shows neither MADV_DONTDUMP nor hugetlb):
/// true for every shared mapping that [`decide`] could dump.
fn may_select_shared(m: &Mapping, policy: SelectionPolicy) -> bool {
    use filter_bits::*;
    let bit = if m.is_deleted_file() || !m.is_file() {
        ANON_SHARED
    } else {
        MAPPED_SHARED
    };
    m.shared && (policy.all || policy.filter & (bit | HUGETLB_SHARED) != 0)
}

/// Shared memory the target itself can never write: a mapping without
/// write permission whose file was not opened for writing (`VmFlags` has
/// no `mw`, so not even `mprotect` can make it writable). Its bytes are the
/// file's, so it is read after the release.
pub fn target_cannot_write(m: &Mapping) -> bool {
    m.shared && !m.writable && !m.has_vm_flag(b"mw")
}

/// Memory a clone does not hold as it was at the freeze: shared mappings
/// the target can write (the clone would see its later writes) and
/// MADV_DONTFORK / MADV_WIPEONFORK regions (missing or zeroed in the
/// clone).
pub fn needs_preload(region: &Region) -> bool {
    let m = &region.mapping;
    region.dumped_len() > 0
        && ((m.shared && !target_cannot_write(m)) || m.has_vm_flag(b"dc") || m.has_vm_flag(b"wf"))
}

/// How long the clone is watched before coresnap commits to copying from
/// it: what the target duplicates in this time gives its write rate. The
/// work after the release (page map, notes, manifest) overlaps it.
pub const PROBE_WINDOW: Duration = Duration::from_millis(100);

/// The copy speed assumed when the probe's write rate is projected over the
/// whole copy: lower than a plain dump reaches on an idle machine
/// (docs/PERFORMANCE.md), so that the projection errs on the costly side.
const ASSUMED_COPY_BYTES_PER_SEC: u64 = 512 << 20;

/// How much more of the copy's time a look at the clone's memory may take:
/// a look walks the clone's page tables (about 15 ms per GiB of 4 KiB
/// pages), so the looks are spaced at least ten times their cost apart.
const LOOK_SPACING: u32 = 10;

/// The copy's cost in memory. The clone keeps every page as it was at the
/// freeze; each page the target writes (or frees) during the copy is then
/// held twice, the old one by the clone alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyCost {
    /// The most the copy may cost (`--cow-max-copy`, by default half of
    /// `MemAvailable` when the dump began).
    pub cap: u64,
    /// The target's private resident memory at the freeze: the most it
    /// can duplicate.
    pub private: u64,
    /// Bytes per second the target duplicated during the probe.
    pub write_rate: u64,
    /// What the whole copy is expected to cost, from the probe.
    pub expected: u64,
    /// What it did cost: memory only the clone held, at the last look
    /// (the clone's `Private_Dirty`).
    pub duplicated: u64,
}

/// The cap on the copy's cost: `max_copy`, or half of the memory available
/// to the target: the machine's `MemAvailable`, or less if the target's
/// memory cgroup (where its clone is too) has less room left.
pub fn copy_cap(pid: i32, max_copy: Option<u64>) -> u64 {
    max_copy.unwrap_or_else(|| {
        let machine = meminfo_kb("MemAvailable:").unwrap_or(0) * 1024;
        machine.min(cgroup_room(pid).unwrap_or(u64::MAX)) / 2
    })
}

/// The least room left under a memory limit of `pid`'s cgroup or of any
/// cgroup above it (cgroup v2 `memory.max`, or v1 `memory.limit_in_bytes`).
fn cgroup_room(pid: i32) -> Option<u64> {
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (root, mut path, limit, usage) = match membership.lines().find_map(|l| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    }) {
        Some(path) => (
            "/sys/fs/cgroup/memory",
            path,
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        ),
        None => (
            "/sys/fs/cgroup",
            membership.lines().find_map(|l| l.strip_prefix("0::"))?,
            "memory.max",
            "memory.current",
        ),
    };
    let number = |dir: &str, file: &str| -> Option<u64> {
        std::fs::read_to_string(format!("{root}{dir}/{file}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let mut room: Option<u64> = None;
    loop {
        let dir = path.trim_end_matches('/');
        if let (Some(limit), Some(usage)) = (number(dir, limit), number(dir, usage)) {
            let left = limit.saturating_sub(usage);
            room = Some(room.map_or(left, |r| r.min(left)));
        }
        match dir.rsplit_once('/') {
            Some((parent, _)) => path = parent,
            None => return room,
        }
    }
}

/// A kernel setting under which the out-of-memory killer does not pick the
/// process with the highest `oom_score_adj`.
fn oom_killer_spares_clone() -> Option<&'static str> {
    let set = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/vm/{name}")).is_ok_and(|v| v.trim() != "0")
    };
    if set("panic_on_oom") {
        Some("vm.panic_on_oom is set (running out of memory panics the machine)")
    } else if set("oom_kill_allocating_task") {
        Some(
            "vm.oom_kill_allocating_task is set (the process whose allocation fails is killed: the target, whose writes need the copies)",
        )
    } else {
        None
    }
}

/// Before the freeze: the target's private resident memory, or why a clone
/// is not safe at any write rate. The clone is the out-of-memory killer's
/// first pick, so a copy that costs more than the machine has kills the
/// clone, not the target, unless a kernel setting changes who is picked:
/// then the worst case, every private page duplicated, must fit the cap.
pub fn check_budget(pid: i32, cap: u64) -> Result<u64, CowError> {
    let private = status_number(pid, "RssAnon:").unwrap_or(0) * 1024;
    match oom_killer_spares_clone() {
        Some(setting) if private > cap => Err(CowError::OomKillerWouldSpareClone {
            setting,
            anon_mib: private >> 20,
            cap_mib: cap >> 20,
        }),
        _ => Ok(private),
    }
}

/// The clone's `oom_score_adj`: the most any process can have, so the
/// out-of-memory killer takes the clone before anything else.
pub const CLONE_OOM_SCORE_ADJ: i32 = 1000;

/// Makes `clone` the process the out-of-memory killer picks first, before
/// it holds a page of its own: the target's writes during the copy are what
/// costs memory, and should that run out, the clone is the one to go.
fn make_first_oom_victim(clone: i32) -> Result<(), CowError> {
    std::fs::write(
        format!("/proc/{clone}/oom_score_adj"),
        CLONE_OOM_SCORE_ADJ.to_string(),
    )
    .map_err(|source| CowError::OomScore { clone, source })
}

/// Memory only `clone` holds: its private dirty pages, every one a page the
/// target has written or freed since the clone was made. `None` once the
/// clone is gone.
fn clone_only_bytes(clone: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{clone}/smaps_rollup")).ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Private_Dirty:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The global count of out-of-memory kills (`oom_kill` in /proc/vmstat).
fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The clone's memory cost as the copy goes: looked at now and then from
/// the reading thread, and the clone killed once the cost passes the cap.
struct CostWatch {
    made: Instant,
    oom_kills_at_start: u64,
    cost: CopyCost,
    next_look: Instant,
    /// Why coresnap killed the clone itself.
    gave_up: Option<String>,
}

impl CostWatch {
    fn new() -> CostWatch {
        let now = Instant::now();
        CostWatch {
            made: now,
            oom_kills_at_start: oom_kills(),
            cost: CopyCost::default(),
            next_look: now,
            gave_up: None,
        }
    }
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

impl CowCopy {
    /// Prepares the copy while `frozen` still holds every thread: makes
    /// the clone and reads what it cannot hold, and nothing else. On error
    /// the target is exactly as the freeze left it.
    ///
    /// `/proc/PID/maps` tells which mappings may need reading now: shared
    /// ones the filter may select, and after the clone, the ones missing
    /// from it (MADV_DONTFORK). Only if there are any is the target's smaps
    /// read under the freeze, for their `VmFlags` (`mw`, `dd`, userfaultfd)
    /// and counters; otherwise the clone's smaps describes the mappings
    /// after the release.
    pub fn prepare(
        frozen: &FrozenProcess,
        policy: SelectionPolicy,
        target_memory: &MemoryReader,
        timeout: Duration,
    ) -> Result<CowCopy, CowError> {
        let pid = frozen.pid();
        if status_number(pid, "Seccomp:").unwrap_or(0) != 0 {
            return Err(CowError::Seccomp);
        }
        let target_maps = maps_of(pid)?;
        let mut smaps = None;
        if target_maps.iter().any(|m| may_select_shared(m, policy)) {
            smaps = Some(collect::read_mappings(pid)?);
        }
        if let Some(mappings) = &smaps {
            check_preload_size(&preload_regions(mappings, policy, target_memory))?;
        }
        // clone(flags = 0): a fork with no exit signal, so the target gets
        // no SIGCHLD for it and a plain wait() in the target cannot reap it.
        let injected = inject::inject_syscall(pid, pid, SYS_CLONE, [0; 6], true, timeout)?;
        let Some(child) = injected.child else {
            return Err(CowError::CloneFailed(nix::errno::Errno::from_raw(
                (-injected.result) as i32,
            )));
        };
        if let Err(e) = make_first_oom_victim(child) {
            kill_and_wait(child, timeout);
            let _ = reap_in_target(pid, child, timeout);
            return Err(e);
        }
        let watch = std::sync::Mutex::new(CostWatch::new());
        // Every private page of the clone is shared with the target: read
        // it without pinning, or the kernel would copy each page it reads.
        let prepared = MemoryReader::open_clone(child)
            .map_err(CowError::from)
            .and_then(|child_memory| {
                let smaps = match smaps {
                    Some(smaps) => Some(smaps),
                    None if lacks_mappings(child, &target_maps)? => {
                        Some(collect::read_mappings(pid)?)
                    }
                    None => None,
                };
                let preloaded = match &smaps {
                    Some(mappings) => {
                        let regions = preload_regions(mappings, policy, target_memory);
                        check_preload_size(&regions)?;
                        preload(&regions, target_memory, &child_memory)?
                    }
                    None => Vec::new(),
                };
                Ok((child_memory, smaps, preloaded))
            });
        let (child_memory, mappings_at_freeze, preloaded) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                kill_and_wait(child, timeout);
                let _ = reap_in_target(pid, child, timeout);
                return Err(e);
            }
        };
        Ok(CowCopy {
            target: pid,
            child,
            child_memory,
            preloaded,
            mappings_at_freeze,
            wiped_in_clone: Vec::new(),
            target_memory: None,
            timeout,
            finished: false,
            watch,
        })
    }

    pub fn child_pid(&self) -> i32 {
        self.child
    }

    /// The target's mappings at the freeze, for after the release: the
    /// smaps read under the freeze, or else the clone's, whose mappings and
    /// pages are the target's at the instant of the clone.
    ///
    /// A MADV_WIPEONFORK region shows in neither `/proc/PID/maps` nor the
    /// clone (which holds zeros there), so without smaps under the freeze
    /// it is found only now: it is then described by the target's smaps
    /// and read from the target, as it is after the release.
    pub fn mappings(&mut self) -> Result<Vec<Mapping>, CollectError> {
        if let Some(mappings) = self.mappings_at_freeze.take() {
            return Ok(mappings);
        }
        let mut mappings = collect::read_mappings(self.child)?;
        if mappings.iter().any(|m| m.has_vm_flag(b"wf")) {
            let in_target = collect::read_mappings(self.target)?;
            for mapping in mappings.iter_mut().filter(|m| m.has_vm_flag(b"wf")) {
                if let Some(now) = in_target
                    .iter()
                    .find(|t| (t.start, t.end) == (mapping.start, mapping.end))
                {
                    *mapping = now.clone();
                    self.wiped_in_clone.push((mapping.start, mapping.end));
                }
            }
            if !self.wiped_in_clone.is_empty() {
                self.target_memory =
                    Some(
                        MemoryReader::open(self.target).map_err(|e| CollectError::Proc {
                            pid: self.target,
                            what: "mem",
                            source: std::io::Error::other(e.to_string()),
                        })?,
                    );
            }
        }
        Ok(mappings)
    }

    /// Whether `region`'s bytes are read after the release: shared memory
    /// that was not copied under the freeze because the target cannot
    /// write it ([`target_cannot_write`]), and MADV_WIPEONFORK regions
    /// found only after the release.
    pub fn read_after_release(&self, region: &Region) -> bool {
        let m = &region.mapping;
        region.dumped_len() > 0
            && ((m.shared && !self.preloaded.iter().any(|p| p.start == m.start))
                || self.target_reader_for(m.start, m.end).is_some())
    }

    /// The target's memory, if `start..end` is to be read from it.
    fn target_reader_for(&self, start: u64, end: u64) -> Option<&MemoryReader> {
        self.wiped_in_clone
            .iter()
            .any(|&(s, e)| s <= start && end <= e)
            .then_some(self.target_memory.as_ref())
            .flatten()
    }

    /// After the release, before the first byte is copied: waits out
    /// [`PROBE_WINDOW`] from the clone's creation, measures how fast the
    /// target duplicates memory and projects it over the copy of `private`
    /// bytes. `Err` says why the copy would cost more than `cap`.
    pub fn probe(&self, cap: u64, private: u64) -> Result<CopyCost, String> {
        let made = self.watch().made;
        std::thread::sleep(PROBE_WINDOW.saturating_sub(made.elapsed()));
        let duplicated = clone_only_bytes(self.child).ok_or_else(|| self.lost())?;
        let elapsed = made.elapsed().as_secs_f64().max(1e-3);
        let write_rate = (duplicated as f64 / elapsed) as u64;
        let copy_secs = private as f64 / ASSUMED_COPY_BYTES_PER_SEC as f64;
        let expected = private.min(duplicated + (write_rate as f64 * copy_secs) as u64);
        let cost = CopyCost {
            cap,
            private,
            write_rate,
            expected,
            duplicated,
        };
        let mut watch = self.watch();
        watch.cost = cost;
        watch.next_look = Instant::now() + PROBE_WINDOW;
        if expected > cap {
            return Err(format!(
                "the target duplicated {} MiB/s of its memory during a {} ms probe, so copying its {} MiB from a clone is expected to cost {} MiB, more than the {} MiB allowed (--cow-max-copy)",
                mib(write_rate),
                PROBE_WINDOW.as_millis(),
                mib(private),
                mib(expected),
                mib(cap)
            ));
        }
        Ok(cost)
    }

    /// The copy's cost so far, looked at once more.
    pub fn cost(&self) -> CopyCost {
        let mut watch = self.watch();
        if let Some(now) = clone_only_bytes(self.child) {
            watch.cost.duplicated = watch.cost.duplicated.max(now);
        }
        watch.cost
    }

    /// Looks at the copy's cost when it is time to, and kills the clone once
    /// it passes the cap: the reads that follow then fail, and
    /// [`lost`](Self::lost) says why.
    fn keep_within_cap(&self) {
        let mut watch = self.watch();
        if watch.gave_up.is_some() || watch.cost.cap == 0 || Instant::now() < watch.next_look {
            return;
        }
        let started = Instant::now();
        let Some(duplicated) = clone_only_bytes(self.child) else {
            return;
        };
        watch.cost.duplicated = watch.cost.duplicated.max(duplicated);
        watch.next_look = Instant::now() + (started.elapsed() * LOOK_SPACING).max(PROBE_WINDOW);
        if duplicated > watch.cost.cap {
            watch.gave_up = Some(format!(
                "the target had duplicated {} MiB of its memory during the copy, more than the {} MiB allowed (--cow-max-copy), so coresnap ended the clone",
                mib(duplicated),
                mib(watch.cost.cap)
            ));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Why the clone is gone before its memory was copied (to be asked once
    /// reading it has failed).
    pub fn lost(&self) -> String {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let watch = self.watch();
        if let Some(why) = &watch.gave_up {
            return why.clone();
        }
        let child = self.child;
        // Its memory goes before its exit is reported: wait for the report.
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            let status = waitpid(
                nix::unistd::Pid::from_raw(child),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            );
            match status {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                _ => break status,
            }
        };
        let how = match status {
            Ok(WaitStatus::Signaled(_, signal, _)) => format!("was killed by {}", signal.as_str()),
            Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
            _ => "ended".to_string(),
        };
        let oom_kills = oom_kills().saturating_sub(watch.oom_kills_at_start);
        let who = if oom_kills > 0 {
            format!(
                "the kernel's out-of-memory killer killed {oom_kills} process(es) meanwhile; the clone, its first pick, was one"
            )
        } else {
            "not by the out-of-memory killer: the target kills its own children, or another process killed it".to_string()
        };
        format!(
            "the copy-on-write clone (pid {child}) {how} before its memory was copied ({who}); the target is still running"
        )
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, CostWatch> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
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
        self.keep_within_cap();
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
        } else if let Some(target) = self.target_reader_for(addr, end) {
            target.read(addr, buf, unreadable)?;
        } else {
            self.child_memory.read(addr, buf, unreadable)?;
        }
        Ok(())
    }

    fn read_pieces(
        &self,
        pieces: &[(u64, usize, usize)],
        buf: &mut [u8],
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<(), MemoryError> {
        let not_in_clone = |&(addr, _, len): &(u64, usize, usize)| {
            let end = addr + len as u64;
            self.preloaded
                .iter()
                .any(|p| p.start < end && addr < p.start + p.bytes.len() as u64)
                || self
                    .wiped_in_clone
                    .iter()
                    .any(|&(s, e)| s < end && addr < e)
        };
        if pieces.iter().any(not_in_clone) {
            crate::process::memory::read_each(self, pieces, buf, unreadable)
        } else {
            self.keep_within_cap();
            self.child_memory.read_pieces(pieces, buf, unreadable)
        }
    }
}

/// Whether the clone lacks any of the target's mappings: those are
/// MADV_DONTFORK regions (a fork copies every other mapping).
fn lacks_mappings(child: i32, target_maps: &[Mapping]) -> Result<bool, CollectError> {
    let in_clone: std::collections::HashSet<(u64, u64)> =
        maps_of(child)?.iter().map(|m| (m.start, m.end)).collect();
    Ok(target_maps
        .iter()
        .any(|m| !in_clone.contains(&(m.start, m.end))))
}

/// The regions of `mappings` (the target's smaps) to read under the
/// freeze, decided as the dump will decide them.
fn preload_regions(
    mappings: &[Mapping],
    policy: SelectionPolicy,
    target_memory: &MemoryReader,
) -> Vec<Region> {
    mappings
        .iter()
        .filter(|m| m.shared || m.has_vm_flag(b"dc") || m.has_vm_flag(b"wf"))
        .map(|mapping| Region {
            decision: decide(mapping, policy, || {
                let mut magic = [0u8; 4];
                target_memory
                    .read(mapping.start, &mut magic, &mut Vec::new())
                    .is_ok()
                    && magic == *b"\x7fELF"
            }),
            mapping: mapping.clone(),
            populated: None,
            read_after_release: false,
        })
        .filter(needs_preload)
        .collect()
}

/// Refuses a copy that would hold more than a quarter of the memory
/// available in coresnap for the whole dump.
fn check_preload_size(regions: &[Region]) -> Result<(), CowError> {
    let available = meminfo_kb("MemAvailable:").unwrap_or(0) * 1024;
    let preload: u64 = regions.iter().map(Region::dumped_len).sum();
    if preload > available / 4 {
        return Err(CowError::TooMuchSharedMemory { mib: preload >> 20 });
    }
    Ok(())
}

/// Reads `regions` while the target is still frozen. Shared memory is read
/// through the clone, which maps the same pages: reading it through the
/// target would map every page it reads into the target's page tables,
/// where its smaps would count them ever after. MADV_DONTFORK and
/// MADV_WIPEONFORK regions, which the clone lacks, come from the target.
fn preload(
    regions: &[Region],
    target_memory: &MemoryReader,
    child_memory: &MemoryReader,
) -> Result<Vec<Preloaded>, CowError> {
    let mut preloaded = Vec::new();
    for region in regions {
        let m = &region.mapping;
        let in_clone = m.shared && !m.has_vm_flag(b"dc");
        let source = if in_clone {
            child_memory
        } else {
            target_memory
        };
        let mut bytes = vec![0u8; region.dumped_len() as usize];
        let mut unreadable = Vec::new();
        source.read(region.mapping.start, &mut bytes, &mut unreadable)?;
        preloaded.push(Preloaded {
            start: region.mapping.start,
            bytes,
            unreadable,
        });
    }
    Ok(preloaded)
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
