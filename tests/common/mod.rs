//! Shared harness for the integration tests: building the C targets in
//! `testdata/`, running them under a guard, dumping them with coresnap or
//! gcore, driving gdb / lldb / eu-stack with timeouts, and reading
//! `/proc/PID/...` to check that the target was left as it was found.
//!
//! Every wait here has a timeout; nothing sleeps for a fixed time hoping that
//! something has happened: conditions are polled until they hold or a
//! deadline passes.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

pub mod debuggers;
pub mod elf_readers;
pub mod expected;

/// How long a target may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one dump (coresnap or gcore) may take.
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one debugger run (gdb, lldb, eu-stack) may take.
pub const DEBUGGER_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a compiler run may take.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the target may take to settle into an expected state.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(5);

mod skip;
pub use skip::*;

/// Returns from the test (after recording why, see [`skip`]) unless every
/// check holds: `require!(capability(Capability::SysPtrace, "to attach"))`.
/// An environment lack fails the test unless `CORESNAP_ALLOW_SKIP=1`.
#[allow(unused_macros)]
macro_rules! require {
    ($($check:expr),+ $(,)?) => {
        $(
            if $crate::common::unmet($check) {
                return;
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use require;

/// `Ok` if `program` can be started; otherwise an environment lack that
/// names the Debian package to install (`tests/run.sh` installs them all).
pub fn program(program: &str, version_arg: &str, package: &str) -> Result<(), Missing> {
    if have_program(program, version_arg) {
        Ok(())
    } else {
        Err(Missing::environment(
            format!("{program}, which is not installed"),
            format!("install it (apt-get install {package}), or run tests/run.sh, which does"),
        ))
    }
}

/// Whether coresnap (and gdb, gcore, strace) may attach to a target this
/// test started, as the kernel decides it (`ptrace_may_access`): always with
/// CAP_SYS_PTRACE in the effective set; without it only when Yama does not
/// restrict ptrace to descendants (coresnap is the target's sibling, not its
/// parent) – the same user and a dumpable target are given here.
pub fn ptrace_access() -> Result<(), Missing> {
    if has_capability(Capability::SysPtrace) {
        return Ok(());
    }
    let scope = fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if scope == 0 {
        return Ok(());
    }
    Err(Missing::environment(
        format!(
            "CAP_SYS_PTRACE (to attach to a process that is not a child of the \
             attaching tool: kernel.yama.ptrace_scope is {scope})"
        ),
        "run the tests as root, or give them the capability, e.g. \
         `setpriv --inh-caps=+sys_ptrace --ambient-caps=+sys_ptrace tests/run.sh`",
    ))
}

// ---------------------------------------------------------------------------
// Generic helpers
// ---------------------------------------------------------------------------

/// Polls `cond` until it returns true or `timeout` passes. Returns whether it
/// became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Waits up to `within` for `child` to exit and returns how it ended;
/// panics with `what` if it is still running then.
pub fn wait_exit(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let mut status = None;
    let exited = wait_until(within, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    assert!(exited, "{what} (still running after {within:?})");
    status.expect("exited")
}

/// What an exited child wrote to its piped stderr (empty if not piped).
pub fn take_stderr(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// Output of a command run with [`run_with_timeout`].
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    pub fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn describe_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

pub fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Kills the whole process group of a child that was started with
/// `process_group(0)` (so that e.g. gcore's gdb goes too), then reaps it.
fn kill_group_and_reap(child: &mut Child) {
    let pgid = child.id() as libc::pid_t;
    // SAFETY: plain syscall on a process group we created.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.kill();
    let reaped = wait_until(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !reaped {
        eprintln!("warning: could not reap pid {pgid} within 10 s after SIGKILL");
    }
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) in its own
/// process group. On timeout the whole group is killed and this panics with
/// whatever was captured. When `merge` is set, stderr goes into the same pipe
/// as stdout (so error messages such as gdb's "Cannot access memory" stay in
/// order with the normal output) and `stderr` is empty.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration, merge: bool) -> CmdOutput {
    let what = describe_cmd(cmd);
    cmd.stdin(Stdio::null()).process_group(0);
    let (out_rx, err_rx);
    let mut child;
    if merge {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let writer2 = writer.try_clone().expect("dup pipe");
        cmd.stdout(writer).stderr(writer2);
        child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        // Drop our copies of the write end so that the reader sees EOF.
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        out_rx = spawn_reader(reader);
        err_rx = None;
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        out_rx = spawn_reader(child.stdout.take().unwrap());
        err_rx = Some(spawn_reader(child.stderr.take().unwrap()));
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => panic!("waiting for {what}: {e}"),
        }
        if Instant::now() >= deadline {
            kill_group_and_reap(&mut child);
            let out = out_rx
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_default();
            let err = err_rx
                .as_ref()
                .and_then(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
                .unwrap_or_default();
            panic!(
                "timed out after {timeout:?}: {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        thread::sleep(POLL);
    };
    // The child has exited; a grandchild might still hold the pipe, so do not
    // wait for EOF forever.
    let collect = |rx: &mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(10))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|_| "<output not closed within 10 s of exit>".to_string())
    };
    let stdout = collect(&out_rx);
    let stderr = err_rx.as_ref().map(collect).unwrap_or_default();
    CmdOutput {
        status,
        stdout,
        stderr,
    }
}

/// True if `program` can be started.
pub fn have_program(program: &str, version_arg: &str) -> bool {
    let mut cmd = Command::new(program);
    cmd.arg(version_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match cmd.spawn() {
        Ok(mut child) => {
            let done = wait_until(Duration::from_secs(30), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !done {
                let _ = child.kill();
                let _ = child.wait();
            }
            true
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------
// Scratch directories
// ---------------------------------------------------------------------------

/// A temporary directory, removed at the end of the test unless
/// `CORESNAP_TEST_KEEP=1` is set (then its path is printed, for looking at
/// the cores by hand).
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("coresnap-{label}-"))
            .tempdir()
            .expect("create temp dir");
        Scratch { dir: Some(dir) }
    }
    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("CORESNAP_TEST_KEEP").is_some_and(|v| v == "1") {
            let p = self.dir.take().unwrap().keep();
            eprintln!("kept scratch dir {}", p.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Building the C targets
// ---------------------------------------------------------------------------

/// A C program from `testdata/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Program {
    /// `threads.c` as a PIE.
    Threads,
    /// `threads.c` linked with `-static` (not PIE).
    ThreadsStatic,
    /// `regs.c` as a PIE.
    Regs,
    /// `memory.c` as a PIE.
    Memory,
    /// `sparse.c` as a PIE.
    Sparse,
    /// `many_maps.c` as a PIE.
    ManyMaps,
    /// `counter.c` as a PIE.
    Counter,
    /// `crasher.c` as a PIE.
    Crasher,
    /// `mapnames.c` as a PIE.
    MapNames,
    /// `busy.c` as a PIE.
    Busy,
    /// `dstate.c` as a PIE.
    DState,
    /// `forked.c` as a PIE.
    Forked,
    /// `reservation.c` as a PIE.
    Reservation,
    /// `uffd.c` as a PIE.
    Uffd,
    /// `fuse_self.c` as a PIE.
    FuseSelf,
    /// `cow_hostile.c` as a PIE.
    CowHostile,
    /// `cow_quiet.c` as a PIE.
    CowQuiet,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::Threads => "threads",
            Program::ThreadsStatic => "threads-static",
            Program::Regs => "regs",
            Program::Memory => "memory",
            Program::Sparse => "sparse",
            Program::ManyMaps => "many_maps",
            Program::Counter => "counter",
            Program::Crasher => "crasher",
            Program::MapNames => "mapnames",
            Program::Busy => "busy",
            Program::DState => "dstate",
            Program::Forked => "forked",
            Program::Reservation => "reservation",
            Program::Uffd => "uffd",
            Program::FuseSelf => "fuse_self",
            Program::CowHostile => "cow_hostile",
            Program::CowQuiet => "cow_quiet",
        }
    }
    fn source(self) -> &'static str {
        match self {
            Program::Threads | Program::ThreadsStatic => "threads.c",
            Program::Regs => "regs.c",
            Program::Memory => "memory.c",
            Program::Sparse => "sparse.c",
            Program::ManyMaps => "many_maps.c",
            Program::Counter => "counter.c",
            Program::Crasher => "crasher.c",
            Program::MapNames => "mapnames.c",
            Program::Busy => "busy.c",
            Program::DState => "dstate.c",
            Program::Forked => "forked.c",
            Program::Reservation => "reservation.c",
            Program::Uffd => "uffd.c",
            Program::FuseSelf => "fuse_self.c",
            Program::CowHostile => "cow_hostile.c",
            Program::CowQuiet => "cow_quiet.c",
        }
    }
    fn link_flags(self) -> &'static [&'static str] {
        match self {
            Program::ThreadsStatic => &["-no-pie", "-static"],
            _ => &["-fPIE", "-pie"],
        }
    }
}

pub fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

static BUILT: Mutex<Option<HashMap<Program, PathBuf>>> = Mutex::new(None);
static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn unique() -> usize {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

/// Compiles `prog` once per test-binary run (the first caller compiles, the
/// others wait) into a cache directory under `CARGO_TARGET_TMPDIR`, and
/// returns the executable's path. Compiles to a temporary name and renames,
/// so concurrent test binaries never see a half-written executable.
pub fn build(prog: Program) -> PathBuf {
    let mut guard = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(&prog) {
        return p.clone();
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("coresnap-testdata");
    fs::create_dir_all(&cache).expect("create testdata cache dir");
    let out = cache.join(prog.name());
    let tmp = cache.join(format!(
        ".{}.tmp.{}.{}",
        prog.name(),
        std::process::id(),
        unique()
    ));
    let src = testdata_dir().join(prog.source());
    let mut cmd = Command::new("cc");
    cmd.args(["-g", "-O0", "-fno-omit-frame-pointer", "-pthread", "-Wall"])
        .args(prog.link_flags())
        .arg("-o")
        .arg(&tmp)
        .arg(&src);
    let res = run_with_timeout(&mut cmd, COMPILE_TIMEOUT, false);
    if !res.success() {
        let _ = fs::remove_file(&tmp);
        panic!("compiling {} failed:\n{}", src.display(), res.describe());
    }
    fs::rename(&tmp, &out).expect("rename compiled target");
    map.insert(prog, out.clone());
    out
}

// ---------------------------------------------------------------------------
// Running a target
// ---------------------------------------------------------------------------

/// A running target program. Killed with SIGKILL and reaped on drop.
pub struct Target {
    child: Child,
    pub pid: i32,
    pub exe: PathBuf,
    /// The ready line as printed.
    pub ready_line: String,
    /// key=value pairs of the ready line.
    pub ready: BTreeMap<String, String>,
}

impl Target {
    /// Starts `exe` with `args`, waits (up to [`READY_TIMEOUT`]) for its
    /// `ready ...` line, and parses it.
    pub fn spawn(exe: &Path, args: &[&OsStr]) -> Target {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let pid = child.id() as i32;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the target can never block on a full pipe.
            for _ in lines {}
        });
        // Construct the guard first so that the target is killed if we panic.
        let mut t = Target {
            child,
            pid,
            exe: exe.to_path_buf(),
            ready_line: String::new(),
            ready: BTreeMap::new(),
        };
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(l) => l,
            Err(e) => {
                let st = t.child.try_wait();
                panic!(
                    "{} (pid {pid}) printed no ready line within {READY_TIMEOUT:?} ({e}); exit status: {st:?}",
                    exe.display()
                );
            }
        };
        let mut words = line.split_whitespace();
        assert_eq!(
            words.next(),
            Some("ready"),
            "unexpected first line from target: {line:?}"
        );
        for w in words {
            let (k, v) = w
                .split_once('=')
                .unwrap_or_else(|| panic!("bad word {w:?} in ready line {line:?}"));
            t.ready.insert(k.to_string(), v.to_string());
        }
        t.ready_line = line;
        if let Some(p) = t.ready.get("pid") {
            assert_eq!(
                p.parse::<i32>().ok(),
                Some(pid),
                "ready line pid mismatch: {}",
                t.ready_line
            );
        }
        t
    }

    pub fn get(&self, key: &str) -> &str {
        self.ready
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in ready line {:?}", self.ready_line))
    }
    /// A decimal value (tid, length) from the ready line.
    pub fn num(&self, key: &str) -> i64 {
        let v = self.get(key);
        v.parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a decimal number"))
    }
    /// A hex address (`0x...`) from the ready line.
    pub fn addr(&self, key: &str) -> u64 {
        let v = self.get(key);
        parse_hex(v).unwrap_or_else(|| panic!("{key}={v} is not a hex address"))
    }

    /// Sends `sig` to the target.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall.
        let r = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(
            r,
            0,
            "kill({}, {sig}) failed: {}",
            self.pid,
            std::io::Error::last_os_error()
        );
    }

    /// Panics if the target has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "target {} (pid {}) exited: {st}",
                self.exe.display(),
                self.pid
            );
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL; works on stopped/traced targets too
        let reaped = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)) | Err(_))
        });
        if !reaped {
            eprintln!(
                "warning: target pid {} not reaped within 10 s of SIGKILL",
                self.pid
            );
        }
    }
}

