//! Facts about the target read from `/proc`: identity, state, threads,
//! signals, times, auxv. Raw files are read as bytes where their content is
//! copied into the core unchanged.

use procfs::process::{Process, Stat};
use std::time::Duration;

/// The few `stat` fields the freeze checks need.
pub struct BasicStat {
    pub state: char,
    pub flags: u64,
}

pub fn read_stat(pid: i32) -> Option<BasicStat> {
    let stat = Process::new(pid).ok()?.stat().ok()?;
    Some(BasicStat {
        state: stat.state,
        flags: u64::from(stat.flags),
    })
}

pub fn process_state(pid: i32) -> Option<char> {
    read_stat(pid).map(|s| s.state)
}

pub fn thread_state(pid: i32, tid: i32) -> Option<char> {
    Some(
        Process::new(pid)
            .ok()?
            .task_from_tid(tid)
            .ok()?
            .stat()
            .ok()?
            .state,
    )
}

/// Thread ids as listed in `/proc/PID/task`, ascending.
pub fn thread_ids(pid: i32) -> std::io::Result<Vec<i32>> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// `TracerPid` of one thread (0 when untraced).
pub fn tracer_of(pid: i32, tid: i32) -> Option<i32> {
    Some(
        Process::new(pid)
            .ok()?
            .task_from_tid(tid)
            .ok()?
            .status()
            .ok()?
            .tracerpid,
    )
}

pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Why PTRACE_SEIZE said EPERM, in words a user can act on.
pub fn explain_permission_denied(pid: i32) -> String {
    let mut reasons = Vec::new();
    if let Ok(scope) = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        let scope = scope.trim();
        let meaning = match scope {
            "1" => Some(
                "only a parent may trace its descendants; run coresnap as root or with CAP_SYS_PTRACE, or set it to 0",
            ),
            "2" => Some("only processes with CAP_SYS_PTRACE may trace; run coresnap as root"),
            "3" => Some("ptrace is disabled until reboot"),
            _ => None,
        };
        if let Some(meaning) = meaning {
            reasons.push(format!("kernel.yama.ptrace_scope is {scope}: {meaning}"));
        }
    }
    if let Ok(status) = Process::new(pid).and_then(|p| p.status()) {
        let me = nix::unistd::Uid::effective().as_raw();
        if me != 0 && status.ruid != me {
            reasons.push(format!("the process belongs to uid {} and coresnap runs as uid {me}; run it as that user or as root", status.ruid));
        }
    }
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        && text
            .lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1'))
    {
        reasons.push("the process runs with no_new_privs".to_string());
    }
    if reasons.is_empty() {
        reasons.push("the kernel refused PTRACE_SEIZE (missing CAP_SYS_PTRACE, a non-dumpable target, or a security module); run coresnap as root".into());
    }
    reasons.join("; ")
}

/// Process-wide identity and state, for NT_PRPSINFO and the prstatus ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub sid: i32,
    pub uid: u32,
    pub gid: u32,
    /// `comm`, at most 15 bytes.
    pub comm: Vec<u8>,
    /// Raw `/proc/PID/cmdline` (NUL-separated).
    pub cmdline: Vec<u8>,
    /// State letter before coresnap stopped it (R, S, D, T...).
    pub state: u8,
    pub nice: i8,
    /// The task's `flags` word.
    pub flags: u64,
    /// Clock ticks since boot when the process started: with the pid it
    /// identifies the process even after the pid is reused.
    pub start_time_ticks: u64,
}

/// Per-thread facts for NT_PRSTATUS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadFacts {
    pub signals_pending: u64,
    pub signals_blocked: u64,
    pub user_time: Duration,
    pub system_time: Duration,
    pub children_user_time: Duration,
    pub children_system_time: Duration,
}

fn ticks(t: i64) -> Duration {
    let hz = procfs::ticks_per_second().max(1);
    let t = t.max(0) as u64;
    Duration::from_secs(t / hz) + Duration::from_nanos((t % hz) * 1_000_000_000 / hz)
}

/// Reads the process-wide facts. `state_before` is the state observed
/// before the freeze (after it, every thread reads as traced).
pub fn process_info(pid: i32, state_before: u8) -> std::io::Result<ProcessInfo> {
    let process = Process::new(pid).map_err(to_io)?;
    let stat: Stat = process.stat().map_err(to_io)?;
    let status = process.status().map_err(to_io)?;
    Ok(ProcessInfo {
        pid,
        ppid: stat.ppid,
        pgrp: stat.pgrp,
        sid: stat.session,
        uid: status.ruid,
        gid: status.rgid,
        comm: std::fs::read(format!("/proc/{pid}/comm"))?
            .strip_suffix(b"\n")
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
        cmdline: std::fs::read(format!("/proc/{pid}/cmdline"))?,
        state: state_before,
        nice: stat.nice.clamp(-128, 127) as i8,
        flags: u64::from(stat.flags),
        start_time_ticks: stat.starttime,
    })
}

pub fn thread_facts(pid: i32, tid: i32) -> std::io::Result<ThreadFacts> {
    let task = Process::new(pid)
        .and_then(|p| p.task_from_tid(tid))
        .map_err(to_io)?;
    let stat = task.stat().map_err(to_io)?;
    let status = task.status().map_err(to_io)?;
    Ok(ThreadFacts {
        signals_pending: status.sigpnd | status.shdpnd,
        signals_blocked: status.sigblk,
        user_time: ticks(stat.utime as i64),
        system_time: ticks(stat.stime as i64),
        children_user_time: ticks(stat.cutime),
        children_system_time: ticks(stat.cstime),
    })
}

/// `/proc/PID/auxv` exactly as the kernel gives it: gdb needs the order and
/// every entry up to AT_NULL.
pub fn auxv(pid: i32) -> std::io::Result<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/auxv"))
}

pub fn coredump_filter(pid: i32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/coredump_filter")).ok()?;
    u32::from_str_radix(text.trim(), 16).ok()
}

pub fn smaps(pid: i32) -> std::io::Result<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/smaps"))
}

fn to_io(e: procfs::ProcError) -> std::io::Error {
    match e {
        procfs::ProcError::NotFound(_) => std::io::Error::from(std::io::ErrorKind::NotFound),
        procfs::ProcError::PermissionDenied(_) => {
            std::io::Error::from(std::io::ErrorKind::PermissionDenied)
        }
        procfs::ProcError::Io(e, _) => e,
        other => std::io::Error::other(other.to_string()),
    }
}
