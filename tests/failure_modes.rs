//! Issue 7, "never harm the target, whatever goes wrong": one test per
//! failure mode, each provoking it for real against a live process and
//! asserting coresnap's exit status, its message, that no output file (not
//! even a `.*.partial` one) remains, and that the target is afterwards in
//! exactly the state it was in before (same threads, running or stopped as
//! before, same tracer). Plus a soak test of 200 dumps in a row.
//!
//! Needs CAP_SYS_PTRACE (coresnap attaches to processes that are not its
//! children), and for some tests CAP_SYS_ADMIN (small tmpfs mounts, a
//! cgroup, /proc/PID/map_files), CAP_SETUID and CAP_SETGID (running coresnap
//! as nobody), or strace: a test whose environment lacks one fails, saying
//! what is missing, unless `CORESNAP_ALLOW_SKIP=1` (tests/common/skip.rs).
//! Every wait has a timeout and every process started here is killed by a
//! guard.
//!
//! The C targets are `testdata/busy.c`, `testdata/dstate.c` and
//! `testdata/mapnames.c`; see the comment at the top of each.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    Capability, DEBUGGER_TIMEOUT, Missing, Program, available, build, capability, gdb_core_command,
    parse_x_words, program, ptrace_access, require, run_with_timeout, skip, spawn_reader,
    wait_until,
};

/// How long any single coresnap run may take before the test kills it.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a target may take to print its ready line (filling 1 GiB
/// included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the target may take to settle into an expected state.
const STATE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Generic helpers
// ---------------------------------------------------------------------------

fn strace_installed() -> Result<(), Missing> {
    program("strace", "-V", "strace")
}

fn gdb_installed() -> Result<(), Missing> {
    program("gdb", "--version", "gdb")
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: plain syscall.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// A process started by a test: SIGKILLed (its whole process group when it
/// leads one) and reaped on drop.
struct Guard {
    child: Child,
    group: bool,
}

impl Guard {
    fn new(child: Child, group: bool) -> Guard {
        Guard { child, group }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the exit with a timeout; `None` if it did not exit.
    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.group {
            // SAFETY: plain syscall on the process group this guard leads.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        }
        let _ = self.child.kill();
        if self.wait_timeout(Duration::from_secs(10)).is_none() {
            eprintln!(
                "warning: pid {} not reaped within 10 s of SIGKILL",
                self.child.id()
            );
        }
    }
}

/// The outcome of one coresnap run.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

fn coresnap_bin() -> OsString {
    std::env::var_os("CORESNAP_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_coresnap").into())
}

/// A coresnap run in the background: its stderr arrives line by line.
struct Background {
    guard: Guard,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
    started: Instant,
    _stdout: Option<std::process::ChildStdout>,
}

impl Background {
    /// Starts coresnap with `args`; stdout goes to /dev/null unless
    /// `keep_stdout` (then it is a pipe that nobody reads).
    fn start(args: &[&OsStr], keep_stdout: bool) -> Background {
        Background::start_via(&[], args, keep_stdout)
    }

    /// As [`Background::start`], run through `wrapper` (e.g. `setpriv`
    /// with its options) when it is not empty.
    fn start_via(wrapper: &[&str], args: &[&OsStr], keep_stdout: bool) -> Background {
        let mut cmd = match wrapper.split_first() {
            Some((program, options)) => {
                let mut cmd = Command::new(program);
                cmd.args(options).arg(coresnap_bin());
                cmd
            }
            None => Command::new(coresnap_bin()),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(if keep_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .process_group(0);
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start coresnap");
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            guard: Guard::new(child, true),
            lines,
            stderr: Vec::new(),
            started,
            _stdout: stdout,
        }
    }

    fn pid(&self) -> i32 {
        self.guard.pid()
    }

    /// The next stderr line, within `timeout`.
    fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.stderr.push(line.clone());
        Some(line)
    }

    /// Waits for the exit (panics after `timeout`) and collects stderr.
    fn finish(mut self, timeout: Duration) -> Run {
        let status = self.guard.wait_timeout(timeout);
        let elapsed = self.started.elapsed();
        // The reader ends at EOF, shortly after the exit.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.stderr.push(line);
        }
        let stderr = self.stderr.join("\n");
        let Some(status) = status else {
            panic!("coresnap did not exit within {timeout:?}; stderr so far:\n{stderr}");
        };
        Run {
            status,
            stderr,
            elapsed,
        }
    }
}

/// Runs coresnap to completion (killed and failing the test after
/// [`RUN_TIMEOUT`]).
fn coresnap<S: AsRef<OsStr>>(args: &[S]) -> Run {
    coresnap_via(&[], args)
}

/// [`coresnap`] run through `wrapper` (see [`Background::start_via`]).
fn coresnap_via<S: AsRef<OsStr>>(wrapper: &[&str], args: &[S]) -> Run {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    Background::start_via(wrapper, &args, false).finish(RUN_TIMEOUT)
}

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// `DIR/core` as the `-o` prefix and the file coresnap would write for `pid`.
fn prefix_and_core(dir: &Path, pid: i32) -> (OsString, PathBuf) {
    let prefix = dir.join("core");
    (
        prefix.clone().into_os_string(),
        dir.join(format!("core.{pid}")),
    )
}

/// Every entry of `dir` (hidden ones included).
fn entries(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| Some(e.ok()?.file_name()))
        .collect();
    v.sort();
    v
}

fn assert_dir_empty(dir: &Path, run: &Run) {
    let left = entries(dir);
    assert!(
        left.is_empty(),
        "files left in {}: {left:?}\n{run:?}",
        dir.display()
    );
}

// ---------------------------------------------------------------------------
// Building and running the C targets
// ---------------------------------------------------------------------------

/// A running C target, killed and reaped on drop.
struct Target {
    guard: Guard,
    pid: i32,
    ready: BTreeMap<String, String>,
}

impl Target {
    /// Starts `testdata/NAME.c` with `args` and waits for its ready line.
    fn start<S: AsRef<OsStr>>(program: Program, args: &[S]) -> Target {
        Target::start_via(&[], program, args)
    }

    /// As [`Target::start`], run through `wrapper` (e.g. `setpriv` with its
    /// options, which then execs the target in the same process).
    fn start_via<S: AsRef<OsStr>>(wrapper: &[&str], program: Program, args: &[S]) -> Target {
        let exe = build(program);
        let mut cmd = match wrapper.split_first() {
            Some((program, options)) => {
                let mut cmd = Command::new(program);
                cmd.args(options).arg(&exe);
                cmd
            }
            None => Command::new(&exe),
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start target");
        let pid = child.id() as i32;
        let stdout = child.stdout.take().unwrap();
        let guard = Guard::new(child, false);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_else(|e| {
            panic!("{} (pid {pid}) printed no ready line: {e}", program.name())
        });
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("ready"), "{line}");
        let ready = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Target { guard, pid, ready }
    }

    fn get(&self, key: &str) -> &str {
        self.ready
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in the ready line: {:?}", self.ready))
    }

    fn num(&self, key: &str) -> i64 {
        self.get(key).parse().unwrap()
    }

    fn addr(&self, key: &str) -> u64 {
        u64::from_str_radix(self.get(key).trim_start_matches("0x"), 16).unwrap()
    }

    /// The long-lived threads `busy` lists in its ready line.
    fn stable_tids(&self) -> BTreeSet<i32> {
        self.get("tids")
            .split(',')
            .map(|t| t.parse().unwrap())
            .collect()
    }

    fn assert_alive(&mut self) {
        assert!(!self.guard.exited(), "target {} exited", self.pid);
    }
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// One thread as /proc shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Task {
    state: char,
    tracer: i32,
}

impl Task {
    /// Running (R, S, D...), group-stopped (T), ptrace-stopped (t) or dead.
    fn class(&self) -> &'static str {
        match self.state {
            'T' => "stopped",
            't' => "traced-stop",
            'Z' | 'X' | 'x' => "dead",
            _ => "running",
        }
    }
}

fn task(pid: i32, tid: i32) -> Option<Task> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    Some(Task {
        state: field("State:")?.chars().next()?,
        tracer: field("TracerPid:")?.parse().ok()?,
    })
}

fn tids(pid: i32) -> BTreeSet<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// tid -> (class, tracer) for `only` (or every thread when `None`).
fn state_of(pid: i32, only: Option<&BTreeSet<i32>>) -> BTreeMap<i32, (&'static str, i32)> {
    let all = tids(pid);
    all.iter()
        .filter(|t| only.is_none_or(|o| o.contains(t)))
        .filter_map(|&t| Some((t, task(pid, t)?)))
        .map(|(t, s)| (t, (s.class(), s.tracer)))
        .collect()
}