pub fn parse_hex(s: &str) -> Option<u64> {
    let s = s.trim();
    let h = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    u64::from_str_radix(h, 16).ok()
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// The tids in /proc/PID/task, ascending.
/// `tid` as the target numbers it in its own pid namespace (the last
/// `NSpid` value).
pub fn tid_inside(pid: i32, tid: i32) -> i32 {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        })
        .unwrap_or(tid)
}

pub fn thread_ids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/task: {e}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// State letter and TracerPid of one thread, from /proc/PID/task/TID/status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskStatus {
    pub tid: i32,
    pub state: char,
    pub tracer: i32,
}

pub fn task_status(pid: i32, tid: i32) -> Option<TaskStatus> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let mut state = None;
    let mut tracer = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("State:") {
            state = v.trim().chars().next();
        } else if let Some(v) = line.strip_prefix("TracerPid:") {
            tracer = v.trim().parse().ok();
        }
    }
    Some(TaskStatus {
        tid,
        state: state?,
        tracer: tracer?,
    })
}

/// Status of every thread of `pid`.
pub fn all_task_status(pid: i32) -> Vec<TaskStatus> {
    thread_ids(pid)
        .into_iter()
        .filter_map(|t| task_status(pid, t))
        .collect()
}

/// Status of the process as a whole (/proc/PID/status).
pub fn process_status(pid: i32) -> Option<TaskStatus> {
    task_status(pid, pid)
}

