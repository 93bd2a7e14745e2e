//! Keeping a target still without ptrace (`--no-ptrace`), for a process that
//! another tool already traces or that must not see a tracer: the cgroup v2
//! freezer when the target is alone in its cgroup, else SIGSTOP, or nothing
//! at all. Whatever this guard changed it undoes on release and on drop; a
//! stop or freeze it found in place it leaves in place.
//!
//! Without ptrace the registers are only what `/proc/PID/task/TID/syscall`
//! shows of a thread that is not running (see
//! [`crate::arch::registers_from_syscall_state`]).

use crate::cancel::CancelToken;
use crate::process::freeze::{FreezeError, check_target, explain_permission_denied};
use crate::process::info;
use crate::process::memory::{MemoryError, MemoryReader};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How the target was kept still.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnattachedMethod {
    /// The target's own cgroup (v2), which holds nothing else, was frozen.
    CgroupFreezer { cgroup: PathBuf },
    /// coresnap sent SIGSTOP and sends SIGCONT when done.
    Sigstop,
    /// Every thread was already stopped (a job-control stop, a debugger, a
    /// frozen cgroup); it is left so.
    AlreadyStopped,
    /// `--no-freeze`: the target ran on while it was read.
    NotFrozen,
}

impl UnattachedMethod {
    /// The name the manifest and the report use.
    pub fn name(&self) -> &'static str {
        match self {
            UnattachedMethod::CgroupFreezer { .. } => "cgroup-freezer",
            UnattachedMethod::Sigstop => "sigstop",
            UnattachedMethod::AlreadyStopped => "already-stopped",
            UnattachedMethod::NotFrozen => "none",
        }
    }
}

/// A target held still (or not) without ptrace. Dropping it, or
/// [`release`](UnattachedFreeze::release), undoes what it did.
pub struct UnattachedFreeze {
    pid: i32,
    tids: Vec<i32>,
    method: UnattachedMethod,
    /// The target's cgroup v2 directory, if it has one that can be frozen.
    cgroup: Option<PathBuf>,
    was_stopped: bool,
    started: Instant,
    undone: bool,
}

/// What the live guards of this process would undo, for an exit that
/// cannot wait for them: see [`undo_before_exit`].
static TO_UNDO: Mutex<Vec<(i32, UnattachedMethod)>> = Mutex::new(Vec::new());

fn to_undo() -> std::sync::MutexGuard<'static, Vec<(i32, UnattachedMethod)>> {
    TO_UNDO
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Undoes every SIGSTOP and cgroup freeze this process still holds. For an
/// exit forced while a dump is stuck (no destructor runs then): the kernel
/// lets go of ptrace stops by itself, but not of these.
pub fn undo_before_exit() {
    for (pid, method) in std::mem::take(&mut *to_undo()) {
        undo_method(pid, &method);
    }
}

fn undo_method(pid: i32, method: &UnattachedMethod) {
    match method {
        UnattachedMethod::CgroupFreezer { cgroup } => {
            let _ = write_freeze(cgroup, false);
        }
        // ESRCH: the target is gone, nothing to resume.
        UnattachedMethod::Sigstop => continue_unless_stopped_by_others(pid),
        UnattachedMethod::AlreadyStopped | UnattachedMethod::NotFrozen => {}
    }
}

/// The signals whose default action stops the process.
const STOP_SIGNALS: [i32; 4] = [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];

/// A `/proc/PID/status` signal-mask field (hex, bit N-1 for signal N).
fn signal_set(status: &str, key: &str) -> u64 {
    info::status_field(status, key)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}

