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

/// The process (thread group) that `tid` belongs to: `Tgid` in
/// `/proc/TID/status`; equal to `tid` for a process's main thread.
pub fn thread_group(tid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status_field(&text, "Tgid:")?.parse().ok()
}

/// State letter of one thread and how many times it has been switched out
/// (voluntary + involuntary context switches), from one read of
/// `/proc/PID/task/TID/status`. A thread that stays in D state with the
/// same count has not woken up since the last look.
pub fn thread_progress(pid: i32, tid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let state = status_field(&text, "State:")?.chars().next()?;
    let voluntary: u64 = status_field(&text, "voluntary_ctxt_switches:")?
        .parse()
        .ok()?;
    let involuntary: u64 = status_field(&text, "nonvoluntary_ctxt_switches:")?
        .parse()
        .ok()?;
    Some((state, voluntary + involuntary))
}

/// The value after `key` (e.g. `"PPid:"`) in the text of a
/// `/proc/PID/status` file, trimmed.
pub fn status_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .map(str::trim)
}

/// The path of the file mapped at `start..end`, byte for byte as the kernel
/// has it (`d_path`, with ` (deleted)` for an unlinked file), read from the
/// `/proc/PID/map_files` link (needs CAP_SYS_ADMIN). `/proc/PID/smaps` prints
/// a newline in a name as `\012` and leaves a backslash alone, so a name that
/// shows `\012` there is ambiguous; this is the way to the real one.
pub fn mapped_file_path(pid: i32, start: u64, end: u64) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStringExt;
    let link = std::fs::read_link(format!("/proc/{pid}/map_files/{start:x}-{end:x}")).ok()?;
    Some(link.into_os_string().into_vec())
}

/// Thread ids in the order `/proc/PID/task` lists them: the kernel's list
/// of the thread group, main thread first, then in order of creation. It
/// is the order in which `gdb -p` numbers the threads, and it is not
/// ascending once thread ids have wrapped around `pid_max`.
pub fn thread_ids(pid: i32) -> std::io::Result<Vec<i32>> {
    let tids = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
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

/// What `/proc/PID/task/TID/syscall` shows of a thread: for one that is
/// not running, its stack pointer and program counter, and if it is inside
/// a system call, the call's number and arguments. It is all that can be
/// known of a thread's registers without ptrace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallState {
    Running,
    Blocked {
        /// Number and the six argument registers, if in a system call.
        syscall: Option<(u64, [u64; 6])>,
        sp: u64,
        pc: u64,
    },
}

pub fn thread_syscall(pid: i32, tid: i32) -> Option<SyscallState> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    parse_syscall_file(&text)
}

/// `running`, `-1 SP PC`, or `NR ARG1 .. ARG6 SP PC` (numbers in hex but
/// the first), as `proc_pid_syscall` prints them.
fn parse_syscall_file(text: &str) -> Option<SyscallState> {
    let text = text.trim();
    if text == "running" {
        return Some(SyscallState::Running);
    }
    let mut fields = text.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let hex: Vec<u64> = fields
        .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .collect::<Option<_>>()?;
    match (nr, hex.as_slice()) {
        // Any negative number: not in a system call (-1), or a call with
        // a bad number held at its entry.
        (..0, &[sp, pc]) => Some(SyscallState::Blocked {
            syscall: None,
            sp,
            pc,
        }),
        (0.., &[a, b, c, d, e, f, sp, pc]) => Some(SyscallState::Blocked {
            syscall: Some((nr as u64, [a, b, c, d, e, f])),
            sp,
            pc,
        }),
        _ => None,
    }
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
    /// The same ids as the process sees them in its own pid namespace,
    /// which is what the kernel writes into its cores (and what libthread_db
    /// finds in the process's memory); equal to the fields above unless the
    /// process is in a container.
    pub inside: ProcessIds,
}

/// pid, parent, process group and session ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessIds {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub sid: i32,
}

/// The last (innermost) number of an `NS*` line of a status file: the id in
/// the process's own pid namespace; and how many namespaces deep it is.
fn innermost(status: &str, key: &str) -> Option<(i32, usize)> {
    let values: Vec<i32> = status_field(status, key)?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    Some((*values.last()?, values.len()))
}

