//! A 1 TiB `MAP_NORESERVE` reservation with one page written per GiB
//! (`testdata/reservation.c`), dumped with the default options, manifest
//! and hashes on, as a user runs coresnap: the dump, the file on disk and
//! `verify` must cost what the 4 MiB of data cost, not what the address
//! space spans. The times are printed (`--nocapture`); the bounds are
//! generous, since the tests run a debug build on a shared machine.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TIB: u64 = 1 << 40;
const GIB: u64 = 1 << 30;
/// The release build dumps it in well under a second.
const DUMP_BOUND: Duration = Duration::from_secs(30);
const VERIFY_BOUND: Duration = Duration::from_secs(20);
const DISK_BOUND: u64 = 64 << 20;

/// Runs coresnap with `args`; returns its output and how long it took.
fn timed(args: &[&str]) -> (CmdOutput, Duration) {
    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.args(args);
    let started = Instant::now();
    let out = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
    (out, started.elapsed())
}

fn verify(core: &Path) -> (CmdOutput, Duration) {
    timed(&["verify", core.to_str().unwrap()])
}

fn manifest_of(core: &Path) -> Value {
    let path = format!("{}.json", core.display());
    serde_json::from_slice(&fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// Dumps the target with `extra` options and the defaults otherwise;
/// returns the core's path and the time taken, after checking the bound.
fn dump(t: &Target, dir: &Path, name: &str, extra: &[&str], suffix: &str) -> (PathBuf, Duration) {
    let prefix = dir.join(name);
    let pid = t.pid.to_string();
    let mut args = extra.to_vec();
    args.extend(["-o", prefix.to_str().unwrap(), &pid]);
    let (out, took) = timed(&args);
    assert!(out.success(), "coresnap {args:?}:\n{}", out.describe());
    assert_running_untraced(t.pid);
    assert!(
        took < DUMP_BOUND,
        "coresnap {args:?} took {took:?} (bound {DUMP_BOUND:?}):\n{}",
        out.describe()
    );
    (
        PathBuf::from(format!("{}.{pid}{suffix}", prefix.display())),
        took,
    )
}

#[track_caller]
fn assert_verifies(core: &Path) -> Duration {
    let (out, took) = verify(core);
    assert!(
        out.success()
            && out
                .stdout
                .lines()
                .next()
                .unwrap_or("")
                .ends_with(": verified"),
        "verify {}:\n{}",
        core.display(),
        out.describe()
    );
    assert!(
        took < VERIFY_BOUND,
        "verify {} took {took:?} (bound {VERIFY_BOUND:?})",
        core.display()
    );
    took
}

#[track_caller]
fn assert_rejected(core: &Path, expect: &str) {
    let (out, _) = verify(core);
    assert!(
        out.status.code() == Some(1) && out.stdout.contains(expect),
        "verify {} should fail mentioning {expect:?}:\n{}",
        core.display(),
        out.describe()
    );
}

#[test]
fn terabyte_reservation_costs_what_its_data_costs() {
    let t = Target::spawn(&build(Program::Reservation), &[]);
    wait_threads_sleeping(t.pid, &[]);
    let (base, len, step) = (t.addr("base"), t.num("len") as u64, t.num("step") as u64);
    let (touched, marker) = (t.num("touched") as u64, t.addr("marker"));
    assert_eq!((len, step, touched), (TIB, GIB, 1024), "{}", t.ready_line);
    let scratch = Scratch::new("reservation");
    let dir = scratch.path();

    let (core, dump_time) = dump(&t, dir, "plain", &[], "");
    let meta = fs::metadata(&core).unwrap();
    let on_disk = meta.blocks() * 512;
    assert!(meta.len() > TIB, "logical size {}", meta.len());
    assert!(
        on_disk <= DISK_BOUND,
        "{} bytes on disk for {} touched pages",
        on_disk,
        touched
    );
    let manifest = manifest_of(&core);
    assert!(
        manifest["core"]["sha256_chunked"].is_string()
            && manifest["core"]["blake3_chunked"].is_string()
            && manifest["core"].get("sha256").is_none(),
        "a 1 TiB core gets the chunked hashes, not the flat ones: {:#}",
        manifest["core"]
    );

    // gdb reads the markers of the first, a middle and the last GiB, and
    // zeros from a page that was never touched.
    assert_loads_in_gdb(t.pid, &core, &thread_ids(t.pid));
    let probes = [
        (base, marker),
        (base + 517 * GIB, marker | 517),
        (base + 1023 * GIB, marker | 1023),
        (base + 700 * GIB + 8192, 0),
    ];
    let cmds: Vec<String> = probes.iter().map(|(a, _)| format!("x/gx {a:#x}")).collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let (_, outputs) = run_gdb_split(&t.exe, &core, &cmds);
    for ((address, want), out) in probes.iter().zip(&outputs) {
        let got = out.split_whitespace().last().and_then(parse_hex);
        assert_eq!(got, Some(*want), "x/gx {address:#x} in gdb:\n{out}");
    }

    let verify_time = assert_verifies(&core);

    // Damage in the middle of the terabyte is found: a flipped byte of a
    // marker, a hole punched where it is stored, the file cut short.
    let segment = manifest["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["start"].as_str().and_then(parse_hex) == Some(base))
        .expect("the reservation is in the manifest")
        .clone();
    let page_at = segment["core_offset"].as_u64().unwrap() + 517 * GIB;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&core)
        .unwrap();
    let mut page = vec![0u8; 4096];
    file.read_exact_at(&mut page, page_at).unwrap();
    assert_eq!(
        page[..8],
        (marker | 517).to_le_bytes(),
        "marker in the file"
    );
    file.write_all_at(&[page[0] ^ 1], page_at).unwrap();
    assert_rejected(
        &core,
        "chunked (256 KiB chunks of 16 KiB leaves): SHA-256 is",
    );
    file.write_all_at(&page[..1], page_at).unwrap();
    // SAFETY: fallocate on a descriptor this test owns; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            page_at as libc::off_t,
            4096,
        )
    };
    assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
    assert_rejected(
        &core,
        "chunked (256 KiB chunks of 16 KiB leaves): BLAKE3 is",
    );
    file.write_all_at(&page, page_at).unwrap();
    assert_verifies(&core);
    file.set_len(meta.len() - 4096).unwrap();
    assert_rejected(&core, "(truncated)");
    drop(file);
    fs::remove_file(&core).unwrap();

    let (zst, z_time) = dump(&t, dir, "z", &["-z"], ".zst");
    let z_len = fs::metadata(&zst).unwrap().len();
    let z_verify_time = assert_verifies(&zst);
    println!(
        "1 TiB reservation, debug build: dump {dump_time:.2?} ({} KiB on disk), verify {verify_time:.2?}; \
         -z dump {z_time:.2?} ({} KiB), verify {z_verify_time:.2?}",
        on_disk >> 10,
        z_len >> 10
    );
}