fn describe_status(v: &[TaskStatus]) -> String {
    v.iter()
        .map(|s| format!("tid {} State {} TracerPid {}", s.tid, s.state, s.tracer))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Asserts that every thread of `pid` is running (state neither `T` nor `t`,
/// nor dead) and has no tracer. A tool that detached has already woken the
/// threads when it exits, but the state is polled for a short while so that
/// scheduling latency cannot make the test flaky; a thread left stopped or
/// traced stays so and fails.
pub fn assert_running_untraced(pid: i32) {
    let mut last = Vec::new();
    let ok = wait_until(STATE_TIMEOUT, || {
        last = all_task_status(pid);
        !last.is_empty()
            && last
                .iter()
                .all(|s| !matches!(s.state, 'T' | 't' | 'Z' | 'X' | 'x') && s.tracer == 0)
    });
    assert!(
        ok,
        "pid {pid} is not running and untraced: {}",
        describe_status(&last)
    );
}

/// Asserts that every thread of `pid` is in group stop (`T`) with no tracer.
pub fn assert_stopped_untraced(pid: i32) {
    let mut last = Vec::new();
    let ok = wait_until(STATE_TIMEOUT, || {
        last = all_task_status(pid);
        !last.is_empty() && last.iter().all(|s| s.state == 'T' && s.tracer == 0)
    });
    assert!(
        ok,
        "pid {pid} is not stopped (T) and untraced: {}",
        describe_status(&last)
    );
}

/// Waits until every thread of `pid` except those in `except` is sleeping
/// (state `S`), i.e. parked in its blocking call.
pub fn wait_threads_sleeping(pid: i32, except: &[i32]) {
    let mut last = Vec::new();
    let ok = wait_until(STATE_TIMEOUT, || {
        last = all_task_status(pid);
        !last.is_empty()
            && last
                .iter()
                .all(|s| except.contains(&s.tid) || (s.state == 'S' && s.tracer == 0))
    });
    assert!(
        ok,
        "threads of pid {pid} did not all go to sleep: {}",
        describe_status(&last)
    );
}

/// Sends SIGSTOP and waits until every thread is in group stop.
pub fn stop_target(t: &Target) {
    t.signal(libc::SIGSTOP);
    assert_stopped_untraced(t.pid);
}

/// Writes /proc/PID/coredump_filter (e.g. 0x33, the kernel default), so that
/// the test does not depend on what the test runner inherited.
pub fn set_coredump_filter(pid: i32, value: u32) {
    fs::write(
        format!("/proc/{pid}/coredump_filter"),
        format!("0x{value:x}"),
    )
    .unwrap_or_else(|e| panic!("writing /proc/{pid}/coredump_filter: {e}"));
}

// ---------------------------------------------------------------------------
// Dumping
// ---------------------------------------------------------------------------

/// The tool that writes the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dumper {
    /// The binary under test.
    Coresnap,
    /// The binary under test in copy-on-write mode (`--mode cow
    /// --no-fallback`): memory comes from a clone of the target.
    CoresnapCow,
    /// gdb's gcore: the reference.
    Gcore,
}

impl Dumper {
    pub fn name(self) -> &'static str {
        match self {
            Dumper::Coresnap => "coresnap",
            Dumper::CoresnapCow => "coresnap-cow",
            Dumper::Gcore => "gcore",
        }
    }
    /// The program run for this dumper. For `Coresnap`, `CORESNAP_BIN`
    /// (if set) replaces the binary cargo built, e.g. to test a release build.
    pub fn program(self) -> OsString {
        match self {
            Dumper::Coresnap | Dumper::CoresnapCow => std::env::var_os("CORESNAP_BIN")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_coresnap").into()),
            Dumper::Gcore => "gcore".into(),
        }
    }
}

