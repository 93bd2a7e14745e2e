//! Real programs under load are dumped in `--mode cow` over and over (and a
//! few times in stop mode) without harm (issue #20): a Go HTTP server whose
//! handlers allocate (so its garbage collector runs and its runtime
//! preempts goroutines with SIGURG), and a JVM whose threads allocate and
//! catch NullPointerExceptions (SIGSEGVs handled inside the JVM). Every dump
//! must succeed with nothing on stderr but its summary line, the program
//! must keep running untraced and keep serving, some cores are loaded in
//! gdb, and a SIGUSR1 the test sends during the dumps, one at a time, each
//! only after the program counted the previous one, must all be counted by
//! the program itself.
//!
//! The runtimes' own signals (SIGURG, the JVM's SIGSEGVs) cannot be
//! counted from outside; a lost one would show as a hung or crashed
//! program, or a failed request.
//!
//! Python with threads, node and redis-server are each started once, dumped
//! once in stop and once in cow mode, and every core is loaded in gdb, lldb
//! and eu-stack as the C targets are: every thread must be there, and the
//! threads whose work is known (a Python thread sleeping, one waiting for a
//! lock; redis's main loop and its background-job threads; node's event
//! loop and its V8 workers) must show the functions that work runs through,
//! as far as the debugger names them. After each dump the program must
//! still serve (redis PING and GET, a node HTTP request, the Python worker's
//! progress). A Go server's core is read by `coresnap inspect --backtrace`,
//! which must name its frames as gdb does.
//!
//! Needs `go` (Debian: golang-go), `javac`/`java` (openjdk-17-jdk-headless),
//! `python3`, `node` (nodejs), `redis-server`, gdb, lldb and eu-stack
//! (elfutils). `CORESNAP_REAL_DUMPS` changes the number of cow dumps per
//! program under load.

mod common;

use common::debuggers::{parse_eu_stack, parse_lldb};
use common::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Cow dumps per program, as the issue asks.
const COW_DUMPS: usize = 50;
/// Stop-mode dumps per program after the cow ones.
const STOP_DUMPS: usize = 5;
/// One dump in this many is loaded in gdb.
const GDB_EVERY: usize = 10;
/// How long the program may take to count a SIGUSR1.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on SIGUSR1s sent, whatever the dumps' duration.
const MAX_SIGNALS: u64 = 100_000;
/// Upper bound on requests the load thread sends to the Go server.
const MAX_REQUESTS: u64 = 1_000_000;

fn cow_dumps() -> usize {
    std::env::var("CORESNAP_REAL_DUMPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(COW_DUMPS)
}

fn build_cache() -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("coresnap-real-programs");
    std::fs::create_dir_all(&cache).expect("create the build cache");
    cache
}

/// Builds testdata/go/server.go, with Go's build cache under the target
/// directory (so a second run is quick and nothing is written to $HOME).
fn build_go_server(scratch: &Scratch) -> PathBuf {
    let out = scratch.path().join("server");
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(&out)
        .arg(testdata_dir().join("go/server.go"))
        .env("GOCACHE", build_cache().join("go-build"))
        .env("GOPATH", build_cache().join("gopath"))
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "");
    let res = run_with_timeout(&mut cmd, COMPILE_TIMEOUT, true);
    assert!(res.success(), "go build server.go:\n{}", res.describe());
    out
}

/// Compiles testdata/java/Load.java into the scratch directory.
fn build_java_load(scratch: &Scratch) -> PathBuf {
    let classes = scratch.path().join("classes");
    let mut cmd = Command::new("javac");
    cmd.arg("-d")
        .arg(&classes)
        .arg(testdata_dir().join("java/Load.java"));
    let res = run_with_timeout(&mut cmd, COMPILE_TIMEOUT, true);
    assert!(res.success(), "javac Load.java:\n{}", res.describe());
    classes
}