/// Polls until the target's threads (`only` those, if given) are in exactly
/// the `before` state, and fails with both states if they never are.
fn assert_state_is(
    pid: i32,
    only: Option<&BTreeSet<i32>>,
    before: &BTreeMap<i32, (&'static str, i32)>,
    what: &str,
) {
    let mut now = BTreeMap::new();
    let same = wait_until(STATE_TIMEOUT, || {
        now = state_of(pid, only);
        now == *before
    });
    assert!(
        same,
        "{what}: pid {pid} is not as it was.\nbefore: {before:?}\nnow:    {now:?}"
    );
}

/// The state "every one of `tids` running and untraced".
fn running_untraced(tids: &BTreeSet<i32>) -> BTreeMap<i32, (&'static str, i32)> {
    tids.iter().map(|&t| (t, ("running", 0))).collect()
}

/// Waits until every listed thread is in a state accepted by `ok`.
fn wait_states(pid: i32, only: &BTreeSet<i32>, ok: impl Fn(char) -> bool) {
    let mut last = BTreeMap::new();
    let settled = wait_until(STATE_TIMEOUT, || {
        last = only
            .iter()
            .map(|&t| (t, task(pid, t)))
            .collect::<BTreeMap<_, _>>();
        last.values().all(|s| s.is_some_and(|s| ok(s.state)))
    });
    assert!(settled, "threads of {pid} did not settle: {last:?}");
}

fn wait_sleeping(pid: i32, only: &BTreeSet<i32>) {
    wait_states(pid, only, |s| s == 'S');
}

/// SIGSTOP and wait for every thread to be in group stop.
fn stop(pid: i32, only: &BTreeSet<i32>) {
    signal(pid, libc::SIGSTOP);
    wait_states(pid, only, |s| s == 'T');
}

// ---------------------------------------------------------------------------
// Reading a core back (object's header-level reader: coresnap's cores have no
// section string table, which object's whole-file reader insists on)
// ---------------------------------------------------------------------------

use object::read::elf::{FileHeader, ProgramHeader};

type Elf = object::elf::FileHeader64<object::Endianness>;

struct Core {
    data: Vec<u8>,
}

/// NT_PRSTATUS
const NT_PRSTATUS: u32 = 1;
/// NT_FILE ("FILE")
const NT_FILE: u32 = 0x4649_4c45;
const PT_LOAD: u32 = 1;

impl Core {
    fn read(path: &Path) -> Core {
        Core {
            data: fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
        }
    }

    /// Only the first MiB: headers and notes (enough for [`Core::thread_ids`]
    /// of a small process), without reading megabytes of holes.
    fn head(path: &Path) -> Core {
        let file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut data = Vec::new();
        file.take(1 << 20).read_to_end(&mut data).unwrap();
        Core { data }
    }

    fn notes(&self) -> Vec<(u32, Vec<u8>, Vec<u8>)> {
        let data = &self.data[..];
        let header = Elf::parse(data).expect("ELF header");
        let endian = header.endian().unwrap();
        let mut out = Vec::new();
        for ph in header
            .program_headers(endian, data)
            .expect("program headers")
        {
            if let Some(mut notes) = ph.notes(endian, data).expect("notes") {
                while let Some(note) = notes.next().expect("note") {
                    out.push((
                        note.n_type(endian).0,
                        note.name().to_vec(),
                        note.desc().to_vec(),
                    ));
                }
            }
        }
        out
    }

    /// The tid of each NT_PRSTATUS, in note order.
    fn thread_ids(&self) -> Vec<i32> {
        self.notes()
            .iter()
            .filter(|(t, name, _)| *t == NT_PRSTATUS && name == b"CORE")
            .map(|(_, _, desc)| i32::from_le_bytes(desc[32..36].try_into().unwrap()))
            .collect()
    }

    /// NT_FILE entries: (start, end, offset in pages, path bytes).
    fn files(&self) -> Vec<(u64, u64, u64, Vec<u8>)> {
        let notes = self.notes();
        let (_, _, desc) = notes
            .iter()
            .find(|(t, name, _)| *t == NT_FILE && name == b"CORE")
            .expect("NT_FILE note");
        let word = |i: usize| u64::from_le_bytes(desc[i * 8..i * 8 + 8].try_into().unwrap());
        let count = word(0) as usize;
        let mut names = desc[16 + count * 24..].split(|&b| b == 0);
        (0..count)
            .map(|i| {
                (
                    word(2 + 3 * i),
                    word(3 + 3 * i),
                    word(4 + 3 * i),
                    names.next().unwrap().to_vec(),
                )
            })
            .collect()
    }

    /// The bytes the core holds for the PT_LOAD starting at `vaddr`.
    fn segment(&self, vaddr: u64) -> Option<&[u8]> {
        let data = &self.data[..];
        let header = Elf::parse(data).unwrap();
        let endian = header.endian().unwrap();
        let ph = header
            .program_headers(endian, data)
            .unwrap()
            .iter()
            .find(|ph| ph.p_type(endian).0 == PT_LOAD && ph.p_vaddr(endian) == vaddr)?;
        let offset = ph.p_offset(endian) as usize;
        Some(&data[offset..offset + ph.p_filesz(endian) as usize])
    }
}

/// The thread count coresnap's summary line reports ("..., N threads, ...").
fn reported_threads(stderr: &str) -> usize {
    let words: Vec<&str> = stderr.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "threads,")
        .unwrap_or_else(|| panic!("no thread count in {stderr:?}"));
    words[at - 1].parse().unwrap()
}

/// gdb's output (stdout and stderr merged) for `commands` run on `core`
/// (and its executable); gdb must succeed.
fn gdb_batch(exe: &Path, core: &Path, commands: &[&str]) -> String {
    output_of(
        gdb_core_command(exe, core, commands),
        &format!("gdb on {}", core.display()),
    )
}

/// The standard output of `cmd`, which must succeed within 90 s.
fn output_of(mut cmd: Command, what: &str) -> String {
    let out = run_with_timeout(&mut cmd, DEBUGGER_TIMEOUT, true);
    assert!(out.success(), "{what} failed:\n{}", out.describe());
    out.stdout
}

