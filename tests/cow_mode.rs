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

// ---------------------------------------------------------------------------
// The copy's cost in memory: the clone is the OOM killer's first pick, a
// lost clone is reported as such and the dump redone in stop mode.
// ---------------------------------------------------------------------------

/// Starts `cow_hostile MIB MODE` and waits for its threads to settle.
fn start_hostile(mib: u64, mode: &str) -> Target {
    let exe = build(Program::CowHostile);
    Target::spawn(&exe, &[OsStr::new(&mib.to_string()), OsStr::new(mode)])
}

/// gdb reads the target's pattern (word i = tag | i) at the start, the
/// middle and the end of its buffer in `core`.
fn assert_pattern_in_core(target: &Target, core: &std::path::Path) {
    let buf = target.addr("buf");
    let len = target.num("buf_len") as u64;
    let tag = parse_hex(target.get("tag")).unwrap();
    let probes: Vec<u64> = vec![0, len / 2, len - 8];
    let commands: Vec<String> = probes
        .iter()
        .map(|offset| format!("x/1gx {:#x}", buf + offset))
        .collect();
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let (_, sections) = run_gdb_split(&target.exe, core, &commands);
    for (offset, section) in probes.iter().zip(&sections) {
        assert_eq!(
            parse_x_words(section),
            Ok(vec![tag | (offset / 8)]),
            "word at buf+{offset:#x} in {}",
            core.display()
        );
    }
}

fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .expect("oom_kill in /proc/vmstat")
}

fn coresnap_cow(target: &Target, prefix: &std::path::Path, extra: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.args(["--mode", "cow"])
        .args(extra)
        .arg("-o")
        .arg(prefix)
        .arg(target.pid.to_string());
    run_with_timeout(&mut cmd, DUMP_TIMEOUT, true)
}

fn core_path(prefix: &std::path::Path, pid: i32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}.{pid}", prefix.display()))
}