/// Sends SIGUSR1 to `pid` one at a time, each only once `count` (what the
/// program says it received) has reached it: standard signals merge while
/// one is pending, so this is how every one of them can be told apart.
/// `quiet` is held while a signal is in flight, so that a dump can run
/// while none is (the JVM starts a thread for each signal it dispatches).
struct Usr1Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    unacknowledged: Arc<AtomicU64>,
    quiet: Arc<Mutex<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Usr1Sender {
    fn start(pid: i32, count: impl Fn() -> Option<u64> + Send + 'static) -> Usr1Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let unacknowledged = Arc::new(AtomicU64::new(0));
        let quiet = Arc::new(Mutex::new(()));
        let thread = {
            let (stop, sent, unacknowledged, quiet) = (
                stop.clone(),
                sent.clone(),
                unacknowledged.clone(),
                quiet.clone(),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) < MAX_SIGNALS {
                    let in_flight = quiet.lock().unwrap_or_else(|e| e.into_inner());
                    // SAFETY: plain syscall; the pid is the test's child,
                    // kept unreaped by its guard while this thread runs.
                    if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
                        break;
                    }
                    let number = sent.fetch_add(1, Ordering::SeqCst) + 1;
                    let counted = wait_until(ACK_TIMEOUT, || count().is_some_and(|c| c >= number));
                    if !counted {
                        unacknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    drop(in_flight);
                    thread::sleep(Duration::from_millis(3));
                }
            })
        };
        Usr1Sender {
            stop,
            sent,
            unacknowledged,
            quiet,
            thread: Some(thread),
        }
    }

    /// Stops sending and returns (sent, unacknowledged).
    fn finish(&mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the SIGUSR1 sender panicked");
        }
        (
            self.sent.load(Ordering::SeqCst),
            self.unacknowledged.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Usr1Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the dumps of one program in one mode measured.
struct DumpStats {
    mode: &'static str,
    dumps: usize,
    pauses_ms: Vec<f64>,
    gdb_loads: usize,
}

impl DumpStats {
    fn describe(&self) -> String {
        let mut pauses = self.pauses_ms.clone();
        pauses.sort_by(f64::total_cmp);
        let at = |q: f64| pauses[((pauses.len() - 1) as f64 * q).round() as usize];
        format!(
            "{}: {} dumps, pause median {:.1} ms, max {:.1} ms, {} loaded in gdb",
            self.mode,
            self.dumps,
            at(0.5),
            at(1.0),
            self.gdb_loads
        )
    }
}

/// coresnap's stderr holds one summary line and, in cow mode, the line
/// with the copy's memory cost: no warning, no fallback, nothing else.
fn says_only_its_summary(stderr: &str, pid: i32) -> bool {
    let summary = format!("coresnap: pid {pid}: wrote ");
    let cow_cost = format!("coresnap: pid {pid}: copy-on-write cost: ");
    stderr.lines().filter(|l| l.starts_with(&summary)).count() == 1
        && stderr
            .lines()
            .all(|l| l.starts_with(&summary) || l.starts_with(&cow_cost))
}

/// The pause coresnap reports in its summary line.
fn reported_pause(text: &str) -> Option<f64> {
    let (_, rest) = text.split_once("target paused ")?;
    rest.split_once(" ms")?.0.parse().ok()
}

/// Dumps `pid` `count` times with `args`. Each dump must succeed with only
/// its summary line on stderr (a warning, a fallback to stop mode, anything
/// else fails) and leave the target running and untraced. Every
/// `GDB_EVERY`th dump, taken while no SIGUSR1 is in flight, is loaded in
/// gdb when the target's threads were the same before and after it (a
/// runtime starts and ends threads of its own); at least one must be.
fn dump_repeatedly(
    name: &str,
    pid: i32,
    scratch: &Scratch,
    mode: &'static str,
    count: usize,
    quiet: &Mutex<()>,
) -> DumpStats {
    let args: &[&str] = match mode {
        "cow" => &["--mode", "cow", "--no-fallback"],
        _ => &["--mode", mode],
    };
    let mut stats = DumpStats {
        mode,
        dumps: 0,
        pauses_ms: Vec::new(),
        gdb_loads: 0,
    };
    let mut gdb_wanted = false;
    for round in 0..count {
        gdb_wanted |= round % GDB_EVERY == 0;
        let prefix = scratch.path().join(format!("core-{mode}-{round}"));
        let mut cmd = Command::new(Dumper::Coresnap.program());
        cmd.args(args).arg("-o").arg(&prefix).arg(pid.to_string());
        let held = gdb_wanted.then(|| quiet.lock().unwrap_or_else(|e| e.into_inner()));
        let threads_before = thread_ids(pid);
        let res = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
        let threads_after = thread_ids(pid);
        drop(held);
        stats.dumps += 1;
        assert!(
            res.success(),
            "{name} {args:?}: dump {round} failed:\n{}",
            res.describe()
        );
        assert!(
            says_only_its_summary(&res.stderr, pid),
            "{name} {args:?}: dump {round} said more than its summary:\n{}",
            res.describe()
        );
        stats
            .pauses_ms
            .push(reported_pause(&res.stderr).unwrap_or_else(|| {
                panic!(
                    "no 'target paused N ms' in coresnap's output:\n{}",
                    res.describe()
                )
            }));
        assert_running_untraced(pid);
        let core = PathBuf::from(format!("{}.{pid}", prefix.display()));
        if gdb_wanted && threads_before == threads_after {
            assert_loads_in_gdb(pid, &core, &threads_before);
            stats.gdb_loads += 1;
            gdb_wanted = false;
        }
        let _ = std::fs::remove_file(&core);
        let _ = std::fs::remove_file(format!("{}.json", core.display()));
    }
    assert!(
        stats.gdb_loads > 0,
        "{name} {args:?}: the program's threads changed during every dump meant for gdb"
    );
    stats
}

/// One HTTP/1.0 GET to the server; the body if it answered 200.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let timeout = Duration::from_secs(20);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("receive: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {response:?}"))?;
    // Go answers in HTTP/1.0, node in HTTP/1.1.
    if !(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")) {
        return Err(format!("answered {head:?}"));
    }
    Ok(body.to_string())
}

