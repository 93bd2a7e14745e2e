//! Hostile inputs and hostile targets cannot make coresnap use unbounded
//! memory, create unbounded numbers of files, leave partial output behind,
//! or wait forever (issue #15, items 5, 6 and 9; the limits are in
//! docs/SECURITY.md, "Limits").
//!
//! Memory is checked the way an attacker would meet it: the command runs
//! under `prlimit --as`, so an allocation of what a file claims fails (and
//! the process aborts) instead of merely being large.

mod common;

use common::*;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The address space coresnap gets under test: the documented bounds
/// (docs/SECURITY.md) plus the binary, its thread stacks and allocator
/// arenas, far below what the bombs claim.
const ADDRESS_SPACE: &str = "--as=1073741824";

fn coresnap_limited(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new("prlimit");
    cmd.arg(ADDRESS_SPACE)
        .arg("--")
        .arg(Dumper::Coresnap.program())
        .args(args);
    run_with_timeout(&mut cmd, DUMP_TIMEOUT, false)
}

fn coresnap(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.args(args);
    run_with_timeout(&mut cmd, DUMP_TIMEOUT, false)
}

/// One byte that is not zero per MiB, so that no page run is a frame of
/// zeros and every byte must be decompressed.
fn bomb_byte(offset: u64) -> u8 {
    if offset % (1 << 20) == 4096 {
        (offset >> 20) as u8 | 1
    } else {
        0
    }
}

/// A zstd seekable file of `frames` frames of `frame_len` bytes each
/// ([`bomb_byte`]): a few hundred KiB that claim gigabytes.
fn write_bomb(path: &Path, frames: u32, frame_len: u64) {
    let mut table = zeekstd::SeekTable::new();
    let mut out = fs::File::create(path).unwrap();
    let chunk_len = 1u64 << 20;
    assert_eq!(frame_len % chunk_len, 0);
    for frame in 0..frames {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        let mut chunk = vec![0u8; chunk_len as usize];
        assert!(chunk.len() > 4096);
        let mut at = 0;
        // Chunks start at MiB boundaries: the one byte that is not zero
        // is at 4096 in each.
        while at < frame_len {
            let n = chunk_len.min(frame_len - at);
            let base = u64::from(frame) * frame_len + at;
            chunk[4096] = bomb_byte(base + 4096);
            encoder.write_all(&chunk[..n as usize]).unwrap();
            at += n;
        }
        let compressed = encoder.finish().unwrap();
        out.write_all(&compressed).unwrap();
        table
            .log_frame(compressed.len() as u32, frame_len as u32)
            .unwrap();
    }
    let mut serializer = table.into_serializer();
    let mut bytes = vec![0u8; serializer.encoded_len()];
    let n = serializer.write_into(&mut bytes);
    out.write_all(&bytes[..n]).unwrap();
}

fn assert_no_abort(out: &CmdOutput, what: &str) {
    assert!(
        out.status.code().is_some(),
        "{what} was killed by a signal (out of address space?):\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("memory allocation") && !out.stderr.contains("panicked"),
        "{what} ran out of memory:\n{}",
        out.describe()
    );
}

#[test]
fn decompression_bomb_stays_within_the_memory_limit() {
    let scratch = Scratch::new("bomb");
    let bomb = scratch.path().join("bomb.zst");
    // Two frames of 1 GiB: each claims more than the whole address space
    // coresnap is given.
    let frame_len = 1u64 << 30;
    write_bomb(&bomb, 2, frame_len);
    let size = fs::metadata(&bomb).unwrap().len();
    assert!(size < 1 << 20, "the bomb is small: {size} bytes");

    // unpack streams the frames and restores every byte.
    let restored = scratch.path().join("bomb.core");
    let out = coresnap_limited(&[
        "unpack",
        "--jobs",
        "2",
        "-o",
        restored.to_str().unwrap(),
        bomb.to_str().unwrap(),
    ]);
    assert_no_abort(&out, "unpack");
    assert!(out.success(), "unpack failed:\n{}", out.describe());
    let file = fs::File::open(&restored).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 2 * frame_len);
    use std::os::unix::fs::FileExt;
    for offset in [
        4096u64,
        (1 << 20) + 4096,
        frame_len + 4096,
        2 * frame_len - (1 << 20) + 4096,
    ] {
        let mut byte = [0u8; 2];
        file.read_exact_at(&mut byte, offset).unwrap();
        assert_eq!(byte, [bomb_byte(offset), 0], "byte at {offset:#x}");
    }
    drop(file);
    fs::remove_file(&restored).unwrap();

    // verify decodes every frame too (no manifest: it still checks them).
    let out = coresnap_limited(&["verify", bomb.to_str().unwrap()]);
    assert_no_abort(&out, "verify");
    assert!(
        out.stdout
            .contains("every zstd frame decompresses and its content checksum matches"),
        "{}",
        out.describe()
    );

    // inspect and extract read by offset from a cache of frames: they
    // refuse frames this large, saying so.
    for args in [
        vec!["inspect", bomb.to_str().unwrap()],
        vec![
            "extract",
            "--raw",
            scratch.path().join("regions").to_str().unwrap(),
            bomb.to_str().unwrap(),
        ],
    ] {
        let out = coresnap_limited(&args);
        assert_no_abort(&out, args[0]);
        assert!(!out.success(), "{} accepted the bomb", args[0]);
        assert!(
            out.stderr.contains("16 MiB") && out.stderr.contains("zstd -d"),
            "{}: {}",
            args[0],
            out.describe()
        );
    }
    assert!(!scratch.path().join("regions").exists());
}