/// Thread ids gdb lists for a core (`info threads`, "LWP N").
fn gdb_threads(exe: &Path, core: &Path) -> BTreeSet<i32> {
    gdb_batch(exe, core, &["info threads"])
        .split("(LWP ")
        .skip(1)
        .filter_map(|s| s.split(')').next()?.trim().parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------
// Scratch directories and small mounts
// ---------------------------------------------------------------------------

fn scratch(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("coresnap-fail-{label}-"))
        .tempdir()
        .unwrap()
}

/// A tmpfs mounted on a fresh directory; unmounted (lazily) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `mount -t tmpfs -o OPTIONS`; what is missing if the mount is
    /// refused.
    fn mount(options: &str) -> Result<Tmpfs, Missing> {
        capability(Capability::SysAdmin, "to mount a small tmpfs")?;
        let dir = scratch("mnt");
        let child = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "coresnap-test"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mount(8): {e}"));
        let mut guard = Guard::new(child, false);
        let err = spawn_reader(guard.child.stderr.take().unwrap());
        let status = guard
            .wait_timeout(Duration::from_secs(30))
            .expect("mount(8) did not finish within 30 s");
        if !status.success() {
            let err = err.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
            return Err(Missing::environment(
                format!(
                    "a tmpfs mount, which mount(8) refused: {}",
                    String::from_utf8_lossy(&err).trim()
                ),
                "run the tests where mounting is allowed (root, outside a restricted container)",
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(child) = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .spawn()
        {
            let _ = Guard::new(child, false).wait_timeout(Duration::from_secs(30));
        }
    }
}

/// The largest file coresnap (`pid`) has open for writing in `dir`: its
/// output while it is being written, which has no name yet (O_TMPFILE:
/// "/dir/#123 (deleted)") or a temporary one.
fn output_len(pid: i32, dir: &Path) -> u64 {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|fd| {
        let fd = fd.ok()?.path();
        let target = fs::read_link(&fd).ok()?;
        target
            .starts_with(dir)
            .then(|| fs::metadata(&fd).ok().map(|m| m.len()))?
    })
    .max()
    .unwrap_or(0)
}

/// Waits until coresnap's output in `dir` holds at least `bytes`, i.e. the
/// memory copy is well under way.
fn wait_for_partial(dir: &Path, bytes: u64, run: &mut Background) {
    let pid = run.pid();
    let grew = wait_until(Duration::from_secs(60), || {
        output_len(pid, dir) >= bytes || run.guard.exited()
    });
    if !grew || run.guard.exited() {
        while run.next_line(Duration::from_millis(500)).is_some() {}
        panic!(
            "coresnap never got {bytes} bytes into its partial file in {} (exited: {}); stderr:\n{}",
            dir.display(),
            run.guard.exited(),
            run.stderr.join("\n")
        );
    }
}

/// Removes everything coresnap wrote into `dir` (core and manifest).
fn clear_dir(dir: &Path) {
    for name in entries(dir) {
        fs::remove_file(dir.join(name)).unwrap();
    }
}

// ---------------------------------------------------------------------------
// 1. Targets that cannot be dumped at all
// ---------------------------------------------------------------------------

/// A refusal: exit status 1, one line on stderr saying `expect`, no file.
fn assert_refused(run: &Run, dir: &Path, expect: &[&str]) {
    assert_eq!(run.code(), Some(1), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line: {run:?}");
    for e in expect {
        assert!(lines[0].contains(e), "{e:?} not in {:?}", lines[0]);
    }
    assert_dir_empty(dir, run);
}

#[test]
fn pid_that_does_not_exist_is_refused() {
    let dir = scratch("nopid");
    // A pid that existed a moment ago: a child that has been reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let gone = child.id() as i32;
    child.wait().unwrap();
    let (prefix, _) = prefix_and_core(dir.path(), gone);
    if !Path::new(&format!("/proc/{gone}")).exists() {
        let run = coresnap(&[os("-o"), prefix.clone(), os(gone.to_string())]);
        assert_refused(
            &run,
            dir.path(),
            &[&format!("process {gone} does not exist")],
        );
    }
    // Above pid_max: can never exist.
    let run = coresnap(&[os("-o"), prefix, os("99999999")]);
    assert_refused(&run, dir.path(), &["process 99999999 does not exist"]);
}

#[test]
fn kernel_thread_is_refused() {
    require!(capability(
        Capability::SysPtrace,
        "to be refused for being a kernel thread, not for permissions"
    ));
    let dir = scratch("kthread");
    // pid 2 is kthreadd whenever the pid namespace is the initial one.
    let comm = fs::read_to_string("/proc/2/comm").unwrap_or_default();
    if comm.trim() != "kthreadd" {
        skip(&Missing::environment(
            format!("the initial pid namespace (pid 2 here is {comm:?}, not kthreadd)"),
            "run the tests outside a container's pid namespace",
        ));
        return;
    }
    let before = fs::read_to_string("/proc/2/status").unwrap();
    let (prefix, _) = prefix_and_core(dir.path(), 2);
    let run = coresnap(&[os("-o"), prefix, os("2")]);
    assert_refused(&run, dir.path(), &["process 2 is a kernel thread"]);
    let after = fs::read_to_string("/proc/2/status").unwrap();
    let tracer = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("TracerPid:"))
            .map(str::to_owned)
    };
    assert_eq!(tracer(&before), tracer(&after));
}

#[test]
fn coresnap_itself_is_refused() {
    let dir = scratch("self");
    // `exec` keeps the shell's pid, so $$ is coresnap's own pid.
    let script = format!("exec \"$0\" -o '{}/core' $$", dir.path().display());
    let child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(coresnap_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    let mut guard = Guard::new(child, false);
    let err = spawn_reader(guard.child.stderr.take().unwrap());
    let status = guard.wait_timeout(RUN_TIMEOUT).expect("coresnap timed out");
    let stderr =
        String::from_utf8_lossy(&err.recv_timeout(Duration::from_secs(5)).unwrap()).into_owned();
    let run = Run {
        status,
        stderr,
        elapsed: started.elapsed(),
    };
    assert_refused(
        &run,
        dir.path(),
        &[&format!("process {pid} is coresnap itself")],
    );
}

#[test]
fn zombie_is_refused() {
    require!(ptrace_access());
    let dir = scratch("zombie");
    // Our own child that exits and is not reaped yet: a zombie.
    let child = Command::new("sh")
        .args(["-c", "exit 0"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let guard = Guard::new(child, false);
    assert!(
        wait_until(STATE_TIMEOUT, || task(pid, pid)
            .is_some_and(|t| t.state == 'Z')),
        "no zombie"
    );
    let (prefix, _) = prefix_and_core(dir.path(), pid);
    let run = coresnap(&[os("-o"), prefix, os(pid.to_string())]);
    assert_refused(&run, dir.path(), &[&format!("process {pid} is a zombie")]);
    // Still a zombie for its parent to reap, with no tracer.
    assert_eq!(
        task(pid, pid),
        Some(Task {
            state: 'Z',
            tracer: 0
        })
    );
    drop(guard);
}

/// A process whose main thread called pthread_exit() shows as a zombie in
/// /proc/PID/status while its other threads run: coresnap says exactly that
/// instead of calling it a zombie or a permission problem.
#[test]
fn process_whose_main_thread_exited_is_refused() {
    require!(ptrace_access());
    let dir = scratch("leader");
    let target = Target::start(Program::Busy, &["sleep=2", "exitmain=1"]);
    let others: BTreeSet<i32> = target
        .stable_tids()
        .into_iter()
        .filter(|&t| t != target.pid)
        .collect();
    wait_sleeping(target.pid, &others);
    assert!(wait_until(STATE_TIMEOUT, || task(target.pid, target.pid)
        .is_some_and(|t| t.state == 'Z')));
    let before = state_of(target.pid, None);
    let (prefix, _) = prefix_and_core(dir.path(), target.pid);
    let run = coresnap(&[os("-o"), prefix, os(target.pid.to_string())]);
    assert_refused(
        &run,
        dir.path(),
        &[&format!(
            "the main thread of process {} has exited while 2 other thread(s) run on",
            target.pid
        )],
    );
    assert_state_is(target.pid, None, &before, "after refusing");
}

/// A thread id is not a process id: coresnap says which process to dump
/// instead of writing a core that names a thread as the process.
#[test]
fn thread_id_is_refused_with_its_process() {
    require!(ptrace_access());
    let dir = scratch("tid");
    let target = Target::start(Program::Busy, &["sleep=2"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let before = state_of(target.pid, None);
    let tid = *stable.iter().find(|&&t| t != target.pid).unwrap();
    let (prefix, _) = prefix_and_core(dir.path(), tid);
    let run = coresnap(&[os("-o"), prefix, os(tid.to_string())]);
    assert_refused(
        &run,
        dir.path(),
        &[&format!("{tid} is a thread of process {}", target.pid)],
    );
    assert_state_is(target.pid, None, &before, "after refusing a tid");
}

// ---------------------------------------------------------------------------
// 2. Already traced
// ---------------------------------------------------------------------------

/// Starts `program args` in its own process group, killed on drop.
fn start_tool(program: &str, args: &[String]) -> Guard {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    Guard::new(child, true)
}

/// Waits until `tid` of `pid` has a tracer and returns it.
fn wait_traced(pid: i32, tid: i32) -> i32 {
    let mut tracer = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            tracer = task(pid, tid).map_or(0, |t| t.tracer);
            tracer != 0
        }),
        "thread {tid} of {pid} never got traced"
    );
    tracer
}

/// `strace -f -p PID`, once every one of `threads` is traced by it.
fn traced_by_strace(pid: i32, threads: &BTreeSet<i32>) -> Guard {
    let args = ["-f", "-o", "/dev/null", "-p"].map(String::from);
    let mut args = args.to_vec();
    args.push(pid.to_string());
    let strace = start_tool("strace", &args);
    for &tid in threads {
        wait_traced(pid, tid);
    }
    strace
}

/// `gdb -p PID` running a long shell command, once it holds every one of
/// `threads` in a ptrace stop.
fn held_by_gdb(pid: i32, threads: &BTreeSet<i32>) -> Guard {
    let args = ["-nx", "-batch", "-iex", "set debuginfod enabled off", "-p"].map(String::from);
    let mut args = args.to_vec();
    args.extend([pid.to_string(), "-ex".into(), "shell sleep 120".into()]);
    let gdb = start_tool("gdb", &args);
    for &tid in threads {
        wait_traced(pid, tid);
    }
    wait_states(pid, threads, |s| s == 't');
    gdb
}

fn comm_of(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn process_traced_by_strace_is_refused_naming_the_tracer() {
    require!(ptrace_access(), strace_installed());
    let dir = scratch("strace");
    let target = Target::start(Program::Busy, &["sleep=2"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let strace = traced_by_strace(target.pid, &stable);
    wait_states(target.pid, &stable, |s| s == 'S');
    let before = state_of(target.pid, None);
    let tracer = before[&target.pid].1;
    assert_eq!(comm_of(tracer), "strace");
    let (prefix, _) = prefix_and_core(dir.path(), target.pid);
    let run = coresnap(&[os("-o"), prefix, os(target.pid.to_string())]);
    assert_refused(
        &run,
        dir.path(),
        &[
            "already traced by strace",
            &format!("pid {tracer}"),
            "detach",
            &format!("coresnap --no-ptrace {}", target.pid),
        ],
    );
    assert_state_is(target.pid, None, &before, "traced by strace");
    drop(strace);
    assert_state_is(
        target.pid,
        None,
        &running_untraced(&stable),
        "after strace left",
    );
}

#[test]
fn process_traced_by_gdb_is_refused_naming_the_tracer() {
    require!(ptrace_access(), gdb_installed());
    let dir = scratch("gdb");
    let target = Target::start(Program::Busy, &["sleep=1"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let gdb = held_by_gdb(target.pid, &stable);
    let before = state_of(target.pid, None);
    let tracer = before[&target.pid].1;
    let (prefix, _) = prefix_and_core(dir.path(), target.pid);
    let run = coresnap(&[os("-o"), prefix, os(target.pid.to_string())]);
    assert_refused(
        &run,
        dir.path(),
        &[&format!(
            "already traced by {} (pid {tracer})",
            comm_of(tracer)
        )],
    );
    assert_state_is(target.pid, None, &before, "traced by gdb");
    drop(gdb);
}

/// gcore loops forever here; coresnap must fail within a second, name the
/// tracer and the thread, and leave every other thread running, untraced.
#[test]
fn one_thread_traced_by_strace_fails_fast_and_releases_the_others() {
    require!(ptrace_access(), strace_installed());
    let dir = scratch("strace-tid");
    let target = Target::start(Program::Busy, &["sleep=4"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let traced: i32 = *stable.iter().nth(2).unwrap();
    let strace = start_tool(
        "strace",
        &[
            "-o".into(),
            "/dev/null".into(),
            "-p".into(),
            traced.to_string(),
        ],
    );
    let tracer = wait_traced(target.pid, traced);
    wait_states(target.pid, &stable, |s| s == 'S');
    let before = state_of(target.pid, None);
    assert_eq!(
        before.values().filter(|(_, t)| *t != 0).count(),
        1,
        "{before:?}"
    );
    let (prefix, _) = prefix_and_core(dir.path(), target.pid);
    let run = coresnap(&[os("-o"), prefix, os(target.pid.to_string())]);
    assert_refused(
        &run,
        dir.path(),
        &[
            &format!("thread {traced} of process {}", target.pid),
            &format!("already traced by strace (pid {tracer})"),
        ],
    );
    assert!(
        run.elapsed < Duration::from_secs(1),
        "took {:?}",
        run.elapsed
    );
    assert_state_is(target.pid, None, &before, "one thread traced by strace");
    drop(strace);
    assert_state_is(
        target.pid,
        None,
        &running_untraced(&stable),
        "after strace left",
    );
}

// ---------------------------------------------------------------------------
// 3. Threads appearing and vanishing while coresnap attaches
// ---------------------------------------------------------------------------

#[test]
fn threads_created_and_joined_while_attaching() {
    require!(ptrace_access());
    let dir = scratch("churn");
    let mut target = Target::start(Program::Busy, &["churn=3", "sleep=1"]);
    let stable = target.stable_tids();
    let mut counts = BTreeMap::new();
    for round in 0..20 {
        let (prefix, core) = prefix_and_core(dir.path(), target.pid);
        let run = coresnap(&[
            os("--no-manifest"),
            os("-o"),
            prefix,
            os(target.pid.to_string()),
        ]);
        assert_eq!(run.code(), Some(0), "round {round}: {run:?}");
        common::elf_readers::assert_readers_agree(&core);
        let threads = Core::head(&core).thread_ids();
        assert_eq!(
            threads.len(),
            reported_threads(&run.stderr),
            "round {round}: {threads:?} vs {}",
            run.stderr
        );
        assert_eq!(threads[0], target.pid, "main thread first: {threads:?}");
        let unique: BTreeSet<i32> = threads.iter().copied().collect();
        assert_eq!(unique.len(), threads.len(), "a thread twice: {threads:?}");
        assert!(
            stable.is_subset(&unique),
            "round {round}: long-lived threads {stable:?} missing from {threads:?}"
        );
        *counts.entry(threads.len()).or_insert(0) += 1;
        if round % 10 == 9 {
            assert_eq!(
                gdb_threads(&build(Program::Busy), &core),
                unique,
                "round {round}: gdb's threads"
            );
        }
        clear_dir(dir.path());
        target.assert_alive();
        // The long-lived threads run untraced again; the short-lived ones
        // come and go, so only they can differ.
        assert_state_is(
            target.pid,
            Some(&stable),
            &running_untraced(&stable),
            "after a dump",
        );
        assert!(
            tids(target.pid)
                .iter()
                .all(|&t| task(target.pid, t).is_none_or(|s| s.tracer == 0 && s.state != 't'))
        );
    }
    eprintln!("threads per core (count: cores): {counts:?}");
}

// ---------------------------------------------------------------------------
// 4. The target dies during the dump
// ---------------------------------------------------------------------------

#[test]
fn target_killed_during_the_dump() {
    require!(ptrace_access());
    let dir = scratch("killed");
    let mut target = Target::start(Program::Busy, &["mem=1024", "sleep=1"]);
    let (prefix, _) = prefix_and_core(dir.path(), target.pid);
    let mut run = Background::start(
        &[
            OsStr::new("-o"),
            &prefix,
            OsStr::new(&target.pid.to_string()),
        ],
        false,
    );
    wait_for_partial(dir.path(), 64 << 20, &mut run);
    signal(target.pid, libc::SIGKILL);
    let run = run.finish(RUN_TIMEOUT);
    assert_eq!(run.code(), Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "process {} exited during the dump; no core was written",
            target.pid
        )),
        "{run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert_dir_empty(dir.path(), &run);
    assert!(
        target.guard.wait_timeout(STATE_TIMEOUT).is_some(),
        "the killed target was not reaped by its parent"
    );
}

// ---------------------------------------------------------------------------
// 5. A thread in uninterruptible sleep
// ---------------------------------------------------------------------------

/// A vfork parent waits for its child in TASK_KILLABLE (state D), which a
/// ptrace stop request does not interrupt: a real thread that cannot stop.
#[test]
fn thread_in_d_state_times_out_and_everything_is_released() {
    require!(ptrace_access());
    let dir = scratch("dstate");
    let DStateTarget {
        target,
        main,
        vforker,
        child: child_guard,
    } = DStateTarget::start();
    wait_states(target.pid, &BTreeSet::from([main]), |s| s == 'S');
    let before = state_of(target.pid, None);
    let (prefix, _) = prefix_and_core(dir.path(), target.pid);
    let run = coresnap(&[
        os("--timeout"),
        os("1"),
        os("-o"),
        prefix,
        os(target.pid.to_string()),
    ]);
    assert_refused(
        &run,
        dir.path(),
        &[
            &format!(
                "thread {vforker} of process {} did not stop within 1s (state D)",
                target.pid
            ),
            "released",
        ],
    );
    assert!(
        run.elapsed >= Duration::from_secs(1) && run.elapsed < Duration::from_secs(4),
        "took {:?}",
        run.elapsed
    );
    assert_state_is(target.pid, None, &before, "after the timeout");
    // Once its vfork child is gone the thread runs on, and nobody stops it.
    drop(child_guard);
    let after: BTreeSet<i32> = [main, vforker].into();
    wait_sleeping(target.pid, &after);
    assert_state_is(
        target.pid,
        None,
        &running_untraced(&after),
        "after the vfork child exited",
    );
}

/// The thread that could not be stopped is released before coresnap moves on
/// to the next pid (and so before a library caller gets the error back): when
/// it leaves D state while coresnap is still busy, it must not stop.
#[test]
fn d_state_thread_is_released_before_the_next_pid() {
    require!(ptrace_access());
    let dir = scratch("dstate-next");
    let DStateTarget {
        target,
        main,
        vforker,
        child: child_guard,
    } = DStateTarget::start();
    let big = Target::start(Program::Busy, &["mem=1024"]);
    let prefix = dir.path().join("core").into_os_string();
    let (pid, big_pid) = (target.pid.to_string(), big.pid.to_string());
    let args = ["--no-manifest", "--timeout", "1", "-o"].map(OsStr::new);
    let mut run = Background::start(
        &[
            &args[..],
            &[&prefix, OsStr::new(&pid), OsStr::new(&big_pid)],
        ]
        .concat(),
        false,
    );
    let first = run
        .next_line(Duration::from_secs(30))
        .expect("no error for the D-state target");
    assert!(first.contains("did not stop within"), "{first}");
    // coresnap is now dumping the big target; let the vforker go.
    drop(child_guard);
    let both: BTreeSet<i32> = [main, vforker].into();
    wait_sleeping(target.pid, &both);
    let now = state_of(target.pid, None);
    assert!(
        !run.guard.exited(),
        "coresnap finished too soon for this test to mean anything"
    );
    assert_eq!(
        now,
        running_untraced(&both),
        "while coresnap dumps the next pid"
    );
    let run = run.finish(RUN_TIMEOUT);
    assert_eq!(run.code(), Some(1), "{run:?}");
    // Only the second target's core (and its manifest) was written.
    let written: Vec<OsString> = entries(dir.path());
    assert!(
        dir.path().join(format!("core.{}", big.pid)).exists(),
        "{written:?} {run:?}"
    );
    common::elf_readers::assert_readers_agree(&dir.path().join(format!("core.{}", big.pid)));
    assert!(
        written.iter().all(|n| n
            .as_bytes()
            .starts_with(format!("core.{}", big.pid).as_bytes())),
        "{written:?}"
    );
}

/// SIGINT while coresnap waits for a thread that does not stop: it gives up
/// at once, releases the threads it stopped, and exits 130.
#[test]
fn sigint_while_waiting_for_a_d_state_thread() {
    require!(ptrace_access());
    let dir = scratch("dstate-sigint");
    let DStateTarget {
        target,
        main,
        child: _child,
        ..
    } = DStateTarget::start();
    wait_states(target.pid, &BTreeSet::from([main]), |s| s == 'S');
    let before = state_of(target.pid, None);
    let (prefix, _) = prefix_and_core(dir.path(), target.pid);
    let pid = target.pid.to_string();
    let run = Background::start(
        &[
            OsStr::new("--timeout"),
            OsStr::new("60"),
            OsStr::new("-o"),
            &prefix,
            OsStr::new(&pid),
        ],
        false,
    );
    // The main thread is held; the vforker is what coresnap waits for.
    let held = wait_until(Duration::from_secs(30), || {
        task(target.pid, main).is_some_and(|t| t.tracer == run.pid() && t.state == 't')
    });
    assert!(
        held,
        "coresnap never stopped the main thread: {:?}",
        state_of(target.pid, None)
    );
    signal(run.pid(), libc::SIGINT);
    let signalled = Instant::now();
    let run = run.finish(Duration::from_secs(10));
    assert_eq!(run.code(), Some(130), "{run:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "took {:?} to give up",
        signalled.elapsed()
    );
    assert!(
        run.stderr
            .contains("interrupted by signal 2 while attaching; every thread was released"),
        "{run:?}"
    );
    assert_dir_empty(dir.path(), &run);
    assert_state_is(target.pid, None, &before, "after SIGINT while attaching");
}

/// Kills a pid (not our child: the vfork child of a target) on drop.
struct ChildKiller(i32);

/// `testdata/dstate.c` once its vfork parent sleeps in D state, with the
/// ids of its main thread and of that thread; the vfork child, which the
/// target's guard does not reach, is killed on drop.
struct DStateTarget {
    target: Target,
    main: i32,
    vforker: i32,
    child: ChildKiller,
}

impl DStateTarget {
    fn start() -> DStateTarget {
        let target = Target::start(Program::DState, &[] as &[&str]);
        let main = target.num("main") as i32;
        let vforker = target.num("vforker") as i32;
        let child = ChildKiller(target.num("child") as i32);
        wait_states(target.pid, &BTreeSet::from([vforker]), |s| s == 'D');
        DStateTarget {
            target,
            main,
            vforker,
            child,
        }
    }
}

impl Drop for ChildKiller {
    fn drop(&mut self) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

// ---------------------------------------------------------------------------
// 6. coresnap is signalled mid-dump
// ---------------------------------------------------------------------------

#[test]
fn sigint_sigterm_sighup_mid_dump_release_the_target_and_remove_the_file() {
    require!(ptrace_access());
    let dir = scratch("signals");
    let mut target = Target::start(Program::Busy, &["mem=1024", "sleep=2"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let before = state_of(target.pid, None);
    let (prefix, _) = prefix_and_core(dir.path(), target.pid);
    for (sig, code) in [
        (libc::SIGINT, 130),
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
    ] {
        let mut run = Background::start(
            &[
                OsStr::new("-o"),
                &prefix,
                OsStr::new(&target.pid.to_string()),
            ],
            false,
        );
        wait_for_partial(dir.path(), 64 << 20, &mut run);
        signal(run.pid(), sig);
        let run = run.finish(Duration::from_secs(10));
        assert_eq!(run.code(), Some(code), "signal {sig}: {run:?}");
        assert!(
            run.stderr.contains(&format!("interrupted by signal {sig}")),
            "{run:?}"
        );
        assert_dir_empty(dir.path(), &run);
        target.assert_alive();
        assert_state_is(target.pid, None, &before, &format!("after signal {sig}"));
    }
}

/// SIGKILL cannot be caught: the kernel's implicit detach must leave the
/// target running, not stopped, untraced.
#[test]
fn sigkill_mid_dump_leaves_the_target_running() {
    require!(ptrace_access());
    let dir = scratch("sigkill");
    let mut target = Target::start(Program::Busy, &["mem=1024", "sleep=2"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let before = state_of(target.pid, None);
    let (prefix, _) = prefix_and_core(dir.path(), target.pid);
    let mut run = Background::start(
        &[
            OsStr::new("-o"),
            &prefix,
            OsStr::new(&target.pid.to_string()),
        ],
        false,
    );
    wait_for_partial(dir.path(), 64 << 20, &mut run);
    assert!(
        state_of(target.pid, None)
            .values()
            .all(|(c, t)| *c == "traced-stop" && *t == run.pid())
    );
    signal(run.pid(), libc::SIGKILL);
    let run = run.finish(Duration::from_secs(10));
    assert_eq!(run.status.signal(), Some(libc::SIGKILL), "{run:?}");
    target.assert_alive();
    assert_state_is(target.pid, None, &before, "after SIGKILL of coresnap");
    // Nothing can remove a named file after SIGKILL; an unnamed one is gone.
    assert_dir_empty(dir.path(), &run);
}

/// Streaming to a pipe that nobody reads blocks coresnap in write(); SIGTERM
/// must still release the target and end coresnap.
#[test]
fn sigterm_while_blocked_on_a_full_pipe() {
    require!(ptrace_access());
    let target = Target::start(Program::Busy, &["mem=64", "sleep=1"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let before = state_of(target.pid, None);
    let pid = target.pid.to_string();
    let run = Background::start(&[OsStr::new("-o"), OsStr::new("-"), OsStr::new(&pid)], true);
    // Frozen, and coresnap stuck writing: the pipe holds 64 KiB.
    assert!(wait_until(Duration::from_secs(30), || state_of(
        target.pid, None
    )
    .values()
    .all(|(c, _)| *c == "traced-stop")));
    let wchan = format!("/proc/{}/wchan", run.pid());
    let stuck = wait_until(Duration::from_secs(30), || {
        fs::read_to_string(&wchan).is_ok_and(|w| w.trim().ends_with("pipe_write"))
    });
    assert!(
        stuck,
        "coresnap is not blocked writing to the pipe: {:?}",
        fs::read_to_string(&wchan)
    );
    signal(run.pid(), libc::SIGTERM);
    let started = Instant::now();
    assert_state_is(target.pid, None, &before, "after SIGTERM while blocked");
    let released_after = started.elapsed();
    let run = run.finish(Duration::from_secs(15));
    assert_eq!(run.code(), Some(143), "{run:?}");
    assert!(run.stderr.contains("after signal 15"), "{run:?}");
    assert!(
        released_after < Duration::from_secs(4),
        "target released only after {released_after:?}"
    );
}

// ---------------------------------------------------------------------------
// 7. Output that cannot be written
// ---------------------------------------------------------------------------

#[test]
fn read_only_output_directory() {
    require!(ptrace_access());
    let Some(mnt) = available(Tmpfs::mount("ro,size=1m")) else {
        return;
    };
    let target = Target::start(Program::Busy, &["sleep=1"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let before = state_of(target.pid, None);
    let (prefix, _) = prefix_and_core(mnt.path(), target.pid);
    let run = coresnap(&[os("-o"), prefix, os(target.pid.to_string())]);
    assert_refused(
        &run,
        mnt.path(),
        &[
            &format!("cannot create the core in {}", mnt.path().display()),
            "Read-only file system",
        ],
    );
    assert_state_is(target.pid, None, &before, "after a read-only directory");
}

/// A 1 MiB tmpfs and a target with 16 MiB of data: ENOSPC mid-copy.
fn disk_full(stopped: bool) {
    let Some(mnt) = available(Tmpfs::mount("size=1m")) else {
        return;
    };
    let target = Target::start(Program::Busy, &["mem=16", "sleep=2"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    if stopped {
        stop(target.pid, &stable);
    }
    let before = state_of(target.pid, None);
    let (prefix, core) = prefix_and_core(mnt.path(), target.pid);
    let run = coresnap(&[os("-o"), prefix, os(target.pid.to_string())]);
    assert_refused(
        &run,
        mnt.path(),
        &[
            &format!("cannot write {}", core.display()),
            "No space left on device",
        ],
    );
    assert_state_is(target.pid, None, &before, "after ENOSPC");
}

#[test]
fn disk_full_removes_the_partial_file_and_resumes_the_target() {
    require!(ptrace_access());
    disk_full(false);
}

// ---------------------------------------------------------------------------
// 8. Awkward file names
// ---------------------------------------------------------------------------

/// Maps files named `names` (in a fresh directory) into `mapnames`, dumps it
/// with private file mappings included, and checks that NT_FILE names each
/// one byte for byte and that the core holds its bytes.
fn check_mapped_names(names: &[&[u8]]) {
    let dir = scratch("names");
    let files = scratch("files");
    let mut paths = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = files.path().join(OsStr::from_bytes(name));
        let content: Vec<u8> = (0..3 * 4096 + 100)
            .map(|j| (i * 31 + j * 7) as u8 | 1)
            .collect();
        fs::write(&path, &content).unwrap();
        paths.push((path, content));
    }
    let args: Vec<&OsStr> = paths.iter().map(|(p, _)| p.as_os_str()).collect();
    let target = Target::start(Program::MapNames, &args);
    let before = state_of(target.pid, None);
    let (prefix, core_path) = prefix_and_core(dir.path(), target.pid);
    // Bit 2: dump private file mappings whole, so their bytes can be compared.
    let run = coresnap(&[
        os("--filter"),
        os("0x37"),
        os("-o"),
        prefix,
        os(target.pid.to_string()),
    ]);
    assert_eq!(run.code(), Some(0), "{run:?}");
    common::elf_readers::assert_readers_agree(&core_path);
    assert_state_is(target.pid, None, &before, "after dumping");
    let core = Core::read(&core_path);
    let files_note = core.files();
    for (i, (path, content)) in paths.iter().enumerate() {
        let start = target.addr(&format!("map{i}"));
        let len = target.num(&format!("len{i}")) as u64;
        let entry = files_note
            .iter()
            .find(|(s, _, _, _)| *s == start)
            .unwrap_or_else(|| {
                panic!("no NT_FILE entry at {start:#x} for {path:?}: {files_note:?}")
            });
        assert_eq!(
            String::from_utf8_lossy(&entry.3),
            String::from_utf8_lossy(path.as_os_str().as_bytes()),
            "NT_FILE name at {start:#x}"
        );
        assert_eq!(
            entry.3,
            path.as_os_str().as_bytes(),
            "NT_FILE name at {start:#x}"
        );
        assert_eq!((entry.1 - entry.0, entry.2), (len.div_ceil(4096) * 4096, 0));
        let bytes = core
            .segment(start)
            .unwrap_or_else(|| panic!("no PT_LOAD at {start:#x}"));
        assert_eq!(&bytes[..content.len()], &content[..], "memory of {path:?}");
    }
    // gdb loads it and reads each file's first bytes from the core.
    let commands: Vec<String> = (0..paths.len())
        .map(|i| format!("x/1xb {:#x}", target.addr(&format!("map{i}"))))
        .collect();
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let out = gdb_batch(&build(Program::MapNames), &core_path, &commands);
    for (i, (_, content)) in paths.iter().enumerate() {
        let start = target.addr(&format!("map{i}"));
        assert!(
            out.contains(&format!("{start:#x}:\t{:#04x}", content[0])),
            "gdb's byte at {start:#x} (file {i}):\n{out}"
        );
    }
}

#[test]
fn mapped_files_with_awkward_names() {
    require!(
        ptrace_access(),
        capability(
            Capability::SysAdmin,
            "coresnap reads such names from /proc/PID/map_files"
        )
    );
    check_mapped_names(&[
        b"with space",
        b"new\nline",
        b"not-utf8-\xff\xfe\xe9",
        b"tab\tand  two spaces ",
        b" leading space",
    ]);
}

/// smaps prints a newline in a name as `\012` and leaves backslashes alone,
/// so a name that really holds `\012` reads like one with a newline; the
/// collector takes such names from `/proc/PID/map_files` instead.
#[test]
fn mapped_file_whose_name_holds_a_literal_backslash_012() {
    require!(
        ptrace_access(),
        capability(
            Capability::SysAdmin,
            "coresnap reads such names from /proc/PID/map_files"
        )
    );
    check_mapped_names(&[b"back\\012slash"]);
}

// ---------------------------------------------------------------------------
// 9. A stopped target stays stopped after a failed dump
// ---------------------------------------------------------------------------

#[test]
fn stopped_target_stays_stopped_after_disk_full() {
    require!(ptrace_access());
    disk_full(true);
}

/// Starts dumping `target` (with `extra` options) into `dir`, sends
/// coresnap SIGTERM once 64 MiB are written, and expects exit 143 and no
/// file left.
fn sigterm_mid_dump(target: &Target, dir: &Path, extra: &[&str]) {
    let (prefix, _) = prefix_and_core(dir, target.pid);
    let pid = target.pid.to_string();
    let mut args: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
    args.extend([OsStr::new("-o"), &prefix, OsStr::new(&pid)]);
    let mut run = Background::start(&args, false);
    wait_for_partial(dir, 64 << 20, &mut run);
    signal(run.pid(), libc::SIGTERM);
    let run = run.finish(Duration::from_secs(10));
    assert_eq!(run.code(), Some(143), "{run:?}");
    assert_dir_empty(dir, &run);
}

#[test]
fn stopped_target_stays_stopped_after_sigterm_mid_dump() {
    require!(ptrace_access());
    let dir = scratch("stopped-signal");
    let mut target = Target::start(Program::Busy, &["mem=1024", "sleep=2"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    stop(target.pid, &stable);
    let before = state_of(target.pid, None);
    sigterm_mid_dump(&target, dir.path(), &[]);
    target.assert_alive();
    assert_state_is(target.pid, None, &before, "stopped target after SIGTERM");
}

#[test]
fn stopped_target_stays_stopped_after_d_state_timeout() {
    require!(ptrace_access());
    let dir = scratch("stopped-dstate");
    let DStateTarget {
        target,
        main,
        vforker,
        child: _child,
    } = DStateTarget::start();
    // The group stop reaches main; the vforker stays in D until it returns.
    signal(target.pid, libc::SIGSTOP);
    wait_states(target.pid, &BTreeSet::from([main]), |s| s == 'T');
    let before = state_of(target.pid, None);
    let (prefix, _) = prefix_and_core(dir.path(), target.pid);
    let run = coresnap(&[
        os("--timeout"),
        os("1"),
        os("-o"),
        prefix,
        os(target.pid.to_string()),
    ]);
    assert_refused(
        &run,
        dir.path(),
        &[&format!("thread {vforker}"), "did not stop within 1s"],
    );
    assert_state_is(target.pid, None, &before, "stopped target after a timeout");
}

// ---------------------------------------------------------------------------
// Soak
// ---------------------------------------------------------------------------

/// 200 dumps in a row of a busy multi-threaded target: every core holds every
/// thread, every 20th loads in gdb with all of them, and the target runs on
/// untraced after each.
#[test]
fn soak_200_dumps_of_a_busy_target() {
    require!(ptrace_access());
    let dir = scratch("soak");
    let mut target = Target::start(Program::Busy, &["spin=1", "sleep=4"]);
    let stable = target.stable_tids();
    assert_eq!(stable.len(), 6);
    let exe = build(Program::Busy);
    let started = Instant::now();
    let mut pauses = Vec::new();
    let (mut in_coresnap, mut in_gdb) = (Duration::ZERO, Duration::ZERO);
    for round in 1..=200 {
        let (prefix, core) = prefix_and_core(dir.path(), target.pid);
        // No manifest: hashing is not what this is about, and takes most of
        // the time of a debug build.
        let run = coresnap(&[
            os("--no-manifest"),
            os("-o"),
            prefix,
            os(target.pid.to_string()),
        ]);
        in_coresnap += run.elapsed;
        assert_eq!(run.code(), Some(0), "round {round}: {run:?}");
        common::elf_readers::assert_readers_agree(&core);
        let threads = Core::head(&core).thread_ids();
        assert_eq!(threads[0], target.pid, "round {round}");
        assert_eq!(
            threads.iter().copied().collect::<BTreeSet<_>>(),
            stable,
            "round {round}"
        );
        assert_eq!(threads.len(), stable.len(), "round {round}: {threads:?}");
        assert_eq!(reported_threads(&run.stderr), stable.len(), "round {round}");
        let pause_ms = run
            .stderr
            .split("target paused ")
            .nth(1)
            .and_then(|s| s.split(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("round {round}: no \"target paused N ms\" in {run:?}"));
        pauses.push(pause_ms);
        if round % 20 == 0 {
            let gdb_started = Instant::now();
            assert_eq!(gdb_threads(&exe, &core), stable, "gdb, round {round}");
            in_gdb += gdb_started.elapsed();
        }
        clear_dir(dir.path());
        target.assert_alive();
        assert_state_is(
            target.pid,
            None,
            &running_untraced(&stable),
            &format!("after round {round}"),
        );
    }
    pauses.sort_by(f64::total_cmp);
    let (median, max) = (pauses[pauses.len() / 2], pauses[pauses.len() - 1]);
    eprintln!(
        "200 dumps in {:?} (coresnap {in_coresnap:?}, gdb {in_gdb:?}); pause median {median:.2} ms, max {max:.2} ms",
        started.elapsed(),
    );
    // The pause holds six threads while a few MiB are copied: about 20 ms
    // median and 90 ms at most for a debug build on a 2-core machine that
    // runs other tests at the same time. Five times that median still
    // leaves room for a loaded machine, but not for a pause that waits on
    // a timer or copies memory a second time; one second at most allows
    // for a preempted round, not for a thread-stop timeout (seconds).
    assert!(
        median <= 100.0,
        "median pause {median:.2} ms over 200 dumps; expected at most 100 ms (about 20 ms here)"
    );
    assert!(
        max <= 1000.0,
        "longest pause {max:.2} ms over 200 dumps; expected at most 1 s"
    );
    assert!(entries(dir.path()).is_empty());
}

// ---------------------------------------------------------------------------
// 10. Permission denied: each reason the kernel has, provoked for real
// (Yama's ptrace_scope is not in this kernel; its messages are unit-tested in
// src/process/permission.rs)
// ---------------------------------------------------------------------------

/// `setpriv` options that run a program as nobody:nogroup.
const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// `setpriv` options that run a program as root without CAP_SYS_PTRACE.
const WITHOUT_CAP_SYS_PTRACE: [&str; 3] =
    ["setpriv", "--inh-caps=-all", "--bounding-set=-sys_ptrace"];

/// Whether coresnap and the test targets can be run through `wrapper`:
/// setpriv present, the capabilities it needs to change user
/// (CAP_SETUID, CAP_SETGID) or drop one from the bounding set (CAP_SETPCAP),
/// and the build directories readable by that user.
fn runs_via(wrapper: &[&str]) -> Result<(), Missing> {
    program("setpriv", "--version", "util-linux")?;
    if wrapper.iter().any(|w| w.starts_with("--reuid")) {
        capability(Capability::Setuid, "for setpriv to run coresnap as nobody")?;
        capability(Capability::Setgid, "for setpriv to run coresnap as nogroup")?;
    }
    if wrapper.iter().any(|w| w.starts_with("--bounding-set")) {
        capability(
            Capability::Setpcap,
            "for setpriv to drop CAP_SYS_PTRACE from the bounding set",
        )?;
    }
    let run = coresnap_via(wrapper, &["--version"]);
    if run.status.success() {
        Ok(())
    } else {
        Err(Missing::environment(
            format!(
                "coresnap runnable through {wrapper:?}, which failed: {}",
                run.stderr.trim()
            ),
            "make the build directory (target/) readable and searchable by that user",
        ))
    }
}

/// A scratch directory anyone may write into.
fn scratch_for_anyone(label: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch(label);
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Runs coresnap through `wrapper` on `target` (sleeping threads), with and
/// without `--no-ptrace`, and expects each run refused with `expect` and the
/// target left running and untraced.
fn assert_refused_via(wrapper: &[&str], target: &Target, dir: &Path, expect: &[&str]) {
    let stable = target.stable_tids();
    let (prefix, _) = prefix_and_core(dir, target.pid);
    for extra in [None, Some("--no-ptrace")] {
        let mut args = vec![os("-o"), prefix.clone(), os(target.pid.to_string())];
        args.extend(extra.map(os));
        let run = coresnap_via(wrapper, &args);
        assert_refused(&run, dir, expect);
        assert_state_is(
            target.pid,
            None,
            &running_untraced(&stable),
            &format!("{extra:?}"),
        );
    }
}

#[test]
fn permission_denied_for_another_users_process() {
    require!(ptrace_access(), runs_via(&AS_NOBODY));
    let dir = scratch_for_anyone("otheruser");
    let target = Target::start(Program::Busy, &["sleep=1"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    assert_refused_via(
        &AS_NOBODY,
        &target,
        dir.path(),
        &[
            &format!("permission denied to thread {0} of process {0}", target.pid),
            "the process runs as uid 0 and coresnap as uid 65534",
            "run coresnap as uid 0 or as root",
        ],
    );
}

#[test]
fn permission_denied_for_a_process_that_is_not_dumpable() {
    require!(
        capability(
            Capability::SysPtrace,
            "to dump a process that is not dumpable"
        ),
        runs_via(&AS_NOBODY)
    );
    let dir = scratch_for_anyone("nodump");
    let mut target = Target::start_via(&AS_NOBODY, Program::Busy, &["sleep=1", "nodump=1"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    assert_refused_via(
        &AS_NOBODY,
        &target,
        dir.path(),
        &[
            "the process is not dumpable",
            "PR_SET_DUMPABLE",
            "run coresnap as root",
        ],
    );
    // The advice holds: root dumps it.
    let (prefix, core) = prefix_and_core(dir.path(), target.pid);
    let run = coresnap(&[os("-o"), prefix, os(target.pid.to_string())]);
    assert_eq!(run.code(), Some(0), "{run:?}");
    common::elf_readers::assert_readers_agree(&core);
    assert_eq!(Core::read(&core).thread_ids().len(), stable.len());
    assert_eq!(gdb_threads(&build(Program::Busy), &core), stable);
    target.assert_alive();
    assert_state_is(
        target.pid,
        None,
        &running_untraced(&stable),
        "after root's dump",
    );
}

#[test]
fn permission_denied_without_cap_sys_ptrace() {
    require!(
        capability(
            Capability::SysPtrace,
            "so that the target holds a capability coresnap lacks"
        ),
        runs_via(&WITHOUT_CAP_SYS_PTRACE)
    );
    let dir = scratch("nocap");
    let target = Target::start(Program::Busy, &["sleep=1"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    assert_refused_via(
        &WITHOUT_CAP_SYS_PTRACE,
        &target,
        dir.path(),
        &[
            "holds capabilities that coresnap lacks (CAP_SYS_PTRACE)",
            "run it as root with CAP_SYS_PTRACE",
        ],
    );
}

// ---------------------------------------------------------------------------
// 11. --no-ptrace: a best-effort core of a process that cannot be attached
// ---------------------------------------------------------------------------

/// Whether the target, a child of this test, reported a job-control stop
/// or continue (SIGSTOP, SIGCONT) since the last look; the report is
/// consumed, as a shell's wait would.
fn job_control_reported(pid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`; WNOHANG never blocks.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WSTOPPED | libc::WCONTINUED | libc::WNOHANG,
        )
    };
    assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
    // SAFETY: waitid filled in the SIGCHLD fields (si_pid 0: no report).
    unsafe { info.si_pid() != 0 }
}

/// The `capture` object of the manifest next to `core`.
fn manifest_capture(core: &Path) -> serde_json::Value {
    let path = PathBuf::from(format!("{}.json", core.display()));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["capture"].clone()
}

/// Checks a --no-ptrace core of `busy sleep=N mem=M` in gdb: every thread
/// is there, each stopped in pause() with the caller named, and the memory
/// holds the target's pattern.
fn check_unattached_core(target: &Target, core: &Path, stable: &BTreeSet<i32>) {
    let exe = build(Program::Busy);
    assert_eq!(gdb_threads(&exe, core), *stable);
    let mem = target.addr("mem");
    let out = gdb_batch(
        &exe,
        core,
        &[
            "thread apply all bt 3",
            &format!("x/gx {:#x}", mem + 5 * 4096),
        ],
    );
    let traces: Vec<&str> = out.split("\nThread ").skip(1).collect();
    assert_eq!(traces.len(), stable.len(), "{out}");
    for trace in traces {
        assert!(trace.contains("pause"), "not in pause():\n{trace}");
        let tid: i32 = trace
            .split("(LWP ")
            .nth(1)
            .and_then(|s| s.split(')').next()?.parse().ok())
            .unwrap();
        let caller = if tid == target.pid { "main" } else { "sleeper" };
        assert!(
            trace.contains(&format!(" in {caller} ")),
            "thread {tid} does not show its caller {caller}:\n{trace}"
        );
    }
    assert!(
        out.contains(":\t0xb5b5000000000005"),
        "memory pattern missing:\n{out}"
    );
    // elfutils reads it too: every thread, each in pause().
    let mut cmd = Command::new("eu-stack");
    cmd.arg("--core").arg(core).arg("-e").arg(&exe);
    let out = output_of(cmd, "eu-stack");
    let threads: Vec<&str> = out.split("TID ").skip(1).collect();
    assert_eq!(threads.len(), stable.len(), "{out}");
    assert!(threads.iter().all(|t| t.contains("pause")), "{out}");
}

/// Dumps `target` (`busy sleep=N mem=M`) with `--no-ptrace` and `extra`
/// options into `dir`, expects success, the summary and manifest to name
/// `held_by`, the registers to be marked partial, and the core to pass
/// [`check_unattached_core`]; the core's path.
fn dump_unattached(target: &Target, dir: &Path, extra: &[&str], held_by: &str) -> PathBuf {
    let (prefix, core) = prefix_and_core(dir, target.pid);
    let mut args = vec![os("--no-ptrace")];
    args.extend(extra.iter().map(os));
    args.extend([os("-o"), prefix, os(target.pid.to_string())]);
    let run = coresnap(&args);
    assert_eq!(run.code(), Some(0), "{run:?}");
    common::elf_readers::assert_readers_agree(&core);
    assert!(run.stderr.contains("the registers are partial"), "{run:?}");
    let capture = manifest_capture(&core);
    assert_eq!(capture["registers"], "partial", "{capture}");
    assert_eq!(capture["freeze"], held_by, "{capture}");
    check_unattached_core(target, &core, &target.stable_tids());
    core
}

#[test]
fn no_ptrace_dumps_a_process_that_strace_traces() {
    require!(ptrace_access(), strace_installed());
    let dir = scratch("noptrace-strace");
    let target = Target::start(Program::Busy, &["sleep=2", "mem=8"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let strace = traced_by_strace(target.pid, &stable);
    wait_sleeping(target.pid, &stable);
    let before = state_of(target.pid, None);
    dump_unattached(&target, dir.path(), &[], "sigstop");
    // Still traced by strace, and running: the SIGSTOP was undone.
    assert_state_is(target.pid, None, &before, "after the dump");
    drop(strace);
}

#[test]
fn no_ptrace_dumps_a_process_that_gdb_holds_and_leaves_it_to_gdb() {
    require!(ptrace_access(), gdb_installed());
    let dir = scratch("noptrace-gdb");
    let target = Target::start(Program::Busy, &["sleep=2", "mem=8"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let gdb = held_by_gdb(target.pid, &stable);
    let before = state_of(target.pid, None);
    let core = dump_unattached(&target, dir.path(), &[], "already-stopped");
    // coresnap inspect says how the core was taken.
    let mut cmd = Command::new(coresnap_bin());
    cmd.arg("inspect").arg(&core);
    let inspect = output_of(cmd, "coresnap inspect");
    assert!(
        inspect.contains("without ptrace (held by already-stopped): registers partial"),
        "{inspect}"
    );
    assert!(
        !job_control_reported(target.pid),
        "coresnap sent a job-control signal to a process gdb held"
    );
    assert_state_is(target.pid, None, &before, "still held by gdb");
    drop(gdb);
}

#[test]
fn no_ptrace_undoes_its_sigstop_and_keeps_a_stop_it_found() {
    require!(ptrace_access());
    let dir = scratch("noptrace-stop");
    let target = Target::start(Program::Busy, &["sleep=2", "mem=8"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    dump_unattached(&target, dir.path(), &[], "sigstop");
    assert!(
        job_control_reported(target.pid),
        "the target was never stopped and continued"
    );
    assert_state_is(
        target.pid,
        None,
        &running_untraced(&stable),
        "after SIGCONT",
    );
    clear_dir(dir.path());

    stop(target.pid, &stable);
    assert!(job_control_reported(target.pid));
    dump_unattached(&target, dir.path(), &[], "already-stopped");
    assert!(
        !job_control_reported(target.pid),
        "coresnap continued a stop it did not cause"
    );
    let stopped: BTreeMap<_, _> = stable.iter().map(|&t| (t, ("stopped", 0))).collect();
    assert_state_is(target.pid, None, &stopped, "left stopped");
}

#[test]
fn no_ptrace_without_freezing() {
    require!(ptrace_access());
    let dir = scratch("noptrace-nofreeze");
    let target = Target::start(Program::Busy, &["sleep=2", "mem=8"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    // Sleeping threads are not running: /proc still shows where they are.
    dump_unattached(&target, dir.path(), &["--no-freeze"], "none");
    assert!(!job_control_reported(target.pid), "the target was stopped");
    assert_state_is(target.pid, None, &running_untraced(&stable), "after");
}

/// A cgroup v2 directory made for one test, removed on drop (once empty).
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// A fresh cgroup under the first cgroup2 mount, or what is missing.
    fn create(label: &str) -> Result<Cgroup, Missing> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_else(|e| panic!("reading /proc/self/mountinfo: {e}"));
        let mount = mountinfo.lines().find_map(|line| {
            let (fields, fs_type) = line.split_once(" - ")?;
            if fs_type.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            fields.split_whitespace().nth(4).map(PathBuf::from)
        });
        let Some(mount) = mount else {
            return Err(Missing::environment(
                "a cgroup2 file system, which is not mounted",
                "mount it (mount -t cgroup2 none /sys/fs/cgroup)",
            ));
        };
        let dir = mount.join(format!("coresnap-test-{label}-{}", std::process::id()));
        if let Err(e) = fs::create_dir(&dir) {
            return Err(Missing::environment(
                format!(
                    "a cgroup of its own, but creating {} failed: {e}",
                    dir.display()
                ),
                "run the tests as root with a writable cgroup2 mount",
            ));
        }
        if !dir.join("cgroup.freeze").exists() {
            let _ = fs::remove_dir(&dir);
            return Err(Missing::not_applicable(format!(
                "the kernel's cgroup2 has no freezer ({} lacks cgroup.freeze; Linux 5.2+)",
                dir.display()
            )));
        }
        Ok(Cgroup { dir })
    }

    fn add(&self, pid: i32) -> Result<(), Missing> {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).map_err(|e| {
            Missing::environment(
                format!(
                    "moving pid {pid} into {}, which failed: {e}",
                    self.dir.display()
                ),
                "run the tests as root with a writable cgroup2 mount",
            )
        })
    }

    fn frozen(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.events"))
            .unwrap()
            .lines()
            .any(|l| l == "frozen 1")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The processes in it are killed first; rmdir works once they are
        // reaped.
        if !wait_until(Duration::from_secs(10), || {
            fs::remove_dir(&self.dir).is_ok()
        }) {
            eprintln!("warning: could not remove {}", self.dir.display());
        }
    }
}

#[test]
fn no_ptrace_freezes_the_targets_own_cgroup() {
    require!(ptrace_access());
    let Some(cgroup) = available(Cgroup::create("freeze")) else {
        return;
    };
    let dir = scratch("noptrace-cgroup");
    let target = Target::start(Program::Busy, &["sleep=2", "mem=8"]);
    require!(cgroup.add(target.pid));
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    dump_unattached(&target, dir.path(), &[], "cgroup-freezer");
    assert!(!cgroup.frozen(), "the cgroup was left frozen");
    assert!(
        !job_control_reported(target.pid),
        "the target got SIGSTOP although its cgroup could be frozen"
    );
    assert_state_is(target.pid, None, &running_untraced(&stable), "after");
}

/// coresnap stuck writing to a pipe nobody reads gets out by exiting; the
/// kernel does not undo its SIGSTOP as it undoes ptrace stops, so coresnap
/// sends SIGCONT before it exits.
#[test]
fn no_ptrace_forced_exit_while_blocked_still_continues_the_target() {
    require!(ptrace_access());
    let target = Target::start(Program::Busy, &["mem=64", "sleep=1"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    let pid = target.pid.to_string();
    let run = Background::start(
        &[
            OsStr::new("--no-ptrace"),
            OsStr::new("-o"),
            OsStr::new("-"),
            OsStr::new(&pid),
        ],
        true,
    );
    let stopped: BTreeMap<_, _> = stable.iter().map(|&t| (t, ("stopped", 0))).collect();
    assert_state_is(target.pid, None, &stopped, "held with SIGSTOP");
    let wchan = format!("/proc/{}/wchan", run.pid());
    assert!(
        wait_until(Duration::from_secs(30), || {
            fs::read_to_string(&wchan).is_ok_and(|w| w.trim().ends_with("pipe_write"))
        }),
        "coresnap is not blocked writing to the pipe"
    );
    signal(run.pid(), libc::SIGTERM);
    let run = run.finish(Duration::from_secs(15));
    assert_eq!(run.code(), Some(143), "{run:?}");
    assert!(run.stderr.contains("after signal 15"), "{run:?}");
    assert_state_is(
        target.pid,
        None,
        &running_untraced(&stable),
        "after the forced exit",
    );
}

#[test]
fn no_ptrace_sigterm_mid_dump_continues_the_target_and_removes_the_file() {
    require!(ptrace_access());
    let dir = scratch("noptrace-sigterm");
    let mut target = Target::start(Program::Busy, &["mem=1024", "sleep=2"]);
    let stable = target.stable_tids();
    wait_sleeping(target.pid, &stable);
    sigterm_mid_dump(&target, dir.path(), &["--no-ptrace"]);
    target.assert_alive();
    assert!(job_control_reported(target.pid));
    assert_state_is(
        target.pid,
        None,
        &running_untraced(&stable),
        "after SIGTERM",
    );
}

// ---------------------------------------------------------------------------
// 12. Memory the target shares copy-on-write stays shared
// ---------------------------------------------------------------------------

/// Memory only `pid` maps, in kB: `Private_Clean` + `Private_Dirty` of
/// `/proc/PID/smaps_rollup` (a page copied out of a shared one is private,
/// and clean when the copy was made for reading).
fn private_kb(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Private_Clean:")
                .or_else(|| l.strip_prefix("Private_Dirty:"))
        })
        .map(|v| {
            v.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

/// A forked worker shares its parent's memory page by page until either
/// writes. Reading those pages by pinning them (process_vm_readv) would
/// make the kernel give the worker a private copy of each: dumping must
/// leave them shared, in every way of holding the target.
#[test]
fn memory_shared_with_a_parent_stays_shared() {
    require!(ptrace_access());
    let dir = scratch("forked");
    let target = Target::start(Program::Forked, &["64"]);
    let child = target.num("child") as i32;
    let only_child = BTreeSet::from([child]);
    wait_sleeping(child, &only_child);
    let mem = target.addr("mem");
    let pages = target.num("mem_len") as u64 / 4096;
    for extra in [None, Some("--no-ptrace")] {
        let before = private_kb(child);
        let (prefix, core_path) = prefix_and_core(dir.path(), child);
        let mut args = vec![os("-o"), prefix, os(child.to_string())];
        args.extend(extra.map(os));
        let run = coresnap(&args);
        assert_eq!(run.code(), Some(0), "{extra:?}: {run:?}");
        common::elf_readers::assert_readers_agree(&core_path);
        let after = private_kb(child);
        assert!(
            after < before + 4096,
            "{extra:?}: the worker's private memory grew from {before} kB to {after} kB: the dump copied pages it shared with its parent"
        );
        let core = Core::read(&core_path);
        let segment = core.segment(mem).expect("a segment for the shared memory");
        for page in [0, pages / 2, pages - 1] {
            let at = (page * 4096) as usize;
            let word = u64::from_le_bytes(segment[at..at + 8].try_into().unwrap());
            assert_eq!(word, 0xF0F0_0000_0000_0000 | page, "{extra:?}: page {page}");
        }
        let out = gdb_batch(
            &build(Program::Forked),
            &core_path,
            &[&format!("x/1gx {:#x}", mem + (pages - 1) * 4096)],
        );
        assert_eq!(
            parse_x_words(&out),
            Ok(vec![0xF0F0_0000_0000_0000 | (pages - 1)]),
            "{extra:?}: gdb reads the last shared page:\n{out}"
        );
        assert_state_is(child, None, &running_untraced(&only_child), "after");
        clear_dir(dir.path());
    }
}