#[test]
fn go_server_under_load_is_dumped_without_harm() {
    require!(
        ptrace_access(),
        program("go", "version", "golang-go"),
        program("gdb", "--version", "gdb"),
    );
    let scratch = Scratch::new("real-go");
    let exe = build_go_server(&scratch);
    let target = Target::spawn(&exe, &[]);
    let pid = target.pid;
    let addr: SocketAddr = format!("127.0.0.1:{}", target.num("port")).parse().unwrap();

    // The load: requests one after another until told to stop.
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop_load.clone();
        thread::spawn(move || {
            let (mut served, mut failures) = (0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) && served < MAX_REQUESTS {
                match http_get(addr, "/work?n=4000") {
                    Ok(_) => served += 1,
                    Err(e) => failures.push(e),
                }
            }
            (served, failures)
        })
    };
    let mut sender = Usr1Sender::start(pid, move || {
        http_get(addr, "/usr1").ok()?.trim().parse().ok()
    });
    let quiet = sender.quiet.clone();
    let started = Instant::now();
    let cow = dump_repeatedly("go", pid, &scratch, "cow", cow_dumps(), &quiet);
    let stop = dump_repeatedly("go", pid, &scratch, "stop", STOP_DUMPS, &quiet);
    let elapsed = started.elapsed();

    let (sent, unacknowledged) = sender.finish();
    stop_load.store(true, Ordering::SeqCst);
    let (served, failures) = load.join().expect("the load thread panicked");
    let received: u64 = http_get(addr, "/usr1")
        .expect("the server still answers after the dumps")
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "go: {}; {} in {:.1} s; {served} requests served, {} failed; SIGUSR1 sent {sent}, received {received}, unacknowledged {unacknowledged}",
        cow.describe(),
        stop.describe(),
        elapsed.as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "requests failed during the dumps: {failures:?}"
    );
    assert!(served > 0, "no request was served during the dumps");
    assert!(sent > 0, "no SIGUSR1 was sent during the dumps");
    assert_eq!(received, sent, "SIGUSR1 received by the server");
    assert_eq!(
        unacknowledged, 0,
        "SIGUSR1s not counted within {ACK_TIMEOUT:?}"
    );
    http_get(addr, "/work?n=100").expect("the server still works after the dumps");
    assert_running_untraced(pid);
}

/// The JVM's count file: "usr1=N npe=M".
fn read_jvm_counts(file: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(file).ok()?;
    let field = |key: &str| -> Option<u64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key))?
            .parse()
            .ok()
    };
    Some((field("usr1=")?, field("npe=")?))
}

/// testdata/java/Load.java compiled and started; the file it keeps its
/// counts in.
fn start_java_load(scratch: &Scratch) -> (Target, PathBuf) {
    let classes = build_java_load(scratch);
    let counts = scratch.path().join("counts");
    // A small heap keeps each core small; the JVM picks its own collector.
    let target = Target::spawn(
        Path::new("java"),
        &[
            OsStr::new("-Xmx64m"),
            OsStr::new("-Xms16m"),
            OsStr::new("-cp"),
            classes.as_os_str(),
            OsStr::new("Load"),
            counts.as_os_str(),
        ],
    );
    (target, counts)
}