fn manifest_of(core: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(format!("{}.json", core.display())).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A target that SIGKILLs its own children kills the clone: coresnap says
/// so (not that the target exited) and dumps in stop mode; with
/// --no-fallback it fails saying the same and leaves the target running.
#[test]
fn a_clone_killed_by_the_target_is_reported_and_the_dump_redone_in_stop_mode() {
    let target = start_hostile(64, "killchildren");
    let scratch = Scratch::new("cow-clone-killed");
    let strict = scratch.path().join("strict");
    let failed = coresnap_cow(&target, &strict, &["--no-fallback"]);
    assert!(!failed.success(), "{}", failed.describe());
    let said = &failed.stdout;
    assert!(
        said.contains("clone") && said.contains("killed by SIGKILL"),
        "{said}"
    );
    assert!(
        said.contains("not by the out-of-memory killer") && said.contains("still running"),
        "{said}"
    );
    assert!(!said.contains("exited"), "{said}");
    assert!(!core_path(&strict, target.pid).exists());
    assert_running_untraced(target.pid);

    let lenient = scratch.path().join("lenient");
    let done = coresnap_cow(&target, &lenient, &[]);
    assert!(done.success(), "{}", done.describe());
    assert!(
        done.stdout.contains("killed by SIGKILL") && done.stdout.contains("dumped in stop mode"),
        "{}",
        done.stdout
    );
    assert_running_untraced(target.pid);
    let core = core_path(&lenient, target.pid);
    assert_loads_in_gdb(target.pid, &core, &thread_ids(target.pid));
    assert_pattern_in_core(&target, &core);
    let manifest = manifest_of(&core);
    assert_eq!(manifest["capture"]["mode"], "stop");
    assert!(
        manifest["capture"]["cow_fallback"]
            .as_str()
            .is_some_and(|why| why.contains("killed by SIGKILL")),
        "{}",
        manifest["capture"]
    );
}

/// Watched from outside while the dump runs: the clone's oom_score_adj is
/// 1000 (the out-of-memory killer's first pick) and the target's own is
/// left as it was.
#[test]
fn the_clone_is_the_out_of_memory_killers_first_pick() {
    let target = start_hostile(128, "idle");
    wait_threads_sleeping(target.pid, &[]);
    let adj_of = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .map(|s| s.trim().to_string())
            .ok()
    };
    let target_adj = adj_of(target.pid).unwrap();
    let scratch = Scratch::new("cow-oom-adj");
    let mut child = Command::new(Dumper::Coresnap.program())
        .args(["--mode", "cow", "--no-fallback", "-q", "-o"])
        .arg(scratch.path().join("core"))
        .arg(target.pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let saw_first_pick = wait_until(Duration::from_secs(30), || {
        for (clone, _) in children_of(target.pid) {
            if let Some(adj) = adj_of(clone) {
                seen.push((clone, adj.clone()));
                if adj == "1000" {
                    return true;
                }
            }
        }
        false
    });
    let status = wait_exit(&mut child, DUMP_TIMEOUT, "coresnap");
    let stderr = take_stderr(&mut child);
    assert!(status.success(), "coresnap failed: {stderr}");
    assert!(
        saw_first_pick,
        "no clone with oom_score_adj 1000 seen; seen: {seen:?}"
    );
    assert_eq!(adj_of(target.pid).unwrap(), target_adj);
    assert_running_untraced(target.pid);
    let core = scratch.path().join(format!("core.{}", target.pid));
    assert_eq!(
        manifest_of(&core)["capture"]["cow"]["clone_oom_score_adj"],
        1000
    );
    assert_pattern_in_core(&target, &core);
}

/// A target rewriting all its memory as fast as it can: with the default
/// cap the dump gives a whole core in either mode and nothing is killed;
/// with a small cap it falls back to stop mode saying why (or, with
/// --no-fallback, fails saying why), and the target runs on.
#[test]
fn a_target_rewriting_its_memory_gets_a_whole_core_or_a_clear_fallback() {
    let target = start_hostile(128, "rewrite");
    let scratch = Scratch::new("cow-rewrite");
    let kills_before = oom_kills();

    let default = scratch.path().join("default");
    let done = coresnap_cow(&target, &default, &[]);
    assert!(done.success(), "{}", done.describe());
    assert!(
        done.stdout.contains("copy-on-write cost: expected")
            || done.stdout.contains("dumped in stop mode"),
        "{}",
        done.stdout
    );
    let core = core_path(&default, target.pid);
    assert_loads_in_gdb(target.pid, &core, &thread_ids(target.pid));
    assert_pattern_in_core(&target, &core);
    let capture = &manifest_of(&core)["capture"];
    if capture["mode"] == "cow" {
        let cost = &capture["cow"];
        assert!(cost["expected_bytes"].as_u64().unwrap() <= cost["cap_bytes"].as_u64().unwrap());
        assert!(cost["duplicated_bytes"].as_u64().is_some(), "{cost}");
    }

    let strict = scratch.path().join("strict");
    let refused = coresnap_cow(
        &target,
        &strict,
        &["--cow-max-copy", "16M", "--no-fallback"],
    );
    assert!(!refused.success(), "{}", refused.describe());
    assert!(
        refused.stdout.contains("--cow-max-copy") && refused.stdout.contains("no core was written"),
        "{}",
        refused.stdout
    );
    assert!(!core_path(&strict, target.pid).exists());
    assert_running_untraced(target.pid);
    assert!(
        wait_until(STATE_TIMEOUT, || children_of(target.pid).is_empty()),
        "clone left behind: {:?}",
        children_of(target.pid)
    );

    let capped = scratch.path().join("capped");
    let fell_back = coresnap_cow(&target, &capped, &["--cow-max-copy", "16M"]);
    assert!(fell_back.success(), "{}", fell_back.describe());
    assert!(
        fell_back.stdout.contains("--cow-max-copy")
            && fell_back.stdout.contains("dumped in stop mode"),
        "{}",
        fell_back.stdout
    );
    let core = core_path(&capped, target.pid);
    assert_pattern_in_core(&target, &core);
    assert_running_untraced(target.pid);
    assert_eq!(oom_kills(), kills_before, "something was killed for memory");
}

/// A memory cgroup for one test, removed when dropped (after the target in
/// it is gone).
struct MemoryCgroup {
    dir: std::path::PathBuf,
    limit_file: &'static str,
}

impl MemoryCgroup {
    /// A child of this process's own memory cgroup (v1 or v2).
    fn create(name: &str) -> Result<MemoryCgroup, Missing> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let v1 = own.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| format!("/sys/fs/cgroup/memory{path}"))
        });
        let (parent, limit_file) = match v1 {
            Some(dir) => (dir, "memory.limit_in_bytes"),
            None => {
                let path = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .unwrap_or("/");
                (format!("/sys/fs/cgroup{path}"), "memory.max")
            }
        };
        let dir = std::path::PathBuf::from(parent).join(name);
        let missing = |what: String| {
            Missing::environment(
                format!("a memory cgroup of its own ({what})"),
                "run the tests as root on a host whose memory cgroup controller is mounted and delegated",
            )
        };
        std::fs::create_dir(&dir).map_err(|e| missing(format!("mkdir {}: {e}", dir.display())))?;
        let group = MemoryCgroup { dir, limit_file };
        if !group.dir.join(limit_file).exists() {
            return Err(missing(format!(
                "{} has no {limit_file}",
                group.dir.display()
            )));
        }
        Ok(group)
    }

    fn usage(&self) -> u64 {
        ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .and_then(|s| s.trim().parse().ok())
            .expect("the cgroup's memory usage")
    }

    /// How many processes the cgroup's OOM killer has killed.
    fn oom_kills(&self) -> u64 {
        ["memory.oom_control", "memory.events"]
            .iter()
            .find_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .expect("the cgroup's oom_kill count")
    }

    fn limit(&self, bytes: u64) {
        std::fs::write(self.dir.join(self.limit_file), bytes.to_string()).unwrap();
        // No swap to escape into (absent on v1 without swap accounting).
        let _ = std::fs::write(self.dir.join("memory.swap.max"), "0");
        let _ = std::fs::write(
            self.dir.join("memory.memsw.limit_in_bytes"),
            bytes.to_string(),
        );
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = wait_until(STATE_TIMEOUT, || std::fs::remove_dir(&self.dir).is_ok());
    }
}