/// Dumps `pid` with `dumper` as `TOOL [extra_args] -o DIR/PREFIX PID` (PREFIX
/// unique per call) and returns the core's path, `DIR/PREFIX.PID`. Panics if
/// the tool fails, times out, or writes no file there.
///
/// Every core made here is loaded in gdb, which must list exactly the
/// threads the target had ([`assert_loads_in_gdb`]).
pub fn dump(dumper: Dumper, pid: i32, dir: &Path, extra_args: &[&str]) -> PathBuf {
    let threads = thread_ids(pid);
    let prefix = dir.join(format!("{}-{}", dumper.name(), unique()));
    let mut cmd = Command::new(dumper.program());
    cmd.args(extra_args)
        .arg("-o")
        .arg(&prefix)
        .arg(pid.to_string());
    let what = describe_cmd(&cmd);
    let res = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
    assert!(res.success(), "{what} failed:\n{}", res.describe());
    let mut core = prefix.into_os_string();
    core.push(format!(".{pid}"));
    let core = PathBuf::from(core);
    let meta = fs::metadata(&core).unwrap_or_else(|e| {
        panic!(
            "{what} succeeded but {} is missing ({e}):\n{}",
            core.display(),
            res.describe()
        )
    });
    assert!(meta.len() > 0, "{} is empty", core.display());
    assert_loads_in_gdb(pid, &core, &threads);
    core
}