/// `host` seen from inside the pid namespace of `pid` (see
/// [`ProcessInfo::inside`]); the parent is 0 when it lives outside it, as
/// the kernel reports it.
fn ids_inside(pid: i32, host: ProcessIds) -> ProcessIds {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return host;
    };
    let Some((inner_pid, depth)) = innermost(&status, "NSpid:") else {
        return host;
    };
    let ppid = std::fs::read_to_string(format!("/proc/{}/status", host.ppid))
        .ok()
        .and_then(|parent| {
            let ids: Vec<i32> = status_field(&parent, "NSpid:")?
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            ids.get(depth - 1).copied()
        })
        .unwrap_or(0);
    ProcessIds {
        pid: inner_pid,
        ppid,
        pgrp: innermost(&status, "NSpgid:").map_or(host.pgrp, |(id, _)| id),
        sid: innermost(&status, "NSsid:").map_or(host.sid, |(id, _)| id),
    }
}

/// `tid` as the process sees it in its own pid namespace.
pub fn tid_inside(pid: i32, tid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()
        .and_then(|status| innermost(&status, "NSpid:"))
        .map_or(tid, |(id, _)| id)
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
    let host = ProcessIds {
        pid,
        ppid: stat.ppid,
        pgrp: stat.pgrp,
        sid: stat.session,
    };
    Ok(ProcessInfo {
        pid,
        ppid: stat.ppid,
        pgrp: stat.pgrp,
        sid: stat.session,
        inside: ids_inside(pid, host),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// A file whose name holds a real backslash followed by "012" and one
    /// with a real newline: smaps shows both as `\012`, map_files tells them
    /// apart.
    #[test]
    fn mapped_file_path_is_raw() {
        use crate::test_skip::{Capability, capability, unmet};
        if unmet(capability(
            Capability::SysAdmin,
            "to read /proc/PID/map_files",
        )) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        for name in [&b"back\\012slash"[..], &b"new\nline"[..]] {
            let path = dir.path().join(std::ffi::OsStr::from_bytes(name));
            std::fs::write(&path, [1u8; 4096]).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: a fresh read-only private mapping of our own file,
            // unmapped below; nothing else refers to it.
            let addr = unsafe {
                use std::os::fd::AsRawFd;
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(addr, libc::MAP_FAILED);
            let start = addr as u64;
            let got = mapped_file_path(me, start, start + 4096);
            // SAFETY: unmapping exactly what was mapped above.
            unsafe { libc::munmap(addr, 4096) };
            assert_eq!(got.as_deref(), Some(path.as_os_str().as_bytes()));
        }
    }

    #[test]
    fn parses_the_three_shapes_of_the_syscall_file() {
        assert_eq!(parse_syscall_file("running\n"), Some(SyscallState::Running));
        assert_eq!(
            parse_syscall_file("-1 0x7ffc0de0 0x401136\n"),
            Some(SyscallState::Blocked {
                syscall: None,
                sp: 0x7ffc0de0,
                pc: 0x401136
            })
        );
        assert_eq!(
            parse_syscall_file("230 0x0 0x0 0x7ffd1000 0x0 0x0 0x8 0x7ffd0ff8 0x7f00aa01\n"),
            Some(SyscallState::Blocked {
                syscall: Some((230, [0, 0, 0x7ffd1000, 0, 0, 8])),
                sp: 0x7ffd0ff8,
                pc: 0x7f00aa01
            })
        );
        assert_eq!(
            parse_syscall_file("-2 0x10 0x20"),
            Some(SyscallState::Blocked {
                syscall: None,
                sp: 0x10,
                pc: 0x20
            })
        );
        assert_eq!(parse_syscall_file("7 0x1"), None);
    }

    /// A thread of this test blocked reading a pipe shows read(2) with the
    /// pipe's descriptor and buffer as its first arguments.
    #[test]
    fn a_blocked_thread_shows_its_system_call() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let (mut reader, mut writer) = std::io::pipe().unwrap();
        let fd = reader.as_raw_fd() as u64;
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let blocked = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let mut byte = [0u8; 1];
            reader.read_exact(&mut byte).unwrap();
        });
        let tid = tid_rx.recv().unwrap();
        let me = std::process::id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let state = loop {
            match thread_syscall(me, tid) {
                Some(SyscallState::Blocked {
                    syscall: Some((nr, args)),
                    ..
                }) if nr == libc::SYS_read as u64 => break args,
                _ if std::time::Instant::now() > deadline => panic!("thread never blocked in read"),
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        assert_eq!(state[0], fd);
        assert_eq!(state[2], 1, "reads one byte");
        writer.write_all(b"x").unwrap();
        blocked.join().unwrap();
    }
}
