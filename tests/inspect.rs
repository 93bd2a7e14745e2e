//! `coresnap inspect` and `coresnap extract` on cores of the test targets
//! written by coresnap, by gdb's gcore and by the kernel: the threads and the
//! function each is parked in, backtraces compared with gdb's `thread apply
//! all bt`, damaged cores (never a panic), raw extraction, `.zst` cores.
//!
//! Cores with a manifest are inspected with `--no-verify` except in the test
//! of the manifest check itself, so that a slow hash never hides the rest.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long one `coresnap inspect`/`extract` may take.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(120);

fn coresnap_bin() -> PathBuf {
    std::env::var_os("CORESNAP_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_coresnap").into())
        .into()
}

/// Runs `coresnap ARGS`, returns the output; panics on a timeout or a crash
/// (a signal, or Rust's panic exit code 101).
fn coresnap(args: &[&OsStr]) -> CmdOutput {
    let mut cmd = Command::new(coresnap_bin());
    cmd.args(args);
    let out = run_with_timeout(&mut cmd, INSPECT_TIMEOUT, false);
    assert!(
        out.status.signal().is_none() && out.status.code() != Some(101),
        "coresnap {args:?} crashed:\n{}",
        out.describe()
    );
    out
}

/// `coresnap inspect --json EXTRA CORE`, parsed.
fn inspect_json(core: &Path, extra: &[&str]) -> Value {
    let mut args: Vec<&OsStr> = vec!["inspect".as_ref(), "--json".as_ref()];
    args.extend(extra.iter().map(|a| OsStr::new(*a)));
    args.push(core.as_os_str());
    let out = coresnap(&args);
    assert!(
        out.success(),
        "inspect {} failed:\n{}",
        core.display(),
        out.describe()
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("inspect --json output is not JSON ({e}):\n{}", out.stdout))
}

/// tid -> function names of its backtrace, as `inspect --json` gives them
/// (`??` for unknown), cut after `main` as gdb does (`backtrace past-main`
/// is off by default).
fn inspect_backtraces(report: &Value) -> BTreeMap<i64, Vec<String>> {
    let mut out = BTreeMap::new();
    for t in report["threads"].as_array().expect("threads") {
        let tid = t["tid"].as_i64().unwrap();
        let mut names: Vec<String> = t["backtrace"]["frames"]
            .as_array()
            .unwrap_or_else(|| panic!("no backtrace for thread {tid}: {t}"))
            .iter()
            .map(|f| f["function"].as_str().unwrap_or("??").to_string())
            .collect();
        if let Some(i) = names.iter().position(|n| n == "main") {
            names.truncate(i + 1);
        }
        out.insert(tid, names);
    }
    out
}

/// tid -> function names of gdb's `thread apply all bt` for `core`, with
/// `debug_dir` as gdb's debug-file-directory when given.
fn gdb_backtraces(exe: &Path, core: &Path, debug_dir: Option<&str>) -> BTreeMap<i64, Vec<String>> {
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch"])
        .args(["-iex", "set debuginfod enabled off"])
        .env("LC_ALL", "C");
    if let Some(dir) = debug_dir {
        cmd.arg("-iex")
            .arg(format!("set debug-file-directory {dir}"));
    }
    cmd.args(["-ex", "set pagination off", "-ex", "set width 0"])
        .args(["-ex", "thread apply all bt"])
        .arg(exe)
        .arg(core);
    let out = run_debugger(&mut cmd);
    let blocks = parse_thread_apply(&out);
    assert!(!blocks.is_empty(), "no threads in gdb's output:\n{out}");
    blocks
        .iter()
        .map(|b| (i64::from(b.lwp), bt_functions(&b.body)))
        .collect()
}

fn thread_tids(report: &Value) -> Vec<i64> {
    report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tid"].as_i64().unwrap())
        .collect()
}