#[test]
fn jvm_under_load_is_dumped_without_harm() {
    require!(
        ptrace_access(),
        program("javac", "-version", "openjdk-17-jdk-headless"),
        program("java", "-version", "openjdk-17-jdk-headless"),
        program("gdb", "--version", "gdb"),
    );
    let scratch = Scratch::new("real-jvm");
    let (target, counts) = start_java_load(&scratch);
    let pid = target.pid;
    let (_, npe_at_start) = read_jvm_counts(&counts).expect("the JVM wrote its counts");
    let mut sender = Usr1Sender::start(pid, {
        let counts = counts.clone();
        move || read_jvm_counts(&counts).map(|(usr1, _)| usr1)
    });
    let quiet = sender.quiet.clone();
    let started = Instant::now();
    let cow = dump_repeatedly("jvm", pid, &scratch, "cow", cow_dumps(), &quiet);
    let stop = dump_repeatedly("jvm", pid, &scratch, "stop", STOP_DUMPS, &quiet);
    let elapsed = started.elapsed();

    let (sent, unacknowledged) = sender.finish();
    let (received, npe_after_dumps) = read_jvm_counts(&counts).expect("read the JVM's counts");
    eprintln!(
        "jvm: {}; {} in {:.1} s; {} NullPointerExceptions caught; SIGUSR1 sent {sent}, received {received}, unacknowledged {unacknowledged}",
        cow.describe(),
        stop.describe(),
        elapsed.as_secs_f64(),
        npe_after_dumps - npe_at_start
    );
    assert!(sent > 0, "no SIGUSR1 was sent during the dumps");
    assert_eq!(received, sent, "SIGUSR1 received by the JVM");
    assert_eq!(
        unacknowledged, 0,
        "SIGUSR1s not counted within {ACK_TIMEOUT:?}"
    );
    // Still running: its workers keep catching exceptions.
    assert!(
        wait_until(STATE_TIMEOUT, || read_jvm_counts(&counts)
            .is_some_and(|(_, npe)| npe > npe_after_dumps)),
        "the JVM's workers stopped after the dumps"
    );
    assert_running_untraced(pid);
}

// ---------------------------------------------------------------------------
// Python, node and redis in gdb, lldb and eu-stack
// ---------------------------------------------------------------------------

/// Function names of each thread's backtrace (innermost first), by the
/// thread id the core gives it, as one debugger shows them.
type Stacks = BTreeMap<i32, Vec<String>>;

fn describe_stacks(stacks: &Stacks) -> String {
    stacks
        .iter()
        .map(|(tid, functions)| format!("  {tid}: {}\n", functions.join(" < ")))
        .collect()
}

fn gdb_stacks(exe: &Path, core: &Path) -> Stacks {
    let out = run_gdb(exe, core, &["thread apply all bt"]);
    parse_thread_apply(&out)
        .into_iter()
        .map(|block| (block.lwp, bt_functions(&block.body)))
        .collect()
}

fn lldb_stacks(exe: &Path, core: &Path) -> Stacks {
    let mut cmd = Command::new("lldb");
    cmd.arg("--batch")
        .arg("-c")
        .arg(core)
        .arg(exe)
        .args(["-o", "thread list", "-o", "bt all"]);
    // lldb 14 on Debian prints Python tracebacks (missing
    // lldb.embedded_interpreter) on stderr; they are harmless.
    let res = run_with_timeout(&mut cmd, DEBUGGER_TIMEOUT, false);
    assert!(res.success(), "lldb failed:\n{}", res.describe());
    let (tids, mut frames) = parse_lldb(&res.stdout);
    tids.into_iter()
        .map(|(index, tid)| (tid, frames.remove(&index).unwrap_or_default()))
        .collect()
}

fn eu_stack_stacks(exe: &Path, core: &Path) -> Stacks {
    let mut cmd = Command::new("eu-stack");
    cmd.arg("--core").arg(core).arg("-e").arg(exe);
    let res = run_with_timeout(&mut cmd, DEBUGGER_TIMEOUT, false);
    // eu-stack exits 1 when it cannot unwind a thread to its end: Go code
    // has no .eh_frame and JIT code no unwind data at all, whoever wrote
    // the core. That, and only that, is not a failure to read the core.
    let unwinding_stops = res
        .stderr
        .lines()
        .all(|l| l.trim().is_empty() || l.starts_with("eu-stack: dwfl_thread_getframes tid "));
    assert!(
        res.success() || (res.status.code() == Some(1) && unwinding_stops),
        "eu-stack failed:\n{}",
        res.describe()
    );
    parse_eu_stack(&res.stdout)
}

/// Whether `functions` holds a frame naming each of `names` (a part of
/// the name: debuggers differ in glibc's aliases, `__GI___clock_nanosleep`
/// or `clock_nanosleep`), in this order from the innermost frame; frames
/// a debugger cannot name may lie between.
fn shows_in_order(functions: &[String], names: &[&str]) -> bool {
    let mut frames = functions.iter();
    names
        .iter()
        .all(|name| frames.any(|function| function.contains(name)))
}

/// What some threads of a real program are known to be doing.
struct Known {
    what: &'static str,
    threads: Which,
    /// Function names the backtrace must show, innermost first.
    frames: &'static [&'static str],
}

enum Which {
    /// These threads (ids as the core gives them).
    Tids(Vec<i32>),
    /// At least this many threads, whichever.
    AtLeast(usize),
}

/// The program at `pid` still does its work: `Err` says what failed.
type StillServing<'a> = &'a mut dyn FnMut() -> Result<(), String>;