/// Loads `core` in gdb, with the live target's executable (through
/// `/proc/PID/exe`, which also works for a target in another mount
/// namespace), and checks that gdb lists exactly `threads` (as the target
/// numbers them in its own pid namespace, as a kernel core does): the least
/// every dump test asks of a core. First goblin and object must read the
/// same program headers and notes from it ([`elf_readers`]).
pub fn assert_loads_in_gdb(pid: i32, core: &Path, threads: &[i32]) {
    elf_readers::assert_readers_agree(core);
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let out = run_gdb(&exe, core, &["info threads"]);
    let mut listed: Vec<i32> = parse_info_threads(&out).iter().map(|r| r.lwp).collect();
    listed.sort_unstable();
    let mut expected: Vec<i32> = threads.iter().map(|&t| tid_inside(pid, t)).collect();
    expected.sort_unstable();
    assert_eq!(
        listed,
        expected,
        "gdb's threads in {}:\n{out}",
        core.display()
    );
}

// ---------------------------------------------------------------------------
// gdb
// ---------------------------------------------------------------------------

const SECTION_MARK: &str = "@@coresnap-test-section@@";

fn gdb_base() -> Command {
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch"])
        .args(["-iex", "set debuginfod enabled off"])
        .args(["-ex", "set pagination off"])
        .args(["-ex", "set width 0"])
        .args(["-ex", "set height 0"])
        .args(["-ex", "set confirm off"])
        .env("LC_ALL", "C");
    cmd
}