fn expected_tids(t: &Target) -> Vec<i64> {
    let mut v: Vec<i64> = THREAD_CHAINS.iter().map(|(k, _)| t.num(k)).collect();
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------------------
// Kernel cores
// ---------------------------------------------------------------------------

/// Restores /proc/sys/kernel/core_pattern on drop, if it was changed.
struct CorePattern {
    saved: Option<String>,
}

impl CorePattern {
    /// Makes sure the kernel writes `core` or `core.PID` into the cwd: if the
    /// pattern is something else (a pipe to systemd-coredump, a path), sets
    /// it to `core` until drop.
    fn ensure_cwd() -> CorePattern {
        let current = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
        let current = current.trim_end_matches('\n').to_string();
        if current == "core" {
            return CorePattern { saved: None };
        }
        fs::write("/proc/sys/kernel/core_pattern", "core")
            .unwrap_or_else(|e| panic!("cannot set core_pattern (was {current:?}): {e}"));
        CorePattern {
            saved: Some(current),
        }
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        if let Some(p) = self.saved.take() {
            let _ = fs::write("/proc/sys/kernel/core_pattern", p);
        }
    }
}

/// Whether the kernel can be made to write its cores into the cwd: the
/// pattern is `core` already, or this test may set it (the kernel wants
/// CAP_SYS_ADMIN for kernel.core_pattern).
fn core_pattern_settable() -> Result<(), Missing> {
    let current = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if current.trim_end_matches('\n') == "core" {
        return Ok(());
    }
    capability(
        Capability::SysAdmin,
        &format!("to set kernel.core_pattern to `core` (it is {current:?})"),
    )
}

/// Only one kernel core at a time: the core_pattern is global.
static KERNEL_CORE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `prog` with `ulimit -c unlimited` in `dir`, lets `prepare` look at
/// it while it runs, kills it with SIGABRT and returns the core the kernel
/// wrote there (`core` or `core.PID`).
fn kernel_core<T>(prog: Program, dir: &Path, prepare: impl FnOnce(&Target) -> T) -> (T, PathBuf) {
    let _lock = KERNEL_CORE.lock().unwrap_or_else(|e| e.into_inner());
    let _pattern = CorePattern::ensure_cwd();
    let exe = build(prog);
    let script = "ulimit -c unlimited && cd \"$1\" && exec \"$0\"";
    let target = Target::spawn(
        Path::new("/bin/sh"),
        &[
            "-c".as_ref(),
            script.as_ref(),
            exe.as_os_str(),
            dir.as_os_str(),
        ],
    );
    let prepared = prepare(&target);
    set_coredump_filter(target.pid, 0x33);
    target.signal(libc::SIGABRT);
    let zombie = wait_until(Duration::from_secs(60), || {
        fs::read_to_string(format!("/proc/{}/stat", target.pid))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    });
    assert!(zombie, "target {} did not die of SIGABRT", target.pid);
    let plain = dir.join("core");
    let with_pid = dir.join(format!("core.{}", target.pid));
    let core = [plain, with_pid]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "the kernel wrote no core in {} (core_pattern {:?}, core_uses_pid {:?})",
                dir.display(),
                fs::read_to_string("/proc/sys/kernel/core_pattern"),
                fs::read_to_string("/proc/sys/kernel/core_uses_pid")
            )
        });
    (prepared, core)
}

/// The threads target's tids and a core of it written by `dumper` (`None`:
/// the kernel).
fn threads_core(
    prog: Program,
    dumper: Option<Dumper>,
    dir: &Path,
) -> (Vec<i64>, PathBuf, BTreeMap<i64, &'static str>) {
    let names = |t: &Target| -> BTreeMap<i64, &'static str> {
        THREAD_CHAINS.iter().map(|(k, _)| (t.num(k), *k)).collect()
    };
    match dumper {
        Some(d) => {
            let t = start_threads_target(prog);
            let core = dump(d, t.pid, dir, &[]);
            (expected_tids(&t), core, names(&t))
        }
        None => {
            let ((tids, names), core) = kernel_core(prog, dir, |t| {
                let mut tids: Vec<i64> = THREAD_CHAINS.iter().map(|(k, _)| t.num(k)).collect();
                tids.sort_unstable();
                assert_eq!(
                    thread_ids(t.pid)
                        .into_iter()
                        .map(i64::from)
                        .collect::<Vec<_>>(),
                    tids
                );
                wait_threads_sleeping(t.pid, &[]);
                (tids, names(t))
            });
            (tids, core, names)
        }
    }
}

fn dumper_name(d: Option<Dumper>) -> &'static str {
    d.map_or("kernel", |d| d.name())
}

// ---------------------------------------------------------------------------
// Threads, functions, backtraces
// ---------------------------------------------------------------------------