/// Dumps `pid` once in stop and once in cow mode; each dump must succeed
/// with only its summary line, leave the program running untraced and
/// serving, and give a core in which gdb, lldb and eu-stack each find every
/// thread and what `known` says the threads are doing.
fn dump_and_read_in_debuggers(
    name: &str,
    pid: i32,
    scratch: &Scratch,
    known: &[Known],
    still_serving: StillServing,
) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the program's executable");
    still_serving().unwrap_or_else(|e| panic!("{name} does not serve before the dumps: {e}"));
    for (mode, args) in [
        ("stop", &["--mode", "stop"][..]),
        ("cow", &["--mode", "cow", "--no-fallback"][..]),
    ] {
        let prefix = scratch.path().join(format!("{name}-{mode}"));
        let threads_before = thread_ids(pid);
        let mut cmd = Command::new(Dumper::Coresnap.program());
        cmd.args(args).arg("-o").arg(&prefix).arg(pid.to_string());
        let started = Instant::now();
        let res = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
        let took = started.elapsed();
        assert!(
            res.success(),
            "{name} {args:?}: the dump failed:\n{}",
            res.describe()
        );
        assert!(
            says_only_its_summary(&res.stderr, pid),
            "{name} {args:?}: the dump said more than its summary:\n{}",
            res.describe()
        );
        assert_eq!(
            thread_ids(pid),
            threads_before,
            "{name}: threads came or went during the {mode} dump"
        );
        assert_running_untraced(pid);
        still_serving()
            .unwrap_or_else(|e| panic!("{name} no longer serves after the {mode} dump: {e}"));
        let core = PathBuf::from(format!("{}.{pid}", prefix.display()));
        let size = std::fs::metadata(&core).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "{name}: {mode} dump in {:.0} ms, {:.1} MiB; {}",
            took.as_secs_f64() * 1000.0,
            size as f64 / f64::from(1 << 20),
            res.stderr.trim()
        );

        let mut every_thread: Vec<i32> = threads_before
            .iter()
            .map(|&tid| tid_inside(pid, tid))
            .collect();
        every_thread.sort_unstable();
        type Reader = fn(&Path, &Path) -> Stacks;
        let readers: [(&str, Reader); 3] = [
            ("gdb", gdb_stacks),
            ("lldb", lldb_stacks),
            ("eu-stack", eu_stack_stacks),
        ];
        for (debugger, read) in readers {
            let stacks = read(&exe, &core);
            let listed: Vec<i32> = stacks.keys().copied().collect();
            assert_eq!(
                listed, every_thread,
                "{debugger} on the {mode} core of {name}: the threads"
            );
            for k in known {
                let showing = |tid: &i32| shows_in_order(&stacks[tid], k.frames);
                let ok = match &k.threads {
                    Which::Tids(tids) => tids.iter().all(|tid| showing(&tid_inside(pid, *tid))),
                    Which::AtLeast(n) => stacks.keys().filter(|t| showing(t)).count() >= *n,
                };
                assert!(
                    ok,
                    "{debugger} on the {mode} core of {name}: {} ({}) do not show {:?}:\n{}",
                    k.what,
                    k.threads_described(),
                    k.frames,
                    describe_stacks(&stacks)
                );
            }
        }
        let _ = std::fs::remove_file(&core);
        let _ = std::fs::remove_file(format!("{}.json", core.display()));
    }
}

impl Known {
    fn threads_described(&self) -> String {
        match &self.threads {
            Which::Tids(tids) => format!("threads {tids:?}"),
            Which::AtLeast(n) => format!("at least {n} threads"),
        }
    }
}

fn require_debuggers() -> Result<(), Missing> {
    program("gdb", "--version", "gdb")?;
    program("lldb", "--version", "lldb")?;
    program("eu-stack", "--version", "elfutils")
}