/// A target in a memory cgroup with room for 160 MiB more rewrites all of
/// its 256 MiB during a copy-on-write dump with default options: a copy
/// left to run would need up to 256 MiB and run the cgroup out of memory,
/// but the default cap is half of the cgroup's room, so coresnap gives up
/// on the clone in time (before the copy, from the probe, or during it)
/// and dumps in stop mode, saying why; the cgroup's OOM killer never runs.
#[test]
fn in_a_memory_cgroup_the_default_cap_keeps_the_copy_within_the_room_left() {
    let group = match MemoryCgroup::create(&format!("coresnap-test-{}", std::process::id())) {
        Ok(group) => group,
        Err(missing) => {
            skip(&missing);
            return;
        }
    };
    let exe = build(Program::CowHostile);
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" 256 rewrite",
        group.dir.display()
    );
    let mut target = Target::spawn(
        std::path::Path::new("/bin/sh"),
        &[OsStr::new("-c"), OsStr::new(&script), exe.as_os_str()],
    );
    target.exe = exe;
    group.limit(group.usage() + (160 << 20));
    let scratch = Scratch::new("cow-cgroup");
    let prefix = scratch.path().join("core");
    let done = coresnap_cow(&target, &prefix, &[]);
    target.assert_alive();
    assert_eq!(group.oom_kills(), 0, "the cgroup ran out of memory");
    assert!(done.success(), "{}", done.describe());
    assert!(
        done.stdout.contains("--cow-max-copy") && done.stdout.contains("dumped in stop mode"),
        "{}",
        done.stdout
    );
    assert_running_untraced(target.pid);
    let core = core_path(&prefix, target.pid);
    assert_loads_in_gdb(target.pid, &core, &thread_ids(target.pid));
    assert_pattern_in_core(&target, &core);
}