/// For one core: the threads are the target's, each parked in the function
/// gdb shows as its frame #0, each backtrace holds the thread's own chain,
/// and the names match gdb's `thread apply all bt` frame for frame, with
/// and without separate debug info.
fn check_threads_core(prog: Program, dumper: Option<Dumper>) {
    let scratch = Scratch::new(&format!("inspect-{}", dumper_name(dumper)));
    let (tids, core, names) = threads_core(prog, dumper, scratch.path());
    let exe = build(prog);
    let what = format!("{} core of {}", dumper_name(dumper), prog.name());

    let report = inspect_json(&core, &["--backtrace", "--debug-info"]);
    assert_eq!(report["schema"], "coresnap-inspect");
    let mut got = thread_tids(&report);
    if dumper == Some(Dumper::Coresnap) {
        assert_eq!(got[0], tids[0], "{what}: main thread first");
    }
    got.sort_unstable();
    assert_eq!(got, tids, "{what}: threads");
    let process = &report["process"];
    assert_eq!(process["pid"].as_i64(), Some(tids[0]), "{what}");
    assert_eq!(
        process["executable"].as_str(),
        Some(exe.to_str().unwrap()),
        "{what}: executable"
    );
    match dumper {
        None => assert_eq!(process["signal"]["number"], 6, "{what}: SIGABRT"),
        Some(Dumper::Coresnap) => assert!(process["signal"].is_null(), "{what}: no signal"),
        _ => {}
    }

    // Every backtrace holds the thread's chain, found by CFI.
    let ours = inspect_backtraces(&report);
    for t in report["threads"].as_array().unwrap() {
        let tid = t["tid"].as_i64().unwrap();
        let key = names[&tid];
        let chain = THREAD_CHAINS.iter().find(|(k, _)| *k == key).unwrap().1;
        assert!(
            has_chain(&ours[&tid], chain),
            "{what}: thread {tid} ({key}): {:?} lacks {chain:?}",
            ours[&tid]
        );
        let bt = &t["backtrace"];
        for f in bt["frames"].as_array().unwrap() {
            if chain.contains(&f["function"].as_str().unwrap_or("")) {
                assert_ne!(
                    f["method"], "frame-pointer",
                    "{what}: {f} should come from CFI"
                );
            }
        }
        assert_eq!(
            bt["complete"], true,
            "{what}: thread {tid} ends with {}",
            bt["end"]
        );
    }

    // The same names as gdb, in the same order; frame #0 is where the
    // thread is parked.
    for debug_dir in [None, Some("/nonexistent-debug-dir")] {
        let (ours, report) = match debug_dir {
            None => (ours.clone(), report.clone()),
            Some(dir) => {
                let r = inspect_json(&core, &["--backtrace", "--debug-info", "--debug-dir", dir]);
                (inspect_backtraces(&r), r)
            }
        };
        let gdb = gdb_backtraces(&exe, &core, debug_dir);
        let label = format!("{what} (debug dir {debug_dir:?})");
        assert_eq!(
            gdb.keys().collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>(),
            "{label}: thread sets differ"
        );
        for (tid, funcs) in &gdb {
            assert_eq!(&ours[tid], funcs, "{label}: thread {tid}: inspect vs gdb");
        }
        for t in report["threads"].as_array().unwrap() {
            let tid = t["tid"].as_i64().unwrap();
            assert_eq!(
                t["location"]["function"].as_str().unwrap_or("??"),
                gdb[&tid][0],
                "{label}: thread {tid} is parked in gdb's frame #0"
            );
        }
    }
}

#[test]
fn coresnap_core_threads_and_backtraces_match_gdb() {
    check_threads_core(Program::Threads, Some(Dumper::Coresnap));
}

#[test]
fn coresnap_static_core_threads_and_backtraces_match_gdb() {
    check_threads_core(Program::ThreadsStatic, Some(Dumper::Coresnap));
}

#[test]
fn gcore_core_threads_and_backtraces_match_gdb() {
    check_threads_core(Program::Threads, Some(Dumper::Gcore));
}

#[test]
fn kernel_core_threads_and_backtraces_match_gdb() {
    require!(core_pattern_settable());
    check_threads_core(Program::Threads, None);
}

/// Without `--debug-info` a backtrace is the symbol-table view of the same
/// stack (what eu-stack prints by default): the same physical frames, found
/// the same way, named by the symbol that holds each address, with no
/// file:line and no inline or tail-call frames; `--debug-info` adds those
/// from the DWARF (the target is built with -g).
#[test]
fn debug_info_is_read_only_when_asked() {
    let scratch = Scratch::new("inspect-debug-info");
    let t = start_threads_target(Program::Threads);
    let core = dump(Dumper::Coresnap, t.pid, scratch.path(), &[]);
    drop(t);
    let plain = inspect_json(&core, &["--backtrace"]);
    let full = inspect_json(&core, &["--backtrace", "--debug-info"]);
    let frames = |t: &Value| t["backtrace"]["frames"].as_array().unwrap().clone();
    let mut lines_seen = 0;
    for (p, f) in plain["threads"]
        .as_array()
        .unwrap()
        .iter()
        .zip(full["threads"].as_array().unwrap())
    {
        assert_eq!(p["tid"], f["tid"]);
        let physical: Vec<(Value, Value, Value)> = frames(f)
            .iter()
            .filter(|x| x["method"] != "inline" && x["method"] != "tail-call")
            .map(|x| {
                (
                    x["address"].clone(),
                    x["method"].clone(),
                    x["symbol"].clone(),
                )
            })
            .collect();
        let ours: Vec<(Value, Value, Value)> = frames(p)
            .iter()
            .map(|x| {
                assert!(x["file"].is_null() && x["line"].is_null(), "{x}");
                assert_eq!(x["function"], x["symbol"], "{x}");
                (
                    x["address"].clone(),
                    x["method"].clone(),
                    x["function"].clone(),
                )
            })
            .collect();
        assert_eq!(ours, physical, "thread {}", p["tid"]);
        lines_seen += frames(f).iter().filter(|x| x["line"].is_u64()).count();
    }
    assert!(lines_seen > 0, "--debug-info gave no line: {full}");
}