#[test]
fn python_threads_in_gdb_lldb_and_eu_stack() {
    require!(
        ptrace_access(),
        program("python3", "--version", "python3"),
        require_debuggers(),
    );
    let scratch = Scratch::new("real-python");
    let progress = scratch.path().join("progress");
    let script = testdata_dir().join("python/workers.py");
    let target = Target::spawn(
        Path::new("python3"),
        &[script.as_os_str(), progress.as_os_str()],
    );
    let pid = target.pid;
    let tid = |key: &str| target.num(key) as i32;
    let rounds = || -> Option<u64> { std::fs::read_to_string(&progress).ok()?.parse().ok() };
    let known = [
        Known {
            what: "the main thread, in time.sleep()",
            threads: Which::Tids(vec![pid]),
            frames: &[
                "clock_nanosleep",
                "_PyEval_EvalFrameDefault",
                "PyEval_EvalCode",
            ],
        },
        Known {
            what: "the sleeper, in time.sleep()",
            threads: Which::Tids(vec![tid("sleeper")]),
            frames: &["clock_nanosleep", "_PyEval_EvalFrameDefault"],
        },
        Known {
            what: "the waiter, acquiring a lock",
            threads: Which::Tids(vec![tid("waiter")]),
            frames: &["PyThread_acquire_lock_timed", "_PyEval_EvalFrameDefault"],
        },
        Known {
            what: "the worker, computing",
            threads: Which::Tids(vec![tid("worker")]),
            frames: &["_PyEval_EvalFrameDefault"],
        },
    ];
    let mut progressing = || {
        let before = rounds().ok_or("no progress file")?;
        if wait_until(STATE_TIMEOUT, || rounds().is_some_and(|r| r > before)) {
            Ok(())
        } else {
            Err(format!("the worker stayed at {before} rounds"))
        }
    };
    assert!(
        wait_until(STATE_TIMEOUT, || rounds().is_some()),
        "the worker wrote no progress"
    );
    dump_and_read_in_debuggers("python3", pid, &scratch, &known, &mut progressing);
}

#[test]
fn node_server_in_gdb_lldb_and_eu_stack() {
    require!(
        ptrace_access(),
        program("node", "--version", "nodejs"),
        require_debuggers(),
    );
    let scratch = Scratch::new("real-node");
    let script = testdata_dir().join("node/server.js");
    // Four V8 worker threads whatever the machine's CPU count.
    let target = Target::spawn(
        Path::new("node"),
        &[OsStr::new("--v8-pool-size=4"), script.as_os_str()],
    );
    let pid = target.pid;
    let addr: SocketAddr = format!("127.0.0.1:{}", target.num("port")).parse().unwrap();
    let known = [
        Known {
            what: "the main thread, in its event loop",
            threads: Which::Tids(vec![pid]),
            frames: &["epoll", "uv_run"],
        },
        Known {
            what: "the V8 platform workers, waiting for tasks",
            threads: Which::AtLeast(4),
            frames: &["pthread_cond_wait", "uv_cond_wait"],
        },
    ];
    let mut answering = || {
        let body = http_get(addr, "/")?;
        if body.starts_with("served ") {
            Ok(())
        } else {
            Err(format!("answered {body:?}"))
        }
    };
    dump_and_read_in_debuggers("node", pid, &scratch, &known, &mut answering);
}

/// One inline command to redis over its Unix socket; the reply as sent.
fn redis(socket: &Path, command: &str) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let timeout = Some(Duration::from_secs(20));
    stream.set_read_timeout(timeout).unwrap();
    stream.set_write_timeout(timeout).unwrap();
    write!(stream, "{command}\r\nQUIT\r\n").map_err(|e| format!("send: {e}"))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| format!("receive: {e}"))?;
    // The reply to QUIT closes it.
    Ok(reply.strip_suffix("+OK\r\n").unwrap_or(&reply).to_string())
}