/// What a dump could leave in the target's memory, mapping by mapping: the
/// smaps header (range, permissions, file) with its `Anonymous` and
/// `Private_Dirty` counters. A page the target never wrote that became a
/// private copy shows in both.
fn memory_counters(pid: i32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let header = |line: &str| {
        line.split(' ')
            .next()
            .is_some_and(|range| range.contains('-') && !range.contains(':'))
    };
    smaps
        .lines()
        .filter(|l| header(l) || l.starts_with("Anonymous:") || l.starts_with("Private_Dirty:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The bytes of every readable code mapping of `pid`, by its maps line.
fn code_bytes(pid: i32) -> Vec<(String, Vec<u8>)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    maps.lines()
        .filter(|l| {
            let perms = l.split_whitespace().nth(1).unwrap_or("");
            perms.starts_with("r-x") && !l.ends_with("[vsyscall]")
        })
        .map(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (start, end) = range.split_once('-').unwrap();
            let start = u64::from_str_radix(start, 16).unwrap();
            let end = u64::from_str_radix(end, 16).unwrap();
            let mut bytes = vec![0u8; (end - start) as usize];
            std::os::unix::fs::FileExt::read_exact_at(&mem, &mut bytes, start).unwrap();
            (l.to_string(), bytes)
        })
        .collect()
}

/// A copy-on-write dump leaves no trace in the target: every mapping's
/// `Anonymous` and `Private_Dirty` are what they were, and every code
/// mapping holds the same bytes, after two dumps (the clone is made without
/// writing a byte of the target; a page written for it would stay a
/// private copy, and the second dump would take the whole code mapping).
/// Shared memory the target cannot write (a file opened read-only) is read
/// after the release and the manifest says so; shared memory it can write,
/// even through mprotect, is read under the freeze. Both hold their bytes.
#[test]
fn a_cow_dump_leaves_no_trace_in_the_target() {
    let scratch = Scratch::new("cow-no-trace");
    let files = scratch.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let target = Target::spawn(&build(Program::CowQuiet), &[files.as_os_str()]);
    wait_threads_sleeping(target.pid, &[]);
    let counters = memory_counters(target.pid);
    let code = code_bytes(target.pid);
    let mut manifests = Vec::new();
    // 0x3f selects shared memory, so the target's smaps is read under the
    // freeze; under 0x31 nothing shared is dumped and the clone's smaps is
    // read after the release, where the MADV_WIPEONFORK region shows zeros.
    for (round, filter) in ["0x3f", "0x3f", "0x31"].into_iter().enumerate() {
        let core = dump(
            Dumper::Coresnap,
            target.pid,
            scratch.path(),
            &["--mode", "cow", "--no-fallback", "--filter", filter],
        );
        assert_running_untraced(target.pid);
        assert!(
            children_of(target.pid).is_empty(),
            "children left: {:?}",
            children_of(target.pid)
        );
        let after = memory_counters(target.pid);
        assert!(
            after == counters,
            "smaps counters changed by cow dump {}:\n{}",
            round + 1,
            diff_lines("before", &counters, "after", &after)
        );
        for ((line, bytes), (line_after, bytes_after)) in code.iter().zip(code_bytes(target.pid)) {
            assert_eq!(line, &line_after, "code mappings changed");
            assert!(bytes == &bytes_after, "the bytes of {line} changed");
        }
        let regions: &[(&str, u64)] = match filter {
            "0x3f" => &[
                ("heap", 0x4845),
                ("wipe", 0x5746),
                ("shanon", 0x5348),
                ("rofile", 0x524f),
                ("rwfile", 0x5257),
            ],
            _ => &[("heap", 0x4845), ("wipe", 0x5746)],
        };
        let commands: Vec<String> = regions
            .iter()
            .map(|(name, _)| format!("x/2gx {}", target.get(name)))
            .collect();
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        let out = run_gdb(&target.exe, &core, &commands);
        let words: Vec<u64> = out
            .lines()
            .filter(|l| l.starts_with("0x"))
            .map(|l| parse_x_words(l).unwrap()[1])
            .collect();
        let expected: Vec<u64> = regions.iter().map(|(_, tag)| (tag << 48) | 1).collect();
        assert_eq!(
            words, expected,
            "second word of {regions:?} in the core (filter {filter}):\n{out}"
        );
        manifests.push(manifest_of(&core));
    }
    let entry = |manifest: &serde_json::Value, name: &str| {
        let addr = target.addr(name);
        let hex = |v: &serde_json::Value| parse_hex(v.as_str().unwrap()).unwrap();
        manifest["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| hex(&m["start"]) <= addr && addr < hex(&m["end"]))
            .unwrap_or_else(|| panic!("no mapping holds {addr:#x} ({name})"))
            .clone()
    };
    let read_late = |addr| entry(&manifests[0], addr)["read_after_release"] == true;
    assert!(read_late("rofile"), "{}", entry(&manifests[0], "rofile"));
    for addr in ["heap", "shanon", "rwfile", "wipe"] {
        assert!(!read_late(addr), "{}", entry(&manifests[0], addr));
    }
    // Found only in the clone's smaps, after the release: read from the
    // target then, and marked so.
    assert!(
        entry(&manifests[2], "wipe")["read_after_release"] == true,
        "{}",
        entry(&manifests[2], "wipe")
    );
    // The same mappings, each decided the same way, dump after dump.
    let decisions = |manifest: &serde_json::Value| -> Vec<String> {
        manifest["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{} {} {}", m["start"], m["decision"], m["dumped_bytes"]))
            .collect()
    };
    assert_eq!(decisions(&manifests[0]), decisions(&manifests[1]));
}

/// Each file-backed code mapping of `pid` by its maps line: its bytes and
/// its `Anonymous` count.
fn file_code(pid: i32) -> std::collections::BTreeMap<String, (Vec<u8>, String)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut counts = std::collections::HashMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        if line
            .split(' ')
            .next()
            .is_some_and(|r| r.contains('-') && !r.contains(':'))
        {
            current = line.to_string();
        } else if line.starts_with("Anonymous:") {
            counts.insert(current.clone(), line.to_string());
        }
    }
    code_bytes(pid)
        .into_iter()
        .filter(|(line, _)| {
            line.split_whitespace()
                .nth(5)
                .is_some_and(|n| n.starts_with('/'))
        })
        .map(|(line, bytes)| {
            let anon = counts.get(&line).cloned().unwrap_or_default();
            (line, (bytes, anon))
        })
        .collect()
}