#[test]
fn text_output_names_threads_functions_and_frames() {
    let scratch = Scratch::new("inspect-text");
    let t = start_threads_target(Program::Threads);
    let core = dump(Dumper::Coresnap, t.pid, scratch.path(), &[]);
    let out = coresnap(&[
        "inspect".as_ref(),
        "--no-verify".as_ref(),
        "--backtrace".as_ref(),
        core.as_os_str(),
    ]);
    assert!(out.success(), "{}", out.describe());
    let text = &out.stdout;
    assert!(
        text.contains(&format!("process:    pid {} (threads)", t.pid)),
        "{text}"
    );
    assert!(text.contains("threads (5):"), "{text}");
    assert!(text.contains(&format!("PID {} - process", t.pid)), "{text}");
    for (key, chain) in THREAD_CHAINS {
        assert!(text.contains(&format!("TID {}:", t.num(key))), "{text}");
        for f in *chain {
            assert!(text.contains(&format!(" {f} ")), "{f} missing:\n{text}");
        }
    }
    assert!(
        text.contains("[cfi]") && text.contains("[registers]"),
        "{text}"
    );
    assert!(text.contains("build-id matches, used"), "{text}");
    assert!(text.contains("NT_PRSTATUS"), "{text}");
}

// ---------------------------------------------------------------------------
// Build-ids
// ---------------------------------------------------------------------------

#[test]
fn replaced_executable_is_not_used() {
    let scratch = Scratch::new("inspect-buildid");
    let exe = scratch.path().join("threads-copy");
    fs::copy(build(Program::Threads), &exe).unwrap();
    let t = Target::spawn(&exe, &[]);
    wait_threads_sleeping(t.pid, &[]);
    let core = dump(Dumper::Coresnap, t.pid, scratch.path(), &[]);
    drop(t);
    // Another program (another build-id) at the same path.
    fs::remove_file(&exe).unwrap();
    fs::copy(build(Program::ThreadsStatic), &exe).unwrap();
    let report = inspect_json(&core, &["--no-verify", "--backtrace"]);
    let module = report["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"] == exe.to_str().unwrap())
        .unwrap_or_else(|| panic!("no module for {}: {}", exe.display(), report["modules"]));
    assert_eq!(module["status"], "build-id-mismatch", "{module}");
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("build-id")),
        "{}",
        report["warnings"]
    );
    // No name from the wrong file.
    for t in report["threads"].as_array().unwrap() {
        for f in t["backtrace"]["frames"].as_array().unwrap() {
            if f["module"] == exe.to_str().unwrap() {
                assert!(f["function"].is_null(), "name from a mismatched file: {f}");
            }
        }
    }
    // Nor what the file on disk is instead (docs/SECURITY.md).
    let data = fs::read(&exe).unwrap();
    let disk_id = object::File::parse(&*data)
        .ok()
        .and_then(|o| object::Object::build_id(&o).ok().flatten())
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .expect("the replacement has a build-id");
    let text = coresnap(&["inspect".as_ref(), core.as_os_str()]);
    for output in [report.to_string(), text.stdout, text.stderr] {
        assert!(
            !output.contains(&disk_id),
            "the replacement's build-id {disk_id} is reported:\n{output}"
        );
    }
}

// ---------------------------------------------------------------------------
// Damaged cores
// ---------------------------------------------------------------------------

/// A small xorshift generator: deterministic damage.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// End of the headers and notes (everything the parser reads first).
fn headers_end(core: &[u8]) -> usize {
    let phoff = u64::from_le_bytes(core[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(core[56..58].try_into().unwrap()) as usize;
    let mut end = phoff + 56 * phnum;
    for i in 0..phnum {
        let ph = &core[phoff + 56 * i..phoff + 56 * (i + 1)];
        if u32::from_le_bytes(ph[0..4].try_into().unwrap()) == 4 {
            let off = u64::from_le_bytes(ph[8..16].try_into().unwrap()) as usize;
            let size = u64::from_le_bytes(ph[32..40].try_into().unwrap()) as usize;
            end = end.max(off + size);
        }
    }
    end.min(core.len())
}

/// Feeds truncated, bit-flipped and value-smashed variants of `core`
/// through the parser and the whole analysis (backtraces included, files
/// not consulted); a panic fails the test.
fn damage(core: &[u8], seed: u64, rounds: usize) -> usize {
    let mut rng = Rng(seed | 1);
    let end = headers_end(core);
    let mut reports = 0;
    let mut check = |bytes: &[u8]| {
        if coresnap::inspect::fuzz_one(bytes).is_some() {
            reports += 1;
        }
    };
    check(core);
    // Truncations: every 16 bytes through the headers and notes, then some.
    for len in (0..end).step_by(16) {
        check(&core[..len]);
    }
    for _ in 0..rounds / 4 {
        check(&core[..rng.below(core.len())]);
    }
    // Bit flips and smashed fields in the headers and notes.
    let smash: [u64; 6] = [0, 1, 0xffff, 0xffff_ffff, 0x7fff_ffff_ffff_ffff, u64::MAX];
    for round in 0..rounds {
        let mut v = core.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(end);
            if round.is_multiple_of(3) {
                let value = smash[rng.below(smash.len())].to_le_bytes();
                let width = [2usize, 4, 8][rng.below(3)];
                let at = at.min(v.len().saturating_sub(width));
                v[at..at + width].copy_from_slice(&value[..width]);
            } else {
                v[at] ^= 1 << rng.below(8);
            }
        }
        check(&v);
    }
    reports
}

fn seed_cores() -> Vec<PathBuf> {
    let dir = testdata_dir().join("cores");
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "core"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "seed cores missing in {}", dir.display());
    v
}