#[test]
fn redis_server_in_gdb_lldb_and_eu_stack() {
    require!(
        ptrace_access(),
        program("redis-server", "--version", "redis-server"),
        require_debuggers(),
    );
    let scratch = Scratch::new("real-redis");
    let socket = scratch.path().join("redis.sock");
    let log = scratch.path().join("redis.log");
    // The shell prints its pid and becomes redis-server: redis prints no
    // line of its own that Target could wait for.
    let target = Target::spawn(
        Path::new("sh"),
        &[
            OsStr::new("-c"),
            OsStr::new(r#"echo "ready pid=$$"; exec redis-server "$@""#),
            OsStr::new("sh"),
            OsStr::new("--port"),
            OsStr::new("0"),
            OsStr::new("--unixsocket"),
            socket.as_os_str(),
            OsStr::new("--dir"),
            scratch.path().as_os_str(),
            OsStr::new("--logfile"),
            log.as_os_str(),
            OsStr::new("--save"),
            OsStr::new(""),
            OsStr::new("--appendonly"),
            OsStr::new("no"),
        ],
    );
    let pid = target.pid;
    assert!(
        wait_until(READY_TIMEOUT, || redis(&socket, "PING")
            .is_ok_and(|r| r == "+PONG\r\n")),
        "redis-server does not answer on {}; its log:\n{}",
        socket.display(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        redis(&socket, "SET coresnap kept-across-dumps"),
        Ok("+OK\r\n".to_string())
    );
    // Each bio thread names itself once it runs, which may be after redis
    // already answers.
    let bio_threads = || -> Vec<i32> {
        thread_ids(pid)
            .into_iter()
            .filter(|&tid| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    .is_ok_and(|comm| comm.starts_with("bio_"))
            })
            .collect()
    };
    wait_until(STATE_TIMEOUT, || bio_threads().len() == 3);
    let background = bio_threads();
    assert_eq!(background.len(), 3, "redis 7 has three bio_ threads");
    let known = [
        Known {
            what: "the main thread, in its event loop",
            threads: Which::Tids(vec![pid]),
            frames: &["epoll_wait", "aeMain", "main"],
        },
        Known {
            what: "the background-job threads (bio_*), waiting for jobs",
            threads: Which::Tids(background),
            frames: &["pthread_cond_wait", "bioProcessBackgroundJobs"],
        },
    ];
    let mut answering = || {
        let pong = redis(&socket, "PING")?;
        let value = redis(&socket, "GET coresnap")?;
        if pong == "+PONG\r\n" && value == "$17\r\nkept-across-dumps\r\n" {
            Ok(())
        } else {
            Err(format!("PING answered {pong:?}, GET {value:?}"))
        }
    };
    dump_and_read_in_debuggers("redis-server", pid, &scratch, &known, &mut answering);
}

// ---------------------------------------------------------------------------
// A Go program in coresnap inspect
// ---------------------------------------------------------------------------

/// What `go tool buildid FILE` prints: the build id Go's linker wrote.
fn go_build_id(exe: &Path) -> String {
    let mut cmd = Command::new("go");
    cmd.args(["tool", "buildid"])
        .arg(exe)
        .env("GOCACHE", build_cache().join("go-build"));
    let res = run_with_timeout(&mut cmd, COMPILE_TIMEOUT, false);
    assert!(res.success(), "go tool buildid:\n{}", res.describe());
    res.stdout.trim().to_string()
}

/// Function names of each thread's backtrace in `coresnap inspect
/// --backtrace --json`, by tid; a frame it could not name is `??`.
fn inspect_stacks(report: &serde_json::Value) -> Stacks {
    report["threads"]
        .as_array()
        .expect("threads in the report")
        .iter()
        .map(|thread| {
            let frames = thread["backtrace"]["frames"].as_array().cloned();
            let names = frames
                .unwrap_or_default()
                .iter()
                .map(|f| f["function"].as_str().unwrap_or("??").to_string())
                .collect();
            (thread["tid"].as_i64().expect("tid") as i32, names)
        })
        .collect()
}

/// A Go server's core: inspect identifies the executable by its Go build
/// id (the one `go tool buildid` reports), uses it, and names each thread's
/// frames as gdb does: the innermost alike, and every frame it names is one
/// gdb shows, in the same order (gdb also shows inlined calls, which
/// inspect leaves to `--debug-info`). The thread running the spinning
/// goroutine is in main.spin.
#[test]
fn go_server_core_is_named_by_inspect_as_by_gdb() {
    require!(
        ptrace_access(),
        program("go", "version", "golang-go"),
        program("gdb", "--version", "gdb"),
    );
    let scratch = Scratch::new("real-go-inspect");
    let exe = build_go_server(&scratch);
    let target = Target::spawn(&exe, &[]);
    let pid = target.pid;
    // The runtime starts threads of its own for a while after it starts;
    // `dump` wants the same threads before the dump and in the core.
    let settled = wait_until(STATE_TIMEOUT, || {
        let before = thread_ids(pid);
        thread::sleep(Duration::from_millis(500));
        thread_ids(pid) == before
    });
    assert!(settled, "the Go server's threads never stopped changing");
    let core = dump(Dumper::Coresnap, pid, scratch.path(), &[]);
    assert_running_untraced(pid);

    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.args(["inspect", "--backtrace", "--json"]).arg(&core);
    let res = run_with_timeout(&mut cmd, DEBUGGER_TIMEOUT, false);
    assert!(res.success(), "coresnap inspect:\n{}", res.describe());
    let report: serde_json::Value =
        serde_json::from_str(&res.stdout).expect("inspect --json prints JSON");
    let module = report["modules"]
        .as_array()
        .expect("modules in the report")
        .iter()
        .find(|m| m["path"].as_str() == exe.to_str())
        .unwrap_or_else(|| panic!("no module for {}:\n{}", exe.display(), res.stdout));
    let go_id = go_build_id(&exe);
    assert_eq!(module["build_id"].as_str(), Some(&*go_id), "{module}");
    assert_eq!(module["build_id_kind"], "go", "{module}");
    assert_eq!(module["status"], "used", "{module}");

    // The manifest records it too, for the executable and its mappings.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{}.json", core.display())).expect("the manifest"),
    )
    .expect("the manifest is JSON");
    assert_eq!(
        manifest["target"]["exe_go_build_id"].as_str(),
        Some(&*go_id),
        "{}",
        manifest["target"]
    );
    let exe_mappings: Vec<&serde_json::Value> = manifest["mappings"]
        .as_array()
        .expect("mappings in the manifest")
        .iter()
        .filter(|m| m["name"].as_str() == exe.to_str())
        .collect();
    assert!(
        !exe_mappings.is_empty()
            && exe_mappings
                .iter()
                .all(|m| m["go_build_id"].as_str() == Some(&*go_id)),
        "{exe_mappings:?}"
    );

    let ours = inspect_stacks(&report);
    let gdb = gdb_stacks(&exe, &core);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        gdb.keys().collect::<Vec<_>>(),
        "threads in inspect and in gdb"
    );
    for (tid, functions) in &ours {
        let theirs = &gdb[tid];
        // As bt_functions reads gdb's lines: up to a parenthesis
        // (`runtime/cgo(.text)`).
        let named: Vec<&str> = functions
            .iter()
            .filter(|f| *f != "??")
            .map(|f| f.split('(').next().unwrap_or(f))
            .collect();
        let describe = || {
            format!(
                "thread {tid}\n  inspect: {}\n  gdb:     {}",
                functions.join(" < "),
                theirs.join(" < ")
            )
        };
        let innermost = functions.first().map(|f| f.split('(').next().unwrap_or(f));
        assert_eq!(
            innermost,
            theirs.first().map(String::as_str),
            "{}",
            describe()
        );
        assert!(named.len() >= 2, "{}", describe());
        let mut in_gdb = theirs.iter();
        assert!(
            named.iter().all(|f| in_gdb.any(|g| g == f)),
            "a frame inspect names is not in gdb's backtrace, or not in its order: {}",
            describe()
        );
    }
    assert!(
        ours.values()
            .any(|functions| functions.iter().any(|f| f == "main.spin")),
        "no thread in main.spin:\n{}",
        describe_stacks(&ours)
    );
}