fn add_commands(cmd: &mut Command, commands: &[&str], marks: bool) {
    for (i, c) in commands.iter().enumerate() {
        if marks {
            cmd.arg("-ex").arg(format!("echo \\n{SECTION_MARK} {i}\\n"));
        }
        cmd.arg("-ex").arg(c);
    }
    if marks {
        cmd.arg("-ex").arg(format!("echo \\n{SECTION_MARK} end\\n"));
    }
}

fn split_sections(out: &str, n: usize, what: &str) -> Vec<String> {
    let mut sections: Vec<String> = Vec::new();
    let mut cur: Option<String> = None;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix(SECTION_MARK) {
            if let Some(s) = cur.take() {
                sections.push(s);
            }
            // " N" opens section N; " end" and " preamble-end" only close.
            if rest.trim().parse::<usize>().is_ok() {
                cur = Some(String::new());
            }
            continue;
        }
        if let Some(s) = cur.as_mut() {
            s.push_str(line);
            s.push('\n');
        }
    }
    assert_eq!(
        sections.len(),
        n,
        "could not split the output of {what} into {n} sections:\n{out}"
    );
    // Drop the newline added before each marker by `echo \n...`.
    sections
        .into_iter()
        .map(|s| s.strip_suffix('\n').map(str::to_string).unwrap_or(s))
        .collect()
}

/// `gdb -nx -batch -ex CMD... EXE CORE`, ready to run.
pub fn gdb_core_command(exe: &Path, core: &Path, commands: &[&str]) -> Command {
    let mut cmd = gdb_base();
    add_commands(&mut cmd, commands, false);
    cmd.arg(exe).arg(core);
    cmd
}

/// Runs `gdb -nx -batch -ex CMD... EXE CORE` and returns stdout and stderr
/// merged, in order.
pub fn run_gdb(exe: &Path, core: &Path, commands: &[&str]) -> String {
    run_debugger(&mut gdb_core_command(exe, core, commands))
}

/// Runs a debugger (gdb, lldb, eu-stack) with [`DEBUGGER_TIMEOUT`] and
/// returns stdout and stderr merged, in order. It must exit with status 0:
/// a debugger that crashed, or whose last command failed, has not read the
/// core the way the test assumes.
pub fn run_debugger(cmd: &mut Command) -> String {
    let what = describe_cmd(cmd);
    let out = run_with_timeout(cmd, DEBUGGER_TIMEOUT, true);
    assert!(out.success(), "{what} failed:\n{}", out.describe());
    out.stdout
}

/// Like [`run_gdb`] but returns each command's output separately (split with
/// `echo` markers), plus the preamble gdb printed when loading the core.
pub fn run_gdb_split(exe: &Path, core: &Path, commands: &[&str]) -> (String, Vec<String>) {
    let mut cmd = gdb_base();
    cmd.arg("-ex")
        .arg(format!("echo {SECTION_MARK} preamble-end\\n"));
    add_commands(&mut cmd, commands, true);
    cmd.arg(exe).arg(core);
    let what = describe_cmd(&cmd);
    let out = run_debugger(&mut cmd);
    let preamble = out
        .split_once(&format!("{SECTION_MARK} preamble-end"))
        .map(|(p, _)| p.to_string())
        .unwrap_or_default();
    (preamble, split_sections(&out, commands.len(), &what))
}

/// Runs `gdb -nx -batch -p PID -ex CMD...` against the live process; gdb
/// detaches when it exits. Returns the merged output.
pub fn run_gdb_live(pid: i32, commands: &[&str]) -> String {
    let mut cmd = gdb_base();
    cmd.arg("-p").arg(pid.to_string());
    add_commands(&mut cmd, commands, false);
    run_debugger(&mut cmd)
}

/// Like [`run_gdb_live`], split per command.
pub fn run_gdb_live_split(pid: i32, commands: &[&str]) -> Vec<String> {
    let mut cmd = gdb_base();
    cmd.arg("-p").arg(pid.to_string());
    add_commands(&mut cmd, commands, true);
    let what = describe_cmd(&cmd);
    let out = run_debugger(&mut cmd);
    split_sections(&out, commands.len(), &what)
}

/// One row of gdb's `info threads`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadRow {
    pub num: u32,
    pub current: bool,
    pub lwp: i32,
    /// "Thread 0x... (LWP n)" or "LWP n", without the thread name.
    pub target_id: String,
    /// The frame column.
    pub frame: String,
}