/// A JVM dumped in copy-on-write mode with its own `coredump_filter`
/// (0x3f): none of its file-backed code mappings (libjvm, libc...) gets a
/// private page or a changed byte, and its `lib/modules`, a read-only
/// shared mapping of a file opened read-only, is read after the release.
#[test]
fn a_cow_dump_leaves_a_jvms_code_untouched() {
    require!(
        ptrace_access(),
        program("javac", "-version", "openjdk-17-jdk-headless"),
        program("java", "-version", "openjdk-17-jdk-headless"),
    );
    let scratch = Scratch::new("cow-jvm");
    let classes = scratch.path().join("classes");
    let mut javac = Command::new("javac");
    javac
        .arg("-d")
        .arg(&classes)
        .arg(testdata_dir().join("java/Load.java"));
    let compiled = run_with_timeout(&mut javac, COMPILE_TIMEOUT, true);
    assert!(compiled.success(), "{}", compiled.describe());
    let counts = scratch.path().join("counts");
    let target = Target::spawn(
        std::path::Path::new("java"),
        &[
            OsStr::new("-Xmx64m"),
            OsStr::new("-Xms16m"),
            OsStr::new("-cp"),
            classes.as_os_str(),
            OsStr::new("Load"),
            counts.as_os_str(),
        ],
    );
    let before = file_code(target.pid);
    let prefix = scratch.path().join("core");
    let done = coresnap_cow(&target, &prefix, &["--no-fallback"]);
    assert!(done.success(), "{}", done.describe());
    assert_running_untraced(target.pid);
    let after = file_code(target.pid);
    for (line, (bytes, anonymous)) in &before {
        // A library the JVM unmapped meanwhile has nothing left to compare.
        let Some((bytes_after, anonymous_after)) = after.get(line) else {
            continue;
        };
        assert_eq!(anonymous, anonymous_after, "{line}");
        assert!(bytes == bytes_after, "the bytes of {line} changed");
    }
    let manifest = manifest_of(&core_path(&prefix, target.pid));
    let modules = manifest["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("/lib/modules"))
        })
        .expect("lib/modules in the manifest");
    assert_eq!(modules["decision"], "whole", "{modules}");
    assert_eq!(modules["read_after_release"], true, "{modules}");
}