/// Waits until `pid`'s thread list stays the same for half a second: the
/// Go runtime and the JVM start threads of their own for a while after
/// they start, and a dump here wants the same threads before and after.
fn wait_threads_settled(name: &str, pid: i32) {
    let settled = wait_until(STATE_TIMEOUT, || {
        let before = thread_ids(pid);
        thread::sleep(Duration::from_millis(500));
        thread_ids(pid) == before
    });
    assert!(settled, "{name}'s threads never stopped changing");
}

/// The Go server in gdb, lldb and eu-stack, in stop and cow mode, as
/// python, node and redis: every thread in each, threads parked in the
/// runtime named as such, and the server answering after each dump.
#[test]
fn go_server_in_gdb_lldb_and_eu_stack() {
    require!(
        ptrace_access(),
        program("go", "version", "golang-go"),
        require_debuggers(),
    );
    let scratch = Scratch::new("real-go-debuggers");
    let exe = build_go_server(&scratch);
    let target = Target::spawn(&exe, &[]);
    let pid = target.pid;
    let addr: SocketAddr = format!("127.0.0.1:{}", target.num("port")).parse().unwrap();
    wait_threads_settled("the Go server", pid);
    let known = [Known {
        what: "threads parked in the runtime",
        threads: Which::AtLeast(1),
        frames: &["runtime.futex"],
    }];
    let mut serving = || http_get(addr, "/work?n=10").map(|_| ());
    dump_and_read_in_debuggers("go-server", pid, &scratch, &known, &mut serving);
}

/// The JVM of the load test in gdb, lldb and eu-stack, in stop and cow
/// mode: every one of its threads in each, and its workers still catching
/// NullPointerExceptions after each dump.
#[test]
fn jvm_in_gdb_lldb_and_eu_stack() {
    require!(
        ptrace_access(),
        program("javac", "-version", "openjdk-17-jdk-headless"),
        program("java", "-version", "openjdk-17-jdk-headless"),
        require_debuggers(),
    );
    let scratch = Scratch::new("real-jvm-debuggers");
    let (target, counts) = start_java_load(&scratch);
    let pid = target.pid;
    wait_threads_settled("the JVM", pid);
    // Every JVM thread waits in glibc's futex wait but the workers.
    let known = [Known {
        what: "threads waiting on a condition",
        threads: Which::AtLeast(2),
        frames: &["pthread_cond"],
    }];
    let mut catching = || {
        let (_, before) = read_jvm_counts(&counts).ok_or("no counts file")?;
        if wait_until(STATE_TIMEOUT, || {
            read_jvm_counts(&counts).is_some_and(|(_, npe)| npe > before)
        }) {
            Ok(())
        } else {
            Err(format!("the workers stayed at {before} exceptions"))
        }
    };
    dump_and_read_in_debuggers("jvm", pid, &scratch, &known, &mut catching);
}