/// Splits "Thread 0x7f.. (LWP 123) \"name\" rest" or "LWP 123 rest" into
/// (target id without name, lwp, rest).
fn split_target_id(s: &str) -> Option<(String, i32, String)> {
    let s = s.trim_start();
    let (id, lwp, rest) = if s.starts_with("Thread ") {
        let open = s.find("(LWP ")?;
        let close = open + s[open..].find(')')?;
        let lwp = s[open + 5..close].trim().parse().ok()?;
        (s[..=close].to_string(), lwp, &s[close + 1..])
    } else if let Some(r) = s.strip_prefix("LWP ") {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        let lwp = r[..end].parse().ok()?;
        (format!("LWP {lwp}"), lwp, &r[end..])
    } else if let Some(r) = s.strip_prefix("process ") {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        let lwp = r[..end].parse().ok()?;
        (format!("process {lwp}"), lwp, &r[end..])
    } else {
        return None;
    };
    // Live gdb shows the thread name in quotes after the id; cores have none.
    let mut rest = rest.trim_start();
    if let Some(r) = rest.strip_prefix('"') {
        rest = r
            .split_once('"')
            .map(|(_, after)| after)
            .unwrap_or("")
            .trim_start();
    }
    Some((id, lwp, rest.to_string()))
}

/// Parses gdb's `info threads` table.
pub fn parse_info_threads(text: &str) -> Vec<ThreadRow> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let mut l = line;
        let current = l.starts_with('*');
        if current {
            l = &l[1..];
        }
        let l = l.trim_start();
        let end = l.find(|c: char| !c.is_ascii_digit()).unwrap_or(l.len());
        if end == 0 {
            continue;
        }
        let Ok(num) = l[..end].parse::<u32>() else {
            continue;
        };
        let Some((target_id, lwp, frame)) = split_target_id(&l[end..]) else {
            continue;
        };
        rows.push(ThreadRow {
            num,
            current,
            lwp,
            target_id,
            frame,
        });
    }
    rows
}

/// One thread's block of `thread apply all CMD` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadBlock {
    pub num: u32,
    pub lwp: i32,
    /// Header without the thread name.
    pub header: String,
    pub body: String,
}

/// Splits `thread apply all CMD` output into per-thread blocks (in the order
/// gdb printed them).
pub fn parse_thread_apply(text: &str) -> Vec<ThreadBlock> {
    let mut blocks: Vec<ThreadBlock> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Thread ") {
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if end > 0 && rest[end..].starts_with(" (") && line.ends_with("):") {
                let num: u32 = rest[..end].parse().unwrap();
                let inner = &rest[end + 2..rest.len() - 2];
                if let Some((id, lwp, _name)) = split_target_id(inner) {
                    blocks.push(ThreadBlock {
                        num,
                        lwp,
                        header: format!("Thread {num} ({id}):"),
                        body: String::new(),
                    });
                    continue;
                }
            }
        }
        if let Some(b) = blocks.last_mut() {
            b.body.push_str(line);
            b.body.push('\n');
        }
    }
    for b in &mut blocks {
        b.body = b.body.trim_end().to_string();
    }
    blocks
}

/// A `thread apply all` output with the thread names removed from the headers
/// (live gdb shows them, core files have none), for comparing text.
pub fn normalize_thread_apply(text: &str) -> String {
    parse_thread_apply(text)
        .iter()
        .map(|b| format!("{}\n{}", b.header, b.body))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The function name of each frame line (`#N ...`) of a gdb backtrace.
pub fn bt_functions(body: &str) -> Vec<String> {
    let mut v = Vec::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let _idx = words.next();
        let Some(mut w) = words.next() else { continue };
        if w.starts_with("0x") {
            if words.next() != Some("in") {
                continue;
            }
            let Some(n) = words.next() else { continue };
            w = n;
        }
        let name = w.split('(').next().unwrap_or(w);
        v.push(name.to_string());
    }
    v
}

/// The frame lines of a gdb backtrace, as printed.
pub fn bt_frame_lines(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Parses `info registers` lines ("name   0x...   natural") into name -> raw
/// value column.
pub fn parse_registers(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(name), Some(val)) = (w.next(), w.next()) else {
            continue;
        };
        if val.starts_with("0x") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            m.insert(name.to_string(), val.to_string());
        }
    }
    m
}

