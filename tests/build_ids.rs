//! A program with no build id at all (linked with `--build-id=none`):
//! `coresnap inspect` cannot check that the file on disk is the one that
//! was mapped, so it uses it with a warning that says so, and
//! `--require-build-id` refuses it instead (issue #14).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn inspect_json(core: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.args(["inspect", "--backtrace", "--json"])
        .args(extra)
        .arg(core);
    let res = run_with_timeout(&mut cmd, DEBUGGER_TIMEOUT, false);
    assert!(res.success(), "coresnap inspect:\n{}", res.describe());
    let report = serde_json::from_str(&res.stdout).expect("inspect --json prints JSON");
    (report, res.stdout)
}

/// The function names of the main thread's backtrace.
fn main_thread_functions(report: &serde_json::Value, pid: i32) -> Vec<String> {
    report["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .find(|t| t["tid"].as_i64() == Some(i64::from(pid)))
        .and_then(|t| t["backtrace"]["frames"].as_array())
        .expect("the main thread's backtrace")
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("??").to_string())
        .collect()
}

#[test]
fn a_file_without_build_id_is_used_unchecked_or_refused() {
    require!(ptrace_access(), program("cc", "--version", "gcc"));
    let scratch = Scratch::new("no-build-id");
    let exe = scratch.path().join("threads-no-build-id");
    let mut cc = Command::new("cc");
    cc.args([
        "-g",
        "-O0",
        "-fno-omit-frame-pointer",
        "-pthread",
        "-fPIE",
        "-pie",
    ])
    .arg("-Wl,--build-id=none")
    .arg("-o")
    .arg(&exe)
    .arg(testdata_dir().join("threads.c"));
    let res = run_with_timeout(&mut cc, COMPILE_TIMEOUT, false);
    assert!(res.success(), "cc:\n{}", res.describe());
    let notes = object_notes(&exe);
    assert!(
        !notes.iter().any(|(name, kind)| name == "GNU" && *kind == 3),
        "the test program has a GNU build-id: {notes:?}"
    );

    let target = Target::spawn(&exe, &[]);
    wait_threads_sleeping(target.pid, &[]);
    let core = dump(Dumper::Coresnap, target.pid, scratch.path(), &[]);
    assert_running_untraced(target.pid);
    let module = |report: &serde_json::Value| {
        report["modules"]
            .as_array()
            .expect("modules")
            .iter()
            .find(|m| m["path"].as_str() == exe.to_str())
            .cloned()
            .unwrap_or_else(|| panic!("no module for {}: {report}", exe.display()))
    };

    let (used, text) = inspect_json(&core, &[]);
    let m = module(&used);
    assert_eq!(m["status"], "unchecked", "{m}");
    assert!(m["build_id"].is_null(), "{m}");
    let warned = used["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w.as_str())
        .any(|w| w.contains(exe.to_str().unwrap()) && w.contains("could not be checked"));
    assert!(
        warned,
        "no warning that the file could not be checked:\n{text}"
    );
    let functions = main_thread_functions(&used, target.pid);
    assert!(
        has_chain(&functions, &["main_wait", "main"]),
        "the unchecked file names the main thread's frames: {functions:?}"
    );

    let (refused, text) = inspect_json(&core, &["--require-build-id"]);
    let m = module(&refused);
    assert_eq!(m["status"], "no-build-id-in-core", "{m}");
    let functions = main_thread_functions(&refused, target.pid);
    assert!(
        !functions.iter().any(|f| f == "main_wait" || f == "main"),
        "a refused file names nothing: {functions:?}\n{text}"
    );
}

/// (name, type) of every note in the file's PT_NOTE segments.
fn object_notes(exe: &Path) -> Vec<(String, u32)> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let data = std::fs::read(exe).expect("read the program");
    let elf = ElfFile64::<object::Endianness>::parse(&*data).expect("an ELF file");
    let endian = elf.endian();
    let mut out = Vec::new();
    for header in elf.elf_program_headers() {
        if let Ok(Some(mut notes)) = header.notes(endian, &*data) {
            while let Ok(Some(note)) = notes.next() {
                let name = String::from_utf8_lossy(note.name()).into_owned();
                out.push((name, note.n_type(endian).0));
            }
        }
    }
    out
}
