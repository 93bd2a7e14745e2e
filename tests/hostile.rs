//! Issue 15, items 1-4: coresnap runs as root and reads cores and targets
//! that may belong to someone else, who must not turn it against its own
//! machine. Each test plays the attacker for real:
//!
//! - `extract --raw` into a directory an unprivileged user (`nobody`, via
//!   setpriv) owns and fills with symbolic links, before (`--force`) and
//!   during the extraction (a shell loop that plants `index.tsv` as soon
//!   as the first region file appears): root's files stay untouched;
//! - `extract --raw` under umask 000: the directory is 0700, every file
//!   0600;
//! - a core whose `NT_FILE` names a FIFO, a socket, devices and `/proc`
//!   files, and one whose path climbs out of `--sysroot`: inspect ends in
//!   bounded time, opens none of them for reading (strace shows only
//!   `O_PATH` handles), uses no file outside the sysroot, and with
//!   `--no-local-files` looks up no path of the core at all;
//! - a target whose name, command line and mapped file carry terminal
//!   escape sequences and a newline, and a tracer whose name does: no
//!   text output of dump, inspect or extract carries a control character,
//!   and `--json` keeps the exact names.
//!
//! The hostile cores are real cores of `testdata/mapnames.c`, dumped by
//! coresnap, with at most the bytes of one `NT_FILE` path changed to
//! another path of the same length. Every process started here is killed
//! by a guard; every wait has a timeout.

use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::*;

/// How long one coresnap run may take. A FIFO opened for reading blocks
/// forever, so this is what makes "never hangs" fail rather than wait.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// `setpriv` options that run a program as nobody:nogroup.
const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];
const NOBODY: u32 = 65534;

fn coresnap_bin() -> PathBuf {
    std::env::var_os("CORESNAP_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_coresnap").into())
        .into()
}

fn coresnap(args: &[&OsStr]) -> CmdOutput {
    let mut cmd = Command::new(coresnap_bin());
    cmd.args(args);
    run_with_timeout(&mut cmd, RUN_TIMEOUT, false)
}

fn nobody_can_act() -> Vec<Result<(), Missing>> {
    vec![
        program("setpriv", "--version", "util-linux"),
        capability(
            Capability::Setuid,
            "for setpriv to run the attacker as nobody",
        ),
        capability(
            Capability::Setgid,
            "for setpriv to run the attacker as nogroup",
        ),
    ]
}

/// Runs `sh -c SCRIPT` as nobody and waits for it.
fn as_nobody(script: &str, args: &[&OsStr]) -> CmdOutput {
    let mut cmd = Command::new(AS_NOBODY[0]);
    cmd.args(&AS_NOBODY[1..])
        .args(["sh", "-c", script, "attacker"])
        .args(args);
    run_with_timeout(&mut cmd, RUN_TIMEOUT, false)
}

/// A child killed and reaped on drop (a background attacker, a tracer).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = wait_until(Duration::from_secs(10), || {
            matches!(self.0.try_wait(), Ok(Some(_)) | Err(_))
        });
    }
}

/// Makes `dir` traversable by everyone (a scratch directory is 0700).
fn open_up(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A file of `len` bytes, none of whose pages is all zero (so that it is
/// written, not left as a hole, when extracted).
fn write_pattern(path: &Path, len: usize) {
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
    fs::write(path, bytes).unwrap();
}

/// mapnames mapping `files`, with coredump_filter `filter`, dumped by
/// coresnap into `dir`: (target, core). The target is still running.
fn mapnames_core(exe: &Path, files: &[&Path], filter: u32, dir: &Path) -> (Target, PathBuf) {
    let args: Vec<&OsStr> = files.iter().map(|f| f.as_os_str()).collect();
    let t = Target::spawn(exe, &args);
    set_coredump_filter(t.pid, filter);
    wait_threads_sleeping(t.pid, &[]);
    let core = dump(Dumper::Coresnap, t.pid, dir, &[]);
    (t, core)
}

/// Replaces every `old` path in the core's bytes (NUL-terminated, as in
/// `NT_FILE`) by `new`, padded to the same length with leading slashes,
/// which name the same file. Returns how many were replaced.
fn patch_path(core: &mut [u8], old: &[u8], new: &str) -> usize {
    assert!(new.len() <= old.len(), "{new} is longer than {old:?}");
    let mut padded = vec![b'/'; old.len() - new.len()];
    padded.extend_from_slice(new.as_bytes());
    let mut needle = old.to_vec();
    needle.push(0);
    let mut n = 0;
    let mut at = 0;
    while let Some(i) = core[at..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + at)
    {
        if i == 0 || core[i - 1] == 0 {
            core[i..i + old.len()].copy_from_slice(&padded);
            n += 1;
        }
        at = i + needle.len();
    }
    n
}

/// The region file names of `index.tsv` (fifth column).
fn region_names(index: &str) -> Vec<String> {
    index
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('\t').nth(4))
        .filter(|n| *n != "-")
        .map(str::to_string)
        .collect()
}

/// Checks that everything in `dir` is a regular file of root's, mode 0600.
fn assert_private_files(dir: &Path) {
    let mut n = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        assert!(
            meta.file_type().is_file(),
            "{} is not a regular file",
            entry.path().display()
        );
        assert_eq!(meta.uid(), 0, "{}", entry.path().display());
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o600,
            "{}",
            entry.path().display()
        );
        n += 1;
    }
    assert!(n > 1, "{} holds {n} files", dir.display());
}