/// Values printed by `p/x $reg.vN_int64` (`$1 = {0x.., 0x..}`), one vector per
/// `$N =` line.
pub fn parse_print_vectors(text: &str) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((lhs, rhs)) = line.split_once(" = ") else {
            continue;
        };
        if !lhs.trim_start().starts_with('$') {
            continue;
        }
        let rhs = rhs.trim().trim_start_matches('{').trim_end_matches('}');
        let vals: Option<Vec<u64>> = rhs.split(',').map(parse_hex).collect();
        if let Some(v) = vals {
            out.push(v);
        }
    }
    out
}

/// Words printed by `x/Ngx ADDR`, or the error gdb printed.
pub fn parse_x_words(text: &str) -> Result<Vec<u64>, String> {
    if let Some(l) = text.lines().find(|l| l.contains("Cannot access memory")) {
        return Err(l.trim().to_string());
    }
    let mut words = Vec::new();
    for line in text.lines() {
        let Some((addr, rest)) = line.split_once(':') else {
            continue;
        };
        if !addr.trim_start().starts_with("0x") {
            continue;
        }
        for w in rest.split_whitespace() {
            match parse_hex(w) {
                Some(v) => words.push(v),
                None => return Err(format!("unparsable x output: {line}")),
            }
        }
    }
    if words.is_empty() {
        Err(format!("no words in x output: {text:?}"))
    } else {
        Ok(words)
    }
}

/// The "Core was generated by `...'." line of gdb's preamble, if any.
pub fn core_generated_by(preamble: &str) -> Option<String> {
    preamble
        .lines()
        .find(|l| l.starts_with("Core was generated by"))
        .map(str::to_string)
}

/// Line-by-line difference of two texts, for assertion messages.
pub fn diff_lines(a_name: &str, a: &str, b_name: &str, b: &str) -> String {
    let al: Vec<&str> = a.lines().collect();
    let bl: Vec<&str> = b.lines().collect();
    let mut s = String::new();
    for i in 0..al.len().max(bl.len()) {
        let x = al.get(i).copied();
        let y = bl.get(i).copied();
        if x != y {
            s.push_str(&format!(
                "line {}:\n  {a_name}: {}\n  {b_name}: {}\n",
                i + 1,
                x.unwrap_or("<none>"),
                y.unwrap_or("<none>")
            ));
        }
    }
    s
}

/// Asserts two texts are equal, showing the differing lines and both texts.
#[track_caller]
pub fn assert_same_text(what: &str, a_name: &str, a: &str, b_name: &str, b: &str) {
    if a != b {
        panic!(
            "{what}: {a_name} and {b_name} differ:\n{}\n===== {a_name} =====\n{a}\n===== {b_name} =====\n{b}",
            diff_lines(a_name, a, b_name, b)
        );
    }
}

// ---------------------------------------------------------------------------
// The threads target's expected call chains
// ---------------------------------------------------------------------------

/// (ready-line key, functions that must appear consecutively, innermost
/// first, in that thread's backtrace).
pub const THREAD_CHAINS: &[(&str, &[&str])] = &[
    ("main", &["main_wait", "main"]),
    ("alpha", &["alpha_inner", "alpha_outer", "alpha_start"]),
    ("beta", &["beta_inner", "beta_outer", "beta_start"]),
    ("gamma", &["gamma_inner", "gamma_outer", "gamma_start"]),
    ("delta", &["delta_inner", "delta_outer", "delta_start"]),
];

/// True if `chain` appears as a contiguous run in `funcs`.
pub fn has_chain(funcs: &[String], chain: &[&str]) -> bool {
    chain.is_empty()
        || funcs
            .windows(chain.len())
            .any(|w| w.iter().zip(chain).all(|(a, b)| a == b))
}

/// Starts the threads target (PIE or static) and waits until every thread is
/// parked in its blocking call.
pub fn start_threads_target(prog: Program) -> Target {
    let t = Target::spawn(&build(prog), &[]);
    let mut tids: Vec<i32> = THREAD_CHAINS.iter().map(|(k, _)| t.num(k) as i32).collect();
    tids.sort_unstable();
    assert_eq!(
        thread_ids(t.pid),
        tids,
        "thread list vs ready line {}",
        t.ready_line
    );
    wait_threads_sleeping(t.pid, &[]);
    t
}