#[test]
fn seed_cores_read_cleanly() {
    for path in seed_cores() {
        let bytes = fs::read(&path).unwrap();
        let report = coresnap::inspect::fuzz_one(&bytes)
            .unwrap_or_else(|| panic!("{} does not parse", path.display()));
        assert_eq!(report.threads.len(), 5, "{}: threads", path.display());
        assert!(report.process.is_some(), "{}", path.display());
        assert!(
            report.warnings.is_empty(),
            "{}: {:?}",
            path.display(),
            report.warnings
        );
    }
}

#[test]
fn damaged_seed_cores_never_panic() {
    for (i, path) in seed_cores().iter().enumerate() {
        let bytes = fs::read(path).unwrap();
        let reports = damage(&bytes, 0x9e37_79b9_7f4a_7c15 ^ i as u64, 3000);
        assert!(reports > 0, "{}: no variant gave a report", path.display());
    }
}

/// Damaged cores through the command line: a report (exit 0) or a clean
/// error (exit 1, one `coresnap:` line), never a crash.
#[test]
fn damaged_cores_give_a_clean_error_or_report() {
    let scratch = Scratch::new("inspect-damaged");
    let t = start_threads_target(Program::Threads);
    let core = dump(Dumper::Coresnap, t.pid, scratch.path(), &["--filter", "0"]);
    drop(t);
    let bytes = fs::read(&core).unwrap();
    let end = headers_end(&bytes);
    // In process, on a full-size core too.
    damage(&bytes, 42, 1500);

    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        (
            "wrong magic".into(),
            b"\x7fELG".iter().chain(&bytes[4..]).copied().collect(),
        ),
        ("text file".into(), b"hello, world\n".to_vec()),
        ("header only".into(), bytes[..64].to_vec()),
        (
            "cut in the program headers".into(),
            bytes[..64 + 56 * 3 + 7].to_vec(),
        ),
        ("cut in the notes".into(), bytes[..end / 2].to_vec()),
        ("cut after the notes".into(), bytes[..end + 100].to_vec()),
    ];
    let mut huge_phnum = bytes.clone();
    huge_phnum[56..58].copy_from_slice(&0xfffeu16.to_le_bytes());
    cases.push(("absurd e_phnum".into(), huge_phnum));
    let mut xnum = bytes.clone();
    xnum[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
    xnum[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("PN_XNUM with e_shoff out of the file".into(), xnum));
    let mut phoff = bytes.clone();
    phoff[32..40].copy_from_slice(&(1u64 << 62).to_le_bytes());
    cases.push(("absurd e_phoff".into(), phoff));
    let mut note = bytes.clone();
    let notes_off = {
        let ph = &bytes[64..120];
        u64::from_le_bytes(ph[8..16].try_into().unwrap()) as usize
    };
    note[notes_off + 4..notes_off + 8].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    cases.push(("first note runs past its segment".into(), note));
    let mut overlap = bytes.clone();
    // Make the second PT_LOAD start where the first does.
    let (a, b) = (64 + 56, 64 + 2 * 56);
    let first_vaddr: [u8; 8] = overlap[a + 16..a + 24].try_into().unwrap();
    overlap[b + 16..b + 24].copy_from_slice(&first_vaddr);
    cases.push(("overlapping segments".into(), overlap));

    for (name, data) in &cases {
        let path = scratch
            .path()
            .join(format!("case-{}", name.replace(' ', "-")));
        fs::write(&path, data).unwrap();
        let out = coresnap(&[
            "inspect".as_ref(),
            "--no-verify".as_ref(),
            "--backtrace".as_ref(),
            path.as_os_str(),
        ]);
        match out.status.code() {
            Some(0) => assert!(
                out.stdout.contains("threads ("),
                "{name}: report without threads section:\n{}",
                out.describe()
            ),
            Some(1) => {
                assert!(
                    out.stdout.is_empty(),
                    "{name}: error with output:\n{}",
                    out.describe()
                );
                assert!(
                    out.stderr.starts_with("coresnap: "),
                    "{name}:\n{}",
                    out.describe()
                );
            }
            _ => panic!("{name}: unexpected exit:\n{}", out.describe()),
        }
        let expect_error = [
            "empty",
            "wrong magic",
            "text file",
            "absurd e_phoff",
            "PN_XNUM with e_shoff out of the file",
        ];
        if expect_error.contains(&name.as_str()) {
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name}: should be an error:\n{}",
                out.describe()
            );
        }
        let expect_warning = [
            "cut in the notes",
            "first note runs past its segment",
            "overlapping segments",
            "absurd e_phnum",
            "cut after the notes",
        ];
        if expect_warning.contains(&name.as_str()) {
            assert_eq!(
                out.status.code(),
                Some(0),
                "{name}: should be a partial report:\n{}",
                out.describe()
            );
            assert!(
                out.stderr.contains("warning:"),
                "{name}: no warning:\n{}",
                out.describe()
            );
        }
    }
    let out = coresnap(&[
        "inspect".as_ref(),
        scratch.path().join("case-wrong-magic").as_os_str(),
    ]);
    assert!(out.stderr.contains("not an ELF file"), "{}", out.describe());
    let out = coresnap(&[
        "inspect".as_ref(),
        scratch
            .path()
            .join("case-first-note-runs-past-its-segment")
            .as_os_str(),
    ]);
    assert!(
        out.stderr.contains("runs past the end of its segment"),
        "{}",
        out.describe()
    );
    let out = coresnap(&[
        "inspect".as_ref(),
        scratch.path().join("case-overlapping-segments").as_os_str(),
    ]);
    assert!(out.stderr.contains("overlapping"), "{}", out.describe());
    let out = coresnap(&[
        "inspect".as_ref(),
        scratch.path().join("no-such-file").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
}

// ---------------------------------------------------------------------------
// extract
// ---------------------------------------------------------------------------

/// (vaddr, filesz, memsz, offset) of each PT_LOAD, read by hand.
fn loads(core: &[u8]) -> Vec<(u64, u64, u64, u64)> {
    let phoff = u64::from_le_bytes(core[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(core[56..58].try_into().unwrap()) as usize;
    (0..phnum)
        .map(|i| &core[phoff + 56 * i..phoff + 56 * (i + 1)])
        .filter(|ph| u32::from_le_bytes(ph[0..4].try_into().unwrap()) == 1)
        .map(|ph| {
            let f = |o: usize| u64::from_le_bytes(ph[o..o + 8].try_into().unwrap());
            (f(16), f(32), f(40), f(8))
        })
        .collect()
}

fn pattern(tag: u64, len: usize) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| ((tag << 48) | i as u64).to_le_bytes())
        .collect()
}

#[test]
fn extract_raw_and_range_from_memory_target() {
    let scratch = Scratch::new("extract");
    let t = Target::spawn(&build(Program::Memory), &[scratch.path().as_os_str()]);
    set_coredump_filter(t.pid, 0x33);
    wait_threads_sleeping(t.pid, &[]);
    let core = dump(Dumper::Coresnap, t.pid, scratch.path(), &[]);
    let bytes = fs::read(&core).unwrap();
    let segs = loads(&bytes);

    // --raw: one file per PT_LOAD with bytes, sizes add up, index lists all.
    let dir = scratch.path().join("raw");
    let out = coresnap(&[
        "extract".as_ref(),
        "--raw".as_ref(),
        dir.as_os_str(),
        core.as_os_str(),
    ]);
    assert!(out.success(), "{}", out.describe());
    let index = fs::read_to_string(dir.join("index.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = index
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), segs.len(), "index rows vs PT_LOADs:\n{index}");
    let mut total = 0u64;
    let mut files = 0;
    for ((vaddr, filesz, memsz, _), row) in segs.iter().zip(&rows) {
        assert_eq!(row[0], format!("{vaddr:#x}"), "{index}");
        assert_eq!(row[1], format!("{:#x}", vaddr + memsz), "{index}");
        assert_eq!(row[2], filesz.to_string(), "{index}");
        if *filesz > 0 {
            let name = format!("{vaddr:016x}-{:016x}.bin", vaddr + filesz);
            assert_eq!(row[4], name);
            let len = fs::metadata(dir.join(&name)).unwrap().len();
            assert_eq!(len, *filesz, "{name}");
            total += len;
            files += 1;
        } else {
            assert_eq!(row[4], "-");
        }
    }
    let dir_files = fs::read_dir(&dir).unwrap().count() - 1;
    assert_eq!(dir_files, files, "files in {}", dir.display());
    assert_eq!(
        total,
        segs.iter().map(|s| s.1).sum::<u64>(),
        "sizes add up to p_filesz"
    );
    assert!(index.contains("\trw-\t"), "{index}");

    // The known patterns are at the right offset of the right file (a
    // region may span two segments: .data and .bss, say).
    for (key, tag) in [
        ("heap", 0x4845u64),
        ("global", 0x474c),
        ("stack", 0x5354),
        ("shanon", 0x5348),
        ("memfd", 0x4d46),
    ] {
        let addr = t.addr(key);
        let len = t.num(&format!("{key}_len")) as usize;
        let want = pattern(tag, len);
        let mut got = Vec::new();
        while got.len() < len {
            let at = addr + got.len() as u64;
            let (vaddr, filesz, _, _) = *segs
                .iter()
                .find(|s| s.0 <= at && at < s.0 + s.1)
                .unwrap_or_else(|| panic!("{key} byte at {at:#x} is not in the core"));
            let file = dir.join(format!("{vaddr:016x}-{:016x}.bin", vaddr + filesz));
            let data = fs::read(&file).unwrap();
            let off = (at - vaddr) as usize;
            let n = (len - got.len()).min(data.len() - off);
            got.extend_from_slice(&data[off..off + n]);
        }
        assert_eq!(got, want, "{key} in the raw files");

        // --addr/--len gives the same bytes.
        let out = Command::new(coresnap_bin())
            .args([
                "extract",
                "--addr",
                &format!("{addr:#x}"),
                "--len",
                &len.to_string(),
            ])
            .arg(&core)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, want, "extract --addr {key}");
    }

    // Memory that is not in the core: an error naming the first address.
    let dontdump = t.addr("dontdump");
    let out = coresnap(&[
        "extract".as_ref(),
        "--addr".as_ref(),
        format!("{dontdump:#x}").as_ref(),
        "--len".as_ref(),
        "16".as_ref(),
        core.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(out.stdout.is_empty(), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("{dontdump:#x}")),
        "{}",
        out.describe()
    );
    // A range that runs off the end of a dumped region names where it stops.
    let (vaddr, filesz, _, _) = *segs
        .iter()
        .find(|s| s.0 <= t.addr("heap") && t.addr("heap") < s.0 + s.1)
        .unwrap();
    let end = vaddr + filesz;
    let out = coresnap(&[
        "extract".as_ref(),
        "--addr".as_ref(),
        format!("{:#x}", end - 8).as_ref(),
        "--len".as_ref(),
        "16".as_ref(),
        core.as_os_str(),
    ]);
    if !segs.iter().any(|s| s.0 == end && s.1 > 0) {
        assert_eq!(out.status.code(), Some(1), "{}", out.describe());
        assert!(
            out.stderr.contains(&format!("{end:#x}")),
            "{}",
            out.describe()
        );
    }
    // An existing, non-empty directory is not written into without --force.
    let out = coresnap(&[
        "extract".as_ref(),
        "--raw".as_ref(),
        dir.as_os_str(),
        core.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
}

// ---------------------------------------------------------------------------
// Compressed cores
// ---------------------------------------------------------------------------

#[test]
fn zst_core_is_read_through_its_seek_table() {
    let scratch = Scratch::new("inspect-zst");
    let t = Target::spawn(&build(Program::Memory), &[scratch.path().as_os_str()]);
    set_coredump_filter(t.pid, 0x33);
    wait_threads_sleeping(t.pid, &[]);
    let plain = dump(Dumper::Coresnap, t.pid, scratch.path(), &[]);
    let prefix = scratch.path().join("z");
    let out = coresnap(&[
        "-z".as_ref(),
        "-o".as_ref(),
        prefix.as_os_str(),
        t.pid.to_string().as_ref(),
    ]);
    assert!(out.success(), "{}", out.describe());
    let zst = scratch.path().join(format!("z.{}.zst", t.pid));

    let a = inspect_json(&plain, &["--no-verify", "--backtrace"]);
    let b = inspect_json(&zst, &["--no-verify", "--backtrace"]);
    assert_eq!(b["file"]["format"], "zstd-seekable");
    assert_eq!(
        a["threads"].as_array().unwrap().len(),
        b["threads"].as_array().unwrap().len()
    );
    for (x, y) in a["threads"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["threads"].as_array().unwrap())
    {
        assert_eq!(x["location"]["function"], y["location"]["function"]);
        // Frames are decompressed only up to the bytes read so far, then
        // continued: the stacks read through them are the plain core's.
        let addresses = |t: &Value| -> Vec<Value> {
            t["backtrace"]["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["address"].clone())
                .collect()
        };
        assert_eq!(addresses(x), addresses(y), "thread {}", x["tid"]);
    }
    assert_eq!(a["sizes"]["logical"], b["sizes"]["logical"]);

    // A core of several frames (the threads target's 32 MiB: four 8 MiB
    // thread stacks): no need to decompress them all for the report.
    let threads = start_threads_target(Program::Threads);
    let prefix = scratch.path().join("t");
    let out = coresnap(&[
        "-z".as_ref(),
        "-o".as_ref(),
        prefix.as_os_str(),
        threads.pid.to_string().as_ref(),
    ]);
    assert!(out.success(), "{}", out.describe());
    let tzst = scratch.path().join(format!("t.{}.zst", threads.pid));
    let c = inspect_json(&tzst, &["--no-verify", "--no-files"]);
    let d = &c["file"]["decompression"];
    let frames = d["frames"].as_u64().unwrap();
    let done = d["frames_decompressed"].as_u64().unwrap();
    assert!(frames >= 4, "{d}");
    // The first frame (headers, notes), and the one with the vDSO and the
    // ELF header pages the build-ids are read from.
    assert!(done <= 2, "decompressed {done} of {frames} frames: {d}");
    assert_eq!(c["threads"].as_array().unwrap().len(), 5);
    // Backtraces read the stacks: more frames, still not all.
    let c = inspect_json(&tzst, &["--no-verify", "--backtrace"]);
    let d = &c["file"]["decompression"];
    assert!(d["frames_decompressed"].as_u64().unwrap() < frames, "{d}");
    for (tid, funcs) in inspect_backtraces(&c) {
        let key = THREAD_CHAINS
            .iter()
            .find(|(k, _)| threads.num(k) == tid)
            .unwrap();
        assert!(has_chain(&funcs, key.1), "{tid}: {funcs:?}");
    }

    // extract --addr on the .zst gives the plain core's bytes.
    let heap = t.addr("heap");
    let len = t.num("heap_len") as usize;
    let out = Command::new(coresnap_bin())
        .args([
            "extract",
            "--addr",
            &format!("{heap:#x}"),
            "--len",
            &len.to_string(),
        ])
        .arg(&zst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, pattern(0x4845, len));

    // A .zst without a seek table (plain `zstd`) is refused with a hint.
    let plain_zst = scratch.path().join("plain.zst");
    let st = Command::new("zstd")
        .args(["-q", "-1", "-o"])
        .arg(&plain_zst)
        .arg(&plain)
        .status();
    if st.is_ok_and(|s| s.success()) {
        let out = coresnap(&["inspect".as_ref(), plain_zst.as_os_str()]);
        assert_eq!(out.status.code(), Some(1), "{}", out.describe());
        assert!(out.stderr.contains("zstd -d"), "{}", out.describe());
    }
}

// ---------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------

#[test]
fn manifest_hashes_are_checked() {
    let scratch = Scratch::new("inspect-manifest");
    let t = start_threads_target(Program::Threads);
    let core = dump(Dumper::Coresnap, t.pid, scratch.path(), &["--filter", "0"]);
    let manifest = PathBuf::from(format!("{}.json", core.display()));
    assert!(
        manifest.exists(),
        "a dump with default options writes a manifest, but {} is missing",
        manifest.display()
    );
    // Not checked unless asked: the check reads every stored byte.
    let out = coresnap(&["inspect".as_ref(), core.as_os_str()]);
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout
            .contains("present, not verified (run `coresnap verify`"),
        "{}",
        out.describe()
    );
    let report = inspect_json(&core, &[]);
    assert_eq!(
        report["manifest"]["verification"], "not-checked",
        "{}",
        report["manifest"]
    );
    assert_eq!(report["manifest"]["present"], true);
    let report = inspect_json(&core, &["--verify"]);
    assert_eq!(
        report["manifest"]["verification"], "verified",
        "{}",
        report["manifest"]
    );
    assert!(
        report["capture"]["time_utc"].is_string(),
        "{}",
        report["capture"]
    );
    assert_eq!(report["capture"]["tool"], "coresnap");

    // One byte changed in a memory segment: the check fails, exit 1.
    let mut bytes = fs::read(&core).unwrap();
    let (_, filesz, _, offset) = *loads(&bytes).iter().find(|s| s.1 > 0).unwrap();
    let at = (offset + filesz / 2) as usize;
    bytes[at] ^= 0xff;
    fs::write(&core, &bytes).unwrap();
    let out = coresnap(&["inspect".as_ref(), "--verify".as_ref(), core.as_os_str()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(out.stdout.contains("NOT VERIFIED"), "{}", out.describe());
    // Without --verify the damage is not looked for (exit 0), and
    // --no-verify, the old way of asking for that, still works.
    let out = coresnap(&["inspect".as_ref(), core.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    let report = inspect_json(&core, &["--no-verify"]);
    assert_eq!(report["manifest"]["verification"], "not-checked");
}

/// Keeps the helper used: a stable, documented entry point for the corpus.
#[test]
fn fuzz_entry_point_rejects_garbage() {
    assert!(coresnap::inspect::fuzz_one(b"").is_none());
    assert!(coresnap::inspect::fuzz_one(&[0x7f, b'E', b'L', b'F']).is_none());
    let _ = OsStr::new("");
}