// ---------------------------------------------------------------------------
// extract --raw: planted links, races, permissions
// ---------------------------------------------------------------------------

#[test]
fn extract_force_never_writes_through_planted_links() {
    require!(ptrace_access());
    for check in nobody_can_act() {
        require!(check);
    }
    let scratch = Scratch::new("hostile-force");
    open_up(scratch.path());
    let data = scratch.path().join("data");
    write_pattern(&data, 64 << 10);
    let (_t, core) = mapnames_core(&build(Program::MapNames), &[&data], 0x37, scratch.path());
    // The names extract will use, from a run into a private directory.
    let private = scratch.path().join("private");
    let out = coresnap(&[
        "extract".as_ref(),
        "--raw".as_ref(),
        private.as_os_str(),
        core.as_os_str(),
    ]);
    assert!(out.success(), "{}", out.describe());
    let regions = region_names(&fs::read_to_string(private.join("index.tsv")).unwrap());
    assert!(regions.len() >= 2, "{regions:?}");

    // Root's files, and a directory only root may write to.
    let victim = scratch.path().join("victim");
    fs::write(&victim, b"root's file\n").unwrap();
    let rootonly = scratch.path().join("rootonly");
    fs::create_dir(&rootonly).unwrap();
    open_up(&rootonly);
    let planted_new = rootonly.join("created-through-a-link");

    // nobody's directory, with links where extract will write.
    let shared = scratch.path().join("shared");
    fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(NOBODY), Some(NOBODY)).unwrap();
    let plant = as_nobody(
        r#"ln -s "$1" "$3/index.tsv" && ln -s "$1" "$3/$4" && ln -s "$2" "$3/$5""#,
        &[
            victim.as_os_str(),
            planted_new.as_os_str(),
            shared.as_os_str(),
            regions[0].as_ref(),
            regions[1].as_ref(),
        ],
    );
    assert!(plant.success(), "planting links: {}", plant.describe());

    let out = coresnap(&[
        "extract".as_ref(),
        "--raw".as_ref(),
        shared.as_os_str(),
        "--force".as_ref(),
        core.as_os_str(),
    ]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "root's file\n",
        "victim written"
    );
    assert!(
        !planted_new.exists(),
        "{} was created through a link",
        planted_new.display()
    );
    assert_private_files(&shared);
    // The extraction itself is whole: the same files as in private.
    for name in regions.iter().chain([&"index.tsv".to_string()]) {
        assert_eq!(
            fs::read(shared.join(name)).unwrap(),
            fs::read(private.join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn extract_race_with_a_planted_link_never_writes_through_it() {
    require!(ptrace_access());
    for check in nobody_can_act() {
        require!(check);
    }
    let scratch = Scratch::new("hostile-race");
    open_up(scratch.path());
    // A large mapping, extracted after the first region file (the
    // executable's), keeps extract busy while the attacker looks.
    let data = scratch.path().join("data");
    write_pattern(&data, 32 << 20);
    let (_t, core) = mapnames_core(&build(Program::MapNames), &[&data], 0x37, scratch.path());
    let victim = scratch.path().join("victim");
    fs::write(&victim, b"root's file\n").unwrap();
    let shared = scratch.path().join("shared");
    fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(NOBODY), Some(NOBODY)).unwrap();

    // Plants index.tsv as soon as a region file appears; gives up after a
    // bounded number of looks.
    let script = r#"
        i=0
        while [ $i -lt 3000000 ]; do
            for f in "$2"/*.bin; do
                if [ -e "$f" ]; then ln -s "$1" "$2/index.tsv" && echo planted; exit 0; fi
            done
            i=$((i + 1))
        done
        echo gave-up
    "#;
    let mut cmd = Command::new(AS_NOBODY[0]);
    cmd.args(&AS_NOBODY[1..])
        .args(["sh", "-c", script, "attacker"])
        .arg(&victim)
        .arg(&shared)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut attacker = Guard(cmd.spawn().expect("start the attacker"));
    let attacker_out = spawn_reader(attacker.0.stdout.take().unwrap());

    let out = coresnap(&[
        "extract".as_ref(),
        "--raw".as_ref(),
        shared.as_os_str(),
        core.as_os_str(),
    ]);
    let _ = wait_until(Duration::from_secs(5), || {
        matches!(attacker.0.try_wait(), Ok(Some(_)))
    });
    drop(attacker);
    let said = attacker_out
        .recv_timeout(Duration::from_secs(5))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    eprintln!("attacker: {}", said.trim());
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "root's file\n",
        "victim written"
    );
    if said.contains("planted") {
        // The link was there before extract wrote the index: refused.
        assert_eq!(out.status.code(), Some(1), "{}", out.describe());
        assert!(
            out.stderr.contains("another process writes there"),
            "{}",
            out.describe()
        );
        let index = fs::symlink_metadata(shared.join("index.tsv")).unwrap();
        assert!(
            index.file_type().is_symlink(),
            "the attacker's link was replaced"
        );
        // What extract had written is taken back.
        let left: Vec<_> = fs::read_dir(&shared)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "index.tsv")
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    } else {
        assert!(out.success(), "{}", out.describe());
    }
    // Whatever was written is root's alone.
    for entry in fs::read_dir(&shared).unwrap() {
        let meta = fs::symlink_metadata(entry.unwrap().path()).unwrap();
        if meta.file_type().is_file() {
            assert_eq!((meta.uid(), meta.permissions().mode() & 0o7777), (0, 0o600));
        }
    }
}

#[test]
fn extract_output_is_private_under_umask_000() {
    require!(ptrace_access());
    let scratch = Scratch::new("hostile-umask");
    let data = scratch.path().join("data");
    write_pattern(&data, 64 << 10);
    let (_t, core) = mapnames_core(&build(Program::MapNames), &[&data], 0x37, scratch.path());
    let created = scratch.path().join("created");
    let existing = scratch.path().join("existing");
    fs::create_dir(&existing).unwrap();
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o777)).unwrap();
    for dir in [&created, &existing] {
        let mut cmd = Command::new(coresnap_bin());
        cmd.args(["extract", "--raw"]).arg(dir).arg(&core);
        // SAFETY: umask is async-signal-safe and touches nothing shared.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT, false);
        assert!(out.success(), "{}", out.describe());
        assert_private_files(dir);
    }
    let mode = fs::metadata(&created).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "{}", created.display());
}

// ---------------------------------------------------------------------------
// inspect: what a core's paths make it open
// ---------------------------------------------------------------------------

/// The lines of an strace log (`-e trace=open,openat,openat2`) that open
/// `path` (as the core names it) other than as an `O_PATH` handle.
fn opened_for_reading(log: &str, path: &str) -> Vec<String> {
    let quoted = format!("\"{path}\"");
    log.lines()
        .filter(|l| l.contains(&quoted) && !l.contains("O_PATH"))
        .map(str::to_string)
        .collect()
}

fn strace_coresnap(args: &[&OsStr], log: &Path) -> CmdOutput {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=open,openat,openat2", "-o"])
        .arg(log)
        .arg(coresnap_bin())
        .args(args);
    run_with_timeout(&mut cmd, RUN_TIMEOUT, false)
}

#[test]
fn inspect_opens_no_fifo_socket_device_or_proc_file_a_core_names() {
    require!(ptrace_access(), program("strace", "-V", "strace"));
    let scratch = Scratch::new("hostile-open");
    // Data files with long names: the core's copies of these names become
    // the hostile paths (same length, leading slashes).
    let hostile = [
        "/dev/zero",
        "/dev/urandom",
        "/dev/tty",
        "/proc/self/mem",
        "/proc/self/environ",
        "/sys/kernel/notes",
    ];
    let mut files: Vec<PathBuf> = (0..hostile.len())
        .map(|i| {
            scratch
                .path()
                .join(format!("data-file-{i}-with-a-long-name"))
        })
        .collect();
    let fifo = scratch.path().join("will-be-a-fifo");
    let socket = scratch.path().join("will-be-a-socket");
    files.push(fifo.clone());
    files.push(socket.clone());
    for f in &files {
        write_pattern(f, 8192);
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    // Default filter: these private file mappings are not in the core, so
    // inspect has only the files on disk to tell what they are.
    let (t, core) = mapnames_core(&build(Program::MapNames), &refs, 0x33, scratch.path());
    drop(t);
    let mut bytes = fs::read(&core).unwrap();
    for (f, h) in files.iter().zip(hostile) {
        let n = patch_path(&mut bytes, f.as_os_str().as_bytes(), h);
        assert!(n >= 1, "{} not found in the core", f.display());
    }
    let hostile_core = scratch.path().join("hostile.core");
    fs::write(&hostile_core, &bytes).unwrap();
    let padded = |f: &Path, h: &str| {
        let len = f.as_os_str().len();
        format!("{}{h}", "/".repeat(len - h.len()))
    };
    let mut named: Vec<String> = files
        .iter()
        .zip(hostile)
        .map(|(f, h)| padded(f, h))
        .collect();
    named.push(socket.to_str().unwrap().into());
    // A socket takes the place of the file it was; the FIFO comes second,
    // as it would keep a reader that opens it from getting further.
    fs::remove_file(&socket).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let inspect_opens_none = |named: &[String]| {
        for extra in [
            &[][..],
            &["--backtrace"][..],
            &["--json"][..],
            &["-b", "-g"][..],
        ] {
            let log = scratch.path().join("strace.log");
            let mut args: Vec<&OsStr> = vec!["inspect".as_ref()];
            args.extend(extra.iter().map(OsStr::new));
            args.push(hostile_core.as_os_str());
            // run_with_timeout panics if inspect blocks (on the FIFO).
            let out = strace_coresnap(&args, &log);
            assert!(out.success(), "inspect {extra:?}: {}", out.describe());
            let log = fs::read_to_string(&log).unwrap();
            for path in named {
                let opened = opened_for_reading(&log, path);
                assert!(
                    opened.is_empty(),
                    "inspect {extra:?} opened {path}:\n{}",
                    opened.join("\n")
                );
            }
        }
    };
    inspect_opens_none(&named);
    fs::remove_file(&fifo).unwrap();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    named.push(fifo.to_str().unwrap().into());
    inspect_opens_none(&named);

    // --no-local-files: no path of the core is looked up at all.
    let log = scratch.path().join("strace-none.log");
    let out = strace_coresnap(
        &[
            "inspect".as_ref(),
            "-b".as_ref(),
            "--no-local-files".as_ref(),
            core.as_os_str(),
        ],
        &log,
    );
    assert!(out.success(), "{}", out.describe());
    let log = fs::read_to_string(&log).unwrap();
    let exe = build(Program::MapNames);
    for path in files
        .iter()
        .map(|f| f.to_str().unwrap())
        .chain([exe.to_str().unwrap()])
    {
        assert!(
            !log.contains(&format!("\"{path}\"")),
            "--no-local-files looked up {path}:\n{log}"
        );
    }
    assert!(
        out.stdout.contains("files on disk not consulted"),
        "{}",
        out.describe()
    );
}

#[test]
fn sysroot_confines_a_path_that_climbs_out() {
    require!(ptrace_access());
    let scratch = Scratch::new("hostile-sysroot");
    let outer = scratch.path().join("outer");
    let sysroot = outer.join("sysroot");
    fs::create_dir_all(&sysroot).unwrap();
    // The executable, just outside the sysroot: a core path "/../prog"
    // must not reach it.
    let exe = outer.join("prog");
    fs::copy(build(Program::MapNames), &exe).unwrap();
    let data = scratch.path().join("data");
    write_pattern(&data, 8192);
    let (t, core) = mapnames_core(&exe, &[&data], 0x33, scratch.path());
    drop(t);
    let report = |core: &Path, extra: &[&str]| -> Value {
        let mut args: Vec<&OsStr> = vec!["inspect".as_ref(), "--json".as_ref()];
        args.extend(extra.iter().map(OsStr::new));
        args.push(core.as_os_str());
        let out = coresnap(&args);
        assert!(out.success(), "{}", out.describe());
        serde_json::from_str(&out.stdout).unwrap()
    };
    // Unpatched, outside any sysroot, the executable is found and used:
    // the patched core below differs only by its path.
    let plain = report(&core, &[]);
    let module = |r: &Value, path: &str| -> Value {
        r["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("no module {path}: {}", r["modules"]))
    };
    assert_eq!(module(&plain, exe.to_str().unwrap())["status"], "used");

    let mut bytes = fs::read(&core).unwrap();
    let climbing = "/../prog";
    let n = patch_path(&mut bytes, exe.as_os_str().as_bytes(), climbing);
    assert!(n >= 1);
    let patched = scratch.path().join("climbing.core");
    fs::write(&patched, &bytes).unwrap();
    let named = format!(
        "{}{climbing}",
        "/".repeat(exe.as_os_str().len() - climbing.len())
    );
    let r = report(&patched, &["--sysroot", sysroot.to_str().unwrap()]);
    let m = module(&r, &named);
    assert_ne!(
        m["status"], "used",
        "a file outside the sysroot was used: {m}"
    );
    for m in r["modules"].as_array().unwrap() {
        assert!(
            !matches!(m["status"].as_str(), Some("used" | "unchecked")),
            "the sysroot is empty, yet {m}"
        );
    }
    // The same file inside the sysroot is found there, `..` and all.
    fs::copy(&exe, sysroot.join("prog")).unwrap();
    let r = report(&patched, &["--sysroot", sysroot.to_str().unwrap()]);
    assert_eq!(module(&r, &named)["status"], "used", "{}", r["modules"]);
}

// ---------------------------------------------------------------------------
// Escape sequences in names
// ---------------------------------------------------------------------------

/// A process name that retitles the terminal and clears the screen.
const EVIL_COMM: &[u8] = b"\x1b]0;PWN\x07\x1b[2J";
/// A file name that starts a red line of its own.
const EVIL_FILE: &[u8] = b"evil\n\x1b[31mFORGED LINE\x1b[0m";
/// How they read escaped.
const COMM_ESCAPED: &str = "\\e]0;PWN\\a\\e[2J";
const FILE_ESCAPED: &str = "evil\\n\\e[31mFORGED LINE\\e[0m";

/// Checks one text output: no control character but newlines, and the
/// forged line only as part of the escaped name.
fn assert_escaped(what: &str, text: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: control characters {bad:?} in:\n{text}"
    );
    assert_eq!(
        text.matches("FORGED LINE").count(),
        text.matches(FILE_ESCAPED).count(),
        "{what}: a forged line:\n{text}"
    );
}

#[test]
fn escape_sequences_in_names_reach_no_text_output() {
    require!(
        ptrace_access(),
        program("strace", "-V", "strace"),
        program("script", "--version", "bsdutils")
    );
    let scratch = Scratch::new("hostile-names");
    let exe = scratch.path().join(OsStr::from_bytes(EVIL_COMM));
    fs::copy(build(Program::MapNames), &exe).unwrap();
    let file = scratch.path().join(OsStr::from_bytes(EVIL_FILE));
    write_pattern(&file, 8192);
    let t = Target::spawn(&exe, &[file.as_os_str()]);
    set_coredump_filter(t.pid, 0x37);
    wait_threads_sleeping(t.pid, &[]);
    let comm = fs::read(format!("/proc/{}/comm", t.pid)).unwrap();
    assert_eq!(&comm[..comm.len() - 1], EVIL_COMM, "the target's name");

    // The dump's own messages.
    let prefix = scratch.path().join("core");
    let out = coresnap(&[
        "-o".as_ref(),
        prefix.as_os_str(),
        t.pid.to_string().as_ref(),
    ]);
    assert!(out.success(), "{}", out.describe());
    assert_escaped("dump", &format!("{}{}", out.stdout, out.stderr));
    let core = PathBuf::from(format!("{}.{}", prefix.display(), t.pid));

    // inspect's text, with and without backtraces, and its warnings.
    for extra in [&[][..], &["--backtrace"][..]] {
        let mut args: Vec<&OsStr> = vec!["inspect".as_ref()];
        args.extend(extra.iter().map(OsStr::new));
        args.push(core.as_os_str());
        let out = coresnap(&args);
        assert!(out.success(), "{}", out.describe());
        let text = format!("{}{}", out.stdout, out.stderr);
        assert_escaped(&format!("inspect {extra:?}"), &text);
        for want in [
            format!("process:    pid {} ({COMM_ESCAPED})", t.pid),
            format!("command:    {}", escaped_path(&exe)),
            format!("{} ", escaped_path(&file)),
        ] {
            assert!(text.contains(&want), "{want:?} missing:\n{text}");
        }
    }
    // --json keeps the exact names.
    let out = coresnap(&["inspect".as_ref(), "--json".as_ref(), core.as_os_str()]);
    assert!(out.success(), "{}", out.describe());
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        report["process"]["name"].as_str().map(str::as_bytes),
        Some(EVIL_COMM)
    );
    assert!(
        report["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["file"].as_str().map(str::as_bytes) == Some(file.as_os_str().as_bytes())),
        "{}",
        report["mappings"]
    );

    // extract: its message and its index.
    let raw = scratch.path().join(OsStr::from_bytes(b"raw\x1b[2J"));
    let out = coresnap(&[
        "extract".as_ref(),
        "--raw".as_ref(),
        raw.as_os_str(),
        core.as_os_str(),
    ]);
    assert!(out.success(), "{}", out.describe());
    assert_escaped("extract", &format!("{}{}", out.stdout, out.stderr));
    let index = fs::read_to_string(raw.join("index.tsv")).unwrap();
    assert_escaped("index.tsv", &index.replace('\t', " "));
    assert!(
        index.contains(&format!("\t{}\n", escaped_path(&file))),
        "{index}"
    );
    for line in index.lines().filter(|l| !l.starts_with('#')) {
        assert_eq!(line.split('\t').count(), 6, "{line:?} in\n{index}");
    }

    // Memory from the core (here the stack, which holds the names) is not
    // written to a terminal: `script` gives extract one.
    let stack = report["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["bytes_present"].as_u64().unwrap_or(0) > 0)
        .and_then(|m| parse_hex(m["start"].as_str()?))
        .expect("a mapping with bytes");
    let command = format!(
        "{} extract --addr {stack:#x} --len 4096 {}",
        coresnap_bin().display(),
        core.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"]);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT, true);
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert!(
        out.stdout.contains("standard output is a terminal"),
        "{}",
        out.describe()
    );

    // A tracer with a hostile name: coresnap's refusal names it escaped.
    let strace = which("strace");
    let mut tracer_name = EVIL_COMM.to_vec();
    tracer_name.extend_from_slice(b".x");
    let tracer_exe = scratch.path().join(OsStr::from_bytes(&tracer_name));
    fs::copy(&strace, &tracer_exe).unwrap();
    let tracer = Guard(
        Command::new(&tracer_exe)
            .args(["-o", "/dev/null", "-p", &t.pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the tracer"),
    );
    let traced = wait_until(STATE_TIMEOUT, || {
        process_status(t.pid).is_some_and(|s| s.tracer == tracer.0.id() as i32)
    });
    assert!(traced, "the tracer did not attach to {}", t.pid);
    let refused = scratch.path().join("refused");
    let out = coresnap(&[
        "-o".as_ref(),
        refused.as_os_str(),
        t.pid.to_string().as_ref(),
    ]);
    drop(tracer);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert_escaped("already traced", &out.stderr);
    assert!(
        out.stderr
            .contains(&format!("already traced by {COMM_ESCAPED}.x (pid")),
        "{}",
        out.describe()
    );
}

fn escaped_path(p: &Path) -> String {
    coresnap::escape::escape(&p.to_string_lossy()).into_owned()
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}
