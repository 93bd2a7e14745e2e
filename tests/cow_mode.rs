//! `--mode cow`: the core shows the target as it was at the freeze even
//! though the target runs on during the copy, the clone never outlives the
//! dump, and the target keeps its files, sockets and locks.

mod common;

use common::*;
use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

fn children_of(pid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for tid in thread_ids(pid) {
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).unwrap_or_default();
        for child in text
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            let state = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| s.rsplit(") ").next()?.chars().next())
                .unwrap_or('?');
            out.push((child, state));
        }
    }
    out
}

/// The target's open files as `fd -> what it points to`, plus its locks.
fn files_and_locks(pid: i32) -> (Vec<(String, String)>, Vec<String>) {
    let mut fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_link(e.path()).ok()?.display().to_string(),
            ))
        })
        .collect();
    fds.sort();
    let locks = std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(&pid.to_string()))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .collect();
    (fds, locks)
}

fn start_counter(scratch: &Scratch, extra: Option<&str>) -> Target {
    let exe = build(Program::Counter);
    let lock = scratch.path().join("counter.lock");
    let mut args: Vec<&OsStr> = vec![lock.as_os_str()];
    if let Some(e) = extra {
        args.push(OsStr::new(e));
    }
    Target::spawn(&exe, &args)
}

/// The counter in memory matches the spinning thread's r12 (captured under
/// the freeze): memory is as it was at the freeze, not later.
#[test]
fn memory_is_the_freeze_instant_while_the_target_runs_on() {
    let scratch = Scratch::new("cow-counter");
    let target = start_counter(&scratch, None);
    let before = files_and_locks(target.pid);
    let core = dump(Dumper::CoresnapCow, target.pid, scratch.path(), &[]);
    assert_running_untraced(target.pid);
    assert!(
        children_of(target.pid).is_empty(),
        "children left: {:?}",
        children_of(target.pid)
    );
    assert_eq!(
        files_and_locks(target.pid),
        before,
        "open files or locks changed"
    );

    let spinner = target.num("spinner");
    let out = run_gdb(
        &target.exe,
        &core,
        &[
            "info threads",
            &format!("x/1gx {}", target.get("dontfork")),
            "thread 2",
            "p/x $r12",
            &format!("x/1gx {}", target.get("counter")),
        ],
    );
    assert!(out.contains(&format!("LWP {spinner}")), "{out}");
    assert!(
        out.contains("0xd0f0d0f0d0f0d0f0"),
        "the MADV_DONTFORK page must be in the core:\n{out}"
    );
    let r12 = out
        .lines()
        .find_map(|l| {
            l.split_once("= 0x")
                .map(|(_, v)| u64::from_str_radix(v.trim(), 16).unwrap())
        })
        .expect("r12 printed");
    let memory = parse_x_words(out.lines().last().unwrap()).unwrap()[0];
    assert!(
        memory == r12 || memory + 1 == r12,
        "counter in memory {memory} does not match r12 {r12} at the freeze"
    );
    // The target really ran on during the dump and after it.
    let mem = std::fs::File::open(format!("/proc/{}/mem", target.pid)).unwrap();
    let live_counter = || {
        let mut bytes = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&mem, &mut bytes, target.addr("counter"))
            .unwrap();
        u64::from_ne_bytes(bytes)
    };
    assert!(
        wait_until(Duration::from_secs(5), || live_counter() > memory + 1000),
        "the counter did not move on"
    );
}

/// A target under seccomp is not cloned: with --no-fallback the dump fails
/// and the target is untouched; without it, the dump happens in stop mode.
#[test]
fn seccomp_target_falls_back_or_fails_cleanly() {
    let scratch = Scratch::new("cow-seccomp");
    let target = start_counter(&scratch, Some("seccomp"));
    let prefix = scratch.path().join("strict");
    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.args(["--mode", "cow", "--no-fallback", "-o"])
        .arg(&prefix)
        .arg(target.pid.to_string());
    let strict = run_with_timeout(&mut cmd, DUMP_TIMEOUT, true);
    assert!(!strict.success(), "{}", strict.describe());
    assert!(
        strict.stdout.contains("seccomp") && strict.stdout.contains("--mode cow"),
        "{}",
        strict.stdout
    );
    assert!(
        std::fs::read_dir(scratch.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("strict"))
    );
    assert_running_untraced(target.pid);
    assert!(children_of(target.pid).is_empty());

    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.args(["--mode", "cow", "-o"])
        .arg(scratch.path().join("lenient"))
        .arg(target.pid.to_string());
    let lenient = run_with_timeout(&mut cmd, DUMP_TIMEOUT, true);
    assert!(lenient.success(), "{}", lenient.describe());
    assert!(
        lenient.stdout.contains("dumped in stop mode"),
        "{}",
        lenient.stdout
    );
    assert_running_untraced(target.pid);
    assert_loads_in_gdb(
        target.pid,
        &scratch.path().join(format!("lenient.{}", target.pid)),
        &thread_ids(target.pid),
    );
}

/// SIGKILL of coresnap in the middle of a copy-on-write dump: the clone dies
/// with it (PTRACE_O_EXITKILL) and the target runs on, untraced.
#[test]
fn sigkill_mid_dump_kills_the_clone() {
    let exe = build(Program::Sparse);
    // 512 MiB touched densely: the copy takes long enough to be interrupted.
    let target = Target::spawn(
        &exe,
        &[OsStr::new("16"), OsStr::new("4"), OsStr::new("512")],
    );
    wait_threads_sleeping(target.pid, &[]);
    let scratch = Scratch::new("cow-kill");
    let mut child = Command::new(Dumper::Coresnap.program())
        .args(["--mode", "cow", "--no-fallback", "-q", "-o"])
        .arg(scratch.path().join("core"))
        .arg(target.pid.to_string())
        .spawn()
        .unwrap();
    // Wait until the clone exists and the target has been released (the
    // copy from the clone is under way), then kill coresnap.
    let saw_clone = wait_until(Duration::from_secs(20), || {
        !children_of(target.pid).is_empty()
            && all_task_status(target.pid).iter().all(|s| s.tracer == 0)
    });
    let still_running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let status = child.wait().expect("wait for coresnap");
    assert!(saw_clone, "no clone appeared");
    // Killed, not finished: otherwise this tested a dump that had ended.
    // (Had it exited between the two looks, the status shows that too.)
    assert!(
        still_running && status.signal() == Some(libc::SIGKILL),
        "coresnap was not running when it was killed (status {status}): the dump \
         finished before the test could interrupt it"
    );
    assert_running_untraced(target.pid);
    // The clone is dead: gone, or a zombie entry holding no memory until the
    // target reaps it.
    assert!(
        wait_until(Duration::from_secs(5), || children_of(target.pid)
            .iter()
            .all(|&(_, state)| state == 'Z')),
        "clone still alive: {:?}",
        children_of(target.pid)
    );
}