#[test]
fn manifest_bomb_is_not_read() {
    let scratch = Scratch::new("manifest-bomb");
    let core = scratch.path().join("c.core");
    fs::copy(
        testdata_dir().join("cores/coresnap-threads-static.core"),
        &core,
    )
    .unwrap();
    // 40 MiB of tiny JSON values: parsed into memory, many times the size.
    let manifest = scratch.path().join("c.core.json");
    let mut text = String::from(r#"{"schema":"coresnap-manifest","version":1,"pad":["#);
    while text.len() < 40 << 20 {
        text.push_str("0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,");
    }
    text.push_str("0]}");
    fs::write(&manifest, text).unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--as=536870912", "--"])
        .arg(Dumper::Coresnap.program())
        .args(["verify", core.to_str().unwrap()]);
    let out = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
    assert_no_abort(&out, "verify");
    assert!(!out.success());
    assert!(
        out.stdout.contains("larger than the 32 MiB coresnap reads"),
        "{}",
        out.describe()
    );
}

/// An ELF core with `count` PT_LOAD segments of one byte each.
fn core_with_segments(path: &Path, count: usize) {
    let phoff = 64u64;
    let data_at = phoff + 56 * count as u64;
    let mut bytes = Vec::with_capacity(data_at as usize + count);
    bytes.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    bytes.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    bytes.extend_from_slice(&62u16.to_le_bytes()); // x86-64
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes()); // entry
    bytes.extend_from_slice(&phoff.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes()); // shoff
    bytes.extend_from_slice(&0u32.to_le_bytes()); // flags
    bytes.extend_from_slice(&64u16.to_le_bytes());
    bytes.extend_from_slice(&56u16.to_le_bytes());
    let (phnum, shnum) = if count >= 0xffff {
        (0xffffu16, 1u16)
    } else {
        (count as u16, 0)
    };
    bytes.extend_from_slice(&phnum.to_le_bytes());
    bytes.extend_from_slice(&64u16.to_le_bytes());
    bytes.extend_from_slice(&shnum.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    for i in 0..count as u64 {
        bytes.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        bytes.extend_from_slice(&4u32.to_le_bytes()); // PF_R
        bytes.extend_from_slice(&(data_at + i).to_le_bytes());
        bytes.extend_from_slice(&(0x1000_0000 + i * 0x1000).to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&0x1000u64.to_le_bytes());
    }
    bytes.resize(data_at as usize + count, 0x42);
    if shnum == 1 {
        // PN_XNUM: section header 0 holds the real count in sh_info.
        let shoff = bytes.len() as u64;
        bytes[40..48].copy_from_slice(&shoff.to_le_bytes());
        let mut section = [0u8; 64];
        section[44..48].copy_from_slice(&(count as u32).to_le_bytes());
        bytes.extend_from_slice(&section);
    }
    fs::write(path, bytes).unwrap();
}

#[test]
fn extract_refuses_a_core_of_countless_segments() {
    let scratch = Scratch::new("segments");
    let core = scratch.path().join("many.core");
    core_with_segments(&core, 200_000);
    let regions = scratch.path().join("regions");
    let out = coresnap(&[
        "extract",
        "--raw",
        regions.to_str().unwrap(),
        core.to_str().unwrap(),
    ]);
    assert!(!out.success(), "extract --raw accepted 200,000 segments");
    assert!(
        out.stderr.contains("200000 segments with data")
            && out.stderr.contains("100000")
            && out.stderr.contains("--addr"),
        "{}",
        out.describe()
    );
    assert!(!regions.exists(), "nothing is created");
}

/// Files in `dir` other than `keep`.
fn leftovers(dir: &Path, keep: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != keep)
        .collect()
}

/// Whether process `pid` has a file under `dir` open (an unnamed
/// `O_TMPFILE` shows as `DIR/#NUMBER (deleted)`).
fn writes_into(pid: i32, dir: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .any(|target| target.starts_with(dir) && !target.ends_with("big.zst"))
}