/// Undoes coresnap's SIGSTOP, unless somebody else sent a stop signal
/// meanwhile: SIGCONT would discard it (the kernel drops pending stop
/// signals on SIGCONT), so a target that was to stop stays stopped. A stop
/// signal the target catches is sent again after the SIGCONT, for its
/// handler.
fn continue_unless_stopped_by_others(pid: i32) {
    let PendingStops { signals, will_stop } = pending_stops(pid);
    if will_stop {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    let pending_stops = signals;
    for signal in pending_stops {
        if let Ok(signal) = Signal::try_from(signal) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// The stop signals pending for a process (shared or for any thread).
struct PendingStops {
    signals: Vec<i32>,
    /// One of them will stop it: SIGSTOP, or another it does not catch.
    will_stop: bool,
}

fn pending_stops(pid: i32) -> PendingStops {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut pending = signal_set(&status, "ShdPnd:");
    for tid in info::thread_ids(pid).unwrap_or_default() {
        let task = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"));
        pending |= signal_set(&task.unwrap_or_default(), "SigPnd:");
    }
    let caught = signal_set(&status, "SigCgt:");
    let bit = |signal: i32| 1u64 << (signal - 1);
    let signals: Vec<i32> = STOP_SIGNALS
        .into_iter()
        .filter(|&signal| pending & bit(signal) != 0)
        .collect();
    let will_stop = signals
        .iter()
        .any(|&signal| signal == libc::SIGSTOP || caught & bit(signal) == 0);
    PendingStops { signals, will_stop }
}

/// Somebody else's group stop has begun: a stop signal that will stop the
/// process is pending, or some thread has already stopped while others
/// have not yet. coresnap's own SIGSTOP would merge with it, and the
/// SIGCONT that undoes coresnap's would then undo theirs too.
fn stop_under_way(pid: i32) -> bool {
    pending_stops(pid).will_stop
        || info::thread_ids(pid)
            .unwrap_or_default()
            .into_iter()
            .any(|tid| matches!(info::thread_progress(pid, tid), Some(('T', _))))
}

impl UnattachedFreeze {
    /// Holds `pid` still: through its cgroup if it is alone in one that can
    /// be frozen, else with SIGSTOP; with `freeze` false, not at all.
    pub fn freeze(
        pid: i32,
        freeze: bool,
        timeout: Duration,
        cancel: &CancelToken,
    ) -> Result<UnattachedFreeze, FreezeError> {
        check_target(pid)?;
        let started = Instant::now();
        let was_stopped = info::process_state(pid) == Some('T');
        let cgroup = cgroup_dir(pid);
        let mut guard = UnattachedFreeze {
            pid,
            tids: Vec::new(),
            method: UnattachedMethod::NotFrozen,
            cgroup: cgroup.clone(),
            was_stopped,
            started,
            undone: false,
        };
        // A stop or freeze somebody else started, even one still settling
        // (a thread in D state has not reached its group stop yet), is
        // theirs: coresnap waits for it and never undoes it.
        let held = threads_held(pid);
        if held
            || was_stopped
            || stop_under_way(pid)
            || cgroup.as_deref().is_some_and(cgroup_freeze_requested)
        {
            guard.method = UnattachedMethod::AlreadyStopped;
            if !held {
                guard.wait_until_still(timeout, cancel)?;
            }
        } else if freeze {
            guard.started = Instant::now();
            guard.method = match cgroup.filter(|dir| holds_only(dir, pid)) {
                Some(cgroup) if write_freeze(&cgroup, true).is_ok() => {
                    UnattachedMethod::CgroupFreezer { cgroup }
                }
                _ => {
                    kill(Pid::from_raw(pid), Signal::SIGSTOP).map_err(|errno| match errno {
                        Errno::EPERM => FreezeError::PermissionDenied {
                            pid,
                            tid: pid,
                            why: explain_permission_denied(pid),
                        },
                        _ => FreezeError::ProcessExited { pid },
                    })?;
                    UnattachedMethod::Sigstop
                }
            };
            to_undo().push((pid, guard.method.clone()));
            guard.wait_until_still(timeout, cancel)?;
        }
        guard.tids = info::thread_ids(pid).map_err(|_| FreezeError::ProcessExited { pid })?;
        Ok(guard)
    }

    /// Checks, before anything is done to the target, that coresnap may
    /// read its memory at all (the kernel applies the same rules as to
    /// attaching), by opening it.
    pub fn check_memory_readable(pid: i32) -> Result<(), FreezeError> {
        check_target(pid)?;
        MemoryReader::open(pid)
            .map(drop)
            .map_err(|error| match error {
                MemoryError::Open { source, .. }
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    FreezeError::PermissionDenied {
                        pid,
                        tid: pid,
                        why: explain_permission_denied(pid),
                    }
                }
                _ => FreezeError::ProcessExited { pid },
            })
    }

    fn wait_until_still(&self, timeout: Duration, cancel: &CancelToken) -> Result<(), FreezeError> {
        let pid = self.pid;
        let deadline = Instant::now() + timeout;
        loop {
            let still = match &self.method {
                UnattachedMethod::CgroupFreezer { cgroup } => cgroup_frozen(cgroup),
                _ => threads_held(pid) || self.cgroup.as_deref().is_some_and(cgroup_frozen),
            };
            if still {
                return Ok(());
            }
            if info::process_state(pid).is_none() {
                return Err(FreezeError::ProcessExited { pid });
            }
            if let Some(signal) = cancel.signal() {
                return Err(FreezeError::Interrupted { signal });
            }
            if Instant::now() >= deadline {
                let (tid, state) = info::thread_ids(pid)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|tid| Some((tid, info::thread_state(pid, tid)?)))
                    .find(|(_, state)| !matches!(state, 'T' | 't'))
                    .unwrap_or((pid, '?'));
                return Err(FreezeError::Timeout {
                    pid,
                    tid,
                    state,
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The threads seen once the target was still.
    pub fn tids(&self) -> &[i32] {
        &self.tids
    }

    pub fn method(&self) -> &UnattachedMethod {
        &self.method
    }

    /// The target was in a group-stop (state T) before coresnap came.
    pub fn was_stopped(&self) -> bool {
        self.was_stopped
    }

    /// Undoes the freeze and returns how long the target was held.
    pub fn release(mut self) -> Duration {
        self.undo();
        match self.method {
            UnattachedMethod::NotFrozen => Duration::ZERO,
            _ => self.started.elapsed(),
        }
    }

    fn undo(&mut self) {
        if std::mem::replace(&mut self.undone, true) {
            return;
        }
        to_undo().retain(|(pid, _)| *pid != self.pid);
        undo_method(self.pid, &self.method);
    }
}

impl Drop for UnattachedFreeze {
    fn drop(&mut self) {
        self.undo();
    }
}

/// Every thread is stopped, in a group-stop (T) or held by a tracer (t),
/// and stays so: a thread under strace passes through a ptrace-stop ('t')
/// at every system call, so a thread counts as held only if it is seen
/// stopped twice, 2 ms apart, without having run in between.
fn threads_held(pid: i32) -> bool {
    let sample = || -> Option<Vec<(i32, u64)>> {
        let tids = info::thread_ids(pid).ok()?;
        tids.into_iter()
            .map(|tid| match info::thread_progress(pid, tid)? {
                // An exiting thread (Z, X) runs no more user code either.
                ('T' | 't' | 'Z' | 'X', switches) => Some((tid, switches)),
                _ => None,
            })
            .collect()
    };
    let Some(first) = sample().filter(|s| !s.is_empty()) else {
        return false;
    };
    std::thread::sleep(Duration::from_millis(2));
    sample() == Some(first)
}

/// The target's cgroup v2 directory (not the root, which cannot be frozen).
fn cgroup_dir(pid: i32) -> Option<PathBuf> {
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = membership.lines().find_map(|l| l.strip_prefix("0::"))?;
    if path == "/" || path.is_empty() {
        return None;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mounts(&mountinfo)
        .into_iter()
        .filter_map(|(root, mount_point)| {
            let relative = Path::new(path).strip_prefix(&root).ok()?;
            Some(mount_point.join(relative))
        })
        .find(|dir| dir.join("cgroup.freeze").exists())
}

/// Freezing `cgroup` freezes `pid` and nothing else: no other process in
/// it, no child cgroups, and an ordinary (domain) cgroup, since in a
/// threaded one some of the process's threads may sit in other cgroups.
fn holds_only(cgroup: &Path, pid: i32) -> bool {
    let domain = std::fs::read_to_string(cgroup.join("cgroup.type"))
        .is_ok_and(|kind| kind.trim() == "domain");
    let alone = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .is_ok_and(|procs| procs.split_whitespace().eq([pid.to_string().as_str()]));
    let has_children = std::fs::read_dir(cgroup).map_or(true, |entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    });
    domain && alone && !has_children
}

/// (root inside the hierarchy, mount point) of each cgroup2 mount, from
/// `/proc/self/mountinfo` (fields 4 and 5; the file system type follows
/// the ` - ` separator).
fn cgroup2_mounts(mountinfo: &str) -> Vec<(PathBuf, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            if fs.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = mount.split_whitespace().skip(3);
            let root = unescape_mount_field(fields.next()?);
            let mount_point = unescape_mount_field(fields.next()?);
            Some((PathBuf::from(root), PathBuf::from(mount_point)))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn write_freeze(cgroup: &Path, frozen: bool) -> std::io::Result<()> {
    std::fs::write(cgroup.join("cgroup.freeze"), if frozen { "1" } else { "0" })
}

/// Somebody froze the cgroup, or asked for it (freezing takes a moment).
fn cgroup_freeze_requested(cgroup: &Path) -> bool {
    cgroup_frozen(cgroup)
        || std::fs::read_to_string(cgroup.join("cgroup.freeze")).is_ok_and(|v| v.trim() == "1")
}

fn cgroup_frozen(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|l| l.trim() == "frozen 1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts_with_their_roots() {
        let mountinfo = "\
25 30 0:22 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
26 30 0:23 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
27 30 0:23 /jobs /mnt/my\\040cgroups rw - cgroup2 none rw
";
        assert_eq!(
            cgroup2_mounts(mountinfo),
            vec![
                (PathBuf::from("/"), PathBuf::from("/sys/fs/cgroup/unified")),
                (PathBuf::from("/jobs"), PathBuf::from("/mnt/my cgroups")),
            ]
        );
    }
}