#[test]
fn an_interrupted_unpack_leaves_nothing() {
    let scratch = Scratch::new("interrupted");
    let bomb = scratch.path().join("big.zst");
    write_bomb(&bomb, 4, 1 << 30);
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let mut child = Command::new(Dumper::Coresnap.program())
            .args(["unpack", "--jobs", "1", bomb.to_str().unwrap()])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Signal it once it writes its output: its handlers are in place
        // by then, and the output file exists, unnamed.
        let writing = Instant::now();
        while !writes_into(pid, scratch.path()) {
            assert!(
                writing.elapsed() < Duration::from_secs(20),
                "coresnap unpack never opened its output in {}",
                scratch.path().display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // While it runs, nothing is visible under any name.
        assert_eq!(leftovers(scratch.path(), &bomb), Vec::<PathBuf>::new());
        // SAFETY: signalling the child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let status = wait_exit(&mut child, Duration::from_secs(10), "coresnap unpack");
        use std::os::unix::process::ExitStatusExt;
        if signal == libc::SIGTERM {
            assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
        } else {
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        }
        assert_eq!(
            leftovers(scratch.path(), &bomb),
            Vec::<PathBuf>::new(),
            "after signal {signal}"
        );
    }
}

/// Dumps `pid` into `dir` with `extra` options, failing unless coresnap
/// finishes within `limit`; returns the core and its manifest.
fn dump_within(
    pid: i32,
    dir: &Path,
    extra: &[&str],
    limit: Duration,
) -> (PathBuf, serde_json::Value) {
    let prefix = dir.join("core");
    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.args(extra).arg("-o").arg(&prefix).arg(pid.to_string());
    let started = Instant::now();
    let out = run_with_timeout(&mut cmd, limit, false);
    assert!(
        out.success(),
        "the dump did not finish within {limit:?}:\n{}",
        out.describe()
    );
    eprintln!("dump took {:.1} s", started.elapsed().as_secs_f64());
    let core = PathBuf::from(format!("{}.{pid}", prefix.display()));
    let manifest = fs::read(format!("{}.json", core.display())).unwrap();
    (core, serde_json::from_slice(&manifest).unwrap())
}

fn mapping_at(manifest: &serde_json::Value, start: u64) -> &serde_json::Value {
    manifest["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["start"].as_str().and_then(parse_hex) == Some(start))
        .unwrap_or_else(|| panic!("no mapping at {start:#x} in the manifest"))
}

#[test]
fn userfaultfd_ranges_are_skipped_and_recorded() {
    let scratch = Scratch::new("uffd");
    let mut target = Target::spawn(&build(Program::Uffd), &[]);
    let threads = thread_ids(target.pid);
    // The shared range is dumped by the default filter; reading it would
    // wait for the target's fault handler forever.
    let (core, manifest) = dump_within(target.pid, scratch.path(), &[], Duration::from_secs(60));
    for key in ["private", "shared"] {
        let mapping = mapping_at(&manifest, target.addr(key));
        assert_eq!(mapping["decision"], "skipped", "{key}: {mapping}");
        assert_eq!(mapping["reason"], "userfaultfd", "{key}: {mapping}");
    }
    assert_running_untraced(target.pid);
    target.assert_alive();
    assert_loads_in_gdb(target.pid, &core, &threads);
    let exe = PathBuf::from(format!("/proc/{}/exe", target.pid));
    let marker = format!("x/s {:#x}", target.addr("marker"));
    let out = run_gdb(&exe, &core, &[&marker]);
    assert!(out.contains("\"coresnap-uffd-marker\""), "{out}");
}

#[test]
fn a_read_that_never_completes_is_recorded_and_the_dump_finishes() {
    let scratch = Scratch::new("fuse");
    let mut target = Target::spawn(&build(Program::FuseSelf), &[]);
    let threads = thread_ids(target.pid);
    // The mapping is a shared file mapping: dumped with bit 3 of the
    // filter. Its pages are not cached, and the FUSE server that would
    // supply them is the frozen target.
    let (core, manifest) = dump_within(
        target.pid,
        scratch.path(),
        &["--filter", "0x3b"],
        Duration::from_secs(60),
    );
    let start = target.addr("mapping");
    let len = target.num("len") as u64;
    let mapping = mapping_at(&manifest, start);
    assert_eq!(mapping["decision"], "whole", "{mapping}");
    let unreadable = manifest["unreadable"]
        .as_array()
        .expect("unreadable ranges");
    let timed_out: u64 = unreadable
        .iter()
        .filter(|u| u["errno"] == libc::ETIME)
        .filter(|u| {
            u["start"]
                .as_str()
                .and_then(parse_hex)
                .is_some_and(|s| s >= start && s < start + len)
        })
        .map(|u| u["len"].as_u64().unwrap())
        .sum();
    assert_eq!(
        timed_out, len,
        "the whole mapping is recorded as timed out: {unreadable:?}"
    );
    assert_running_untraced(target.pid);
    target.assert_alive();
    assert_loads_in_gdb(target.pid, &core, &threads);
}
