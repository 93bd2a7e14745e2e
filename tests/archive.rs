//! Compressed, hashed evidence: `-z` (zstd seekable), `unpack`, the manifest
//! next to the core, the CORESNAP note inside it, and `verify`.
//!
//! Set CORESNAP_TEST_KEEP=1 to keep the scratch directories.

mod common;

use common::*;
use object::Endianness;
use object::read::elf::{ElfFile64, ProgramHeader as _};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn coresnap() -> Command {
    Command::new(Dumper::Coresnap.program())
}

/// Runs coresnap with `args`, expecting success; returns stdout.
fn run_ok(args: &[&str]) -> String {
    let mut cmd = coresnap();
    cmd.args(args);
    let out = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
    assert!(
        out.success(),
        "coresnap {args:?} failed:\n{}",
        out.describe()
    );
    out.stdout
}

/// Runs coresnap with `args`; returns the whole output.
fn run(args: &[&str]) -> CmdOutput {
    let mut cmd = coresnap();
    cmd.args(args);
    run_with_timeout(&mut cmd, DUMP_TIMEOUT, false)
}

/// `coresnap [extra] -o DIR/NAME PID`; returns the path of the core, which
/// ends in `.zst` when `extra` asks for compression.
fn dump_as(pid: i32, dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let prefix = dir.join(name);
    let mut args: Vec<&str> = extra.to_vec();
    let prefix_str = prefix.to_str().unwrap().to_string();
    let pid_str = pid.to_string();
    args.extend(["-o", &prefix_str, &pid_str]);
    run_ok(&args);
    let compressed = extra
        .iter()
        .any(|a| a.starts_with("-z") || a.starts_with("--compress"));
    let core = PathBuf::from(format!(
        "{prefix_str}.{pid}{}",
        if compressed { ".zst" } else { "" }
    ));
    assert!(
        core.exists(),
        "{} missing after coresnap {args:?}",
        core.display()
    );
    assert_running_untraced(pid);
    if !compressed {
        assert_loads_in_gdb(pid, &core, &thread_ids(pid));
    }
    core
}

fn manifest_of(core: &Path) -> Value {
    let path = PathBuf::from(format!("{}.json", core.display()));
    let text = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap()
}

/// `sha256sum FILE`'s digest.
fn sha256sum(file: &Path) -> String {
    let out = run_with_timeout(Command::new("sha256sum").arg(file), DUMP_TIMEOUT, false);
    assert!(out.success(), "sha256sum failed:\n{}", out.describe());
    out.stdout
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_string()
}

/// The chunked SHA-256 root of a plain core as `docs/chunked_sha256.py`
/// (Python's standard library, independent of coresnap's code) computes it.
fn chunked_sha256_by_script(core: &Path, (chunk_size, leaf_size): (u64, u64)) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/chunked_sha256.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(core)
        .arg(chunk_size.to_string())
        .arg(leaf_size.to_string());
    let out = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
    assert!(
        out.success(),
        "{} failed:\n{}",
        script.display(),
        out.describe()
    );
    out.stdout
        .split_whitespace()
        .next()
        .expect("the script prints a digest")
        .to_string()
}

/// The manifest's chunk and leaf sizes, after checking they are coresnap's.
fn chunk_size_of(manifest: &Value) -> (u64, u64) {
    let size = |field: &str| {
        manifest["core"][field]
            .as_u64()
            .unwrap_or_else(|| panic!("core.{field} in {manifest:#}"))
    };
    let sizes = (size("chunk_size"), size("leaf_size"));
    assert_eq!(
        sizes,
        (256 << 10, 16 << 10),
        "docs/MANIFEST.md names 256 KiB chunks of 16 KiB leaves"
    );
    sizes
}

fn zstd_d(input: &Path, output: &Path, extra: &[&str]) {
    let mut cmd = Command::new("zstd");
    cmd.args(["-d", "-q", "-f"])
        .args(extra)
        .arg(input)
        .arg("-o")
        .arg(output);
    let out = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
    assert!(out.success(), "zstd -d failed:\n{}", out.describe());
}

fn blocks(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks()
}

fn verify(file: &Path) -> CmdOutput {
    run(&["verify", file.to_str().unwrap()])
}

#[track_caller]
fn assert_verified(file: &Path) {
    let out = verify(file);
    assert!(
        out.success()
            && out
                .stdout
                .lines()
                .next()
                .is_some_and(|l| l.ends_with(": verified")),
        "verify {} should pass:\n{}",
        file.display(),
        out.describe()
    );
}

#[track_caller]
fn assert_not_verified(file: &Path, expect: &str) -> String {
    let out = verify(file);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify {} should fail with 1:\n{}",
        file.display(),
        out.describe()
    );
    assert!(out.stdout.contains("NOT verified"), "{}", out.describe());
    assert!(
        out.stdout.contains(expect),
        "verify output should mention {expect:?}:\n{}",
        out.describe()
    );
    out.stdout
}

/// The CORESNAP note of a core, read with `object` (independently of
/// coresnap's own parser).
fn coresnap_note(core: &Path) -> Value {
    let data = fs::read(core).unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*data).expect("core parses as ELF");
    let endian = elf.endian();
    for segment in elf.elf_program_headers() {
        let Ok(Some(mut notes)) = segment.notes(endian, &*data) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"CORESNAP" {
                assert_eq!(
                    note.n_type(endian),
                    object::elf::NoteType(0x4a53_4f4e),
                    "CORESNAP note type"
                );
                return serde_json::from_slice(note.desc()).expect("CORESNAP note is JSON");
            }
        }
    }
    panic!("no CORESNAP note in {}", core.display());
}

/// Every field of `part` has the same value in `whole`.
fn assert_contained(part: &Value, whole: &Value, path: &str) {
    match (part, whole) {
        (Value::Object(p), Value::Object(w)) => {
            for (k, v) in p {
                let w = w
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} is in the note, not in the manifest"));
                assert_contained(v, w, &format!("{path}.{k}"));
            }
        }
        (Value::Array(p), Value::Array(w)) => {
            assert_eq!(p.len(), w.len(), "{path}: lengths");
            for (i, (a, b)) in p.iter().zip(w).enumerate() {
                assert_contained(a, b, &format!("{path}[{i}]"));
            }
        }
        (a, b) => assert_eq!(a, b, "{path}"),
    }
}

// ---------------------------------------------------------------------------

/// `-z`, then `zstd -d` and `unpack`: identical bytes, and gdb sees the same
/// threads, backtraces and registers as in an uncompressed dump of the same
/// idle target.
#[test]
fn compressed_core_restores_and_loads_like_a_plain_one() {
    let t = start_threads_target(Program::Threads);
    let scratch = Scratch::new("archive-threads");
    let dir = scratch.path();
    let plain = dump_as(t.pid, dir, "plain", &[]);
    wait_threads_sleeping(t.pid, &[]);
    let zst = dump_as(t.pid, dir, "z", &["-z"]);
    assert_eq!(
        fs::read(&zst).unwrap()[..4],
        [0x28, 0xb5, 0x2f, 0xfd],
        "zstd magic"
    );

    let by_zstd = dir.join("by-zstd");
    zstd_d(&zst, &by_zstd, &[]);
    let unpacked = dir.join("unpacked");
    run_ok(&[
        "unpack",
        zst.to_str().unwrap(),
        "-o",
        unpacked.to_str().unwrap(),
    ]);
    assert!(
        fs::read(&by_zstd).unwrap() == fs::read(&unpacked).unwrap(),
        "zstd -d and unpack differ"
    );
    common::elf_readers::assert_readers_agree(&unpacked);

    // The manifest's core hashes are those of the restored bytes: the
    // chunked root as the documented script computes it, and the flat
    // SHA-256 only for a small core (up to 16 MiB).
    let manifest = manifest_of(&zst);
    assert_eq!(
        manifest["core"]["sha256_chunked"].as_str(),
        Some(chunked_sha256_by_script(&unpacked, chunk_size_of(&manifest)).as_str()),
        "{manifest:#}"
    );
    let length = manifest["core"]["length"].as_u64().unwrap();
    if length <= 16 << 20 {
        assert_eq!(
            manifest["core"]["sha256"].as_str(),
            Some(sha256sum(&unpacked).as_str())
        );
    } else {
        assert!(
            manifest["core"].get("sha256").is_none(),
            "a {length}-byte core has no flat hash unless asked: {manifest:#}"
        );
    }
    assert_eq!(
        manifest["file"]["sha256"].as_str(),
        Some(sha256sum(&zst).as_str()),
        "the .zst's own flat SHA-256"
    );
    assert_eq!(manifest["file"]["format"], "zstd-seekable");
    assert_eq!(
        manifest["file"]["length"],
        fs::metadata(&zst).unwrap().len()
    );

    let cmds = [
        "info threads",
        "thread apply all bt",
        "thread apply all info registers",
        "info sharedlibrary",
    ];
    let (plain_pre, plain_out) = run_gdb_split(&t.exe, &plain, &cmds);
    let (z_pre, z_out) = run_gdb_split(&t.exe, &unpacked, &cmds);
    assert_same_text(
        "gdb preamble",
        "plain",
        plain_pre.trim(),
        "unpacked",
        z_pre.trim(),
    );
    for (i, cmd) in cmds.iter().enumerate() {
        assert_same_text(cmd, "plain", &plain_out[i], "unpacked", &z_out[i]);
    }
    assert!(
        parse_info_threads(&z_out[0]).len() == THREAD_CHAINS.len(),
        "{}",
        z_out[0]
    );

    assert_verified(&zst);
    assert_verified(&plain);
    // The unpacked core checks against the .zst's manifest (found as
    // <core>.zst.json when <core>.json does not exist).
    let moved = dir.join("z.check");
    fs::rename(&unpacked, &moved).unwrap();
    fs::copy(
        format!("{}.json", zst.display()),
        dir.join("z.check.zst.json"),
    )
    .unwrap();
    assert_verified(&moved);
}

/// The memory target: every region reads the same in gdb from the unpacked
/// core as from a plain core; the manifest and the note describe the
/// MADV_DONTDUMP region and the deleted file mapping.
#[test]
fn memory_matches_and_manifest_explains_every_mapping() {
    let scratch = Scratch::new("archive-memory");
    let files = scratch.path().join("files");
    fs::create_dir_all(&files).unwrap();
    let t = Target::spawn(&build(Program::Memory), &[files.as_os_str()]);
    set_coredump_filter(t.pid, 0x33);
    wait_threads_sleeping(t.pid, &[]);
    let dir = scratch.path();
    let plain = dump_as(t.pid, dir, "plain", &[]);
    wait_threads_sleeping(t.pid, &[]);
    let zst = dump_as(t.pid, dir, "z", &["--compress=3", "--jobs", "2"]);
    let unpacked = dir.join("unpacked");
    run_ok(&[
        "unpack",
        zst.to_str().unwrap(),
        "-o",
        unpacked.to_str().unwrap(),
    ]);
    common::elf_readers::assert_readers_agree(&unpacked);

    let keys = [
        "heap", "stack", "global", "shanon", "memfd", "delfile", "dontdump",
    ];
    let cmds: Vec<String> = keys
        .iter()
        .map(|k| format!("x/4gx {:#x}", t.addr(k)))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let (_, a) = run_gdb_split(&t.exe, &plain, &cmds);
    let (_, b) = run_gdb_split(&t.exe, &unpacked, &cmds);
    for (i, key) in keys.iter().enumerate() {
        assert_same_text(key, "plain", &a[i], "unpacked", &b[i]);
    }
    assert!(parse_x_words(&b[0]).is_ok(), "heap readable: {}", b[0]);

    for core in [&plain, &zst] {
        let manifest = manifest_of(core);
        let mappings = manifest["mappings"].as_array().unwrap();
        let hex = |v: &Value| parse_hex(v.as_str().unwrap()).unwrap();
        let at = |key: &str| {
            let addr = t.addr(key);
            mappings
                .iter()
                .find(|m| hex(&m["start"]) <= addr && addr < hex(&m["end"]))
                .unwrap_or_else(|| {
                    panic!("no mapping holds {addr:#x} ({key}) in {}", core.display())
                })
        };
        let dontdump = at("dontdump");
        assert_eq!(dontdump["decision"], "skipped", "{dontdump}");
        assert_eq!(dontdump["reason"], "dont_dump", "{dontdump}");
        assert_eq!(dontdump["in_core"], false, "{dontdump}");
        let deleted = at("delfile");
        let expected_name = format!("{}/deleted-mapping.bin (deleted)", files.display());
        assert_eq!(deleted["name"], expected_name.as_str(), "{deleted}");
        assert_eq!(deleted["decision"], "whole", "{deleted}");
        let heap = at("heap");
        assert!(heap["written_bytes"].as_u64().unwrap() > 0, "{heap}");
        assert_eq!(
            heap["written_bytes"].as_u64().unwrap() + heap["hole_bytes"].as_u64().unwrap(),
            heap["dumped_bytes"].as_u64().unwrap()
        );
        assert_eq!(manifest["target"]["pid"], t.pid);
        assert!(
            manifest["target"]["exe"]
                .as_str()
                .unwrap()
                .ends_with("/memory"),
            "{}",
            manifest["target"]
        );
        assert_eq!(
            manifest["target"]["exe_build_id"].as_str().map(str::len),
            Some(40),
            "{}",
            manifest["target"]
        );
        assert_eq!(manifest["capture"]["filter"], "0x33");
        assert!(manifest["unreadable"].as_array().unwrap().is_empty());
        let libc = mappings
            .iter()
            .find(|m| m["name"].as_str().is_some_and(|n| n.contains("libc.so")))
            .unwrap();
        assert!(libc["build_id"].is_string(), "{libc}");
    }

    // The note (read with `object`) holds the pre-copy facts, all equal to
    // the manifest's.
    let note = coresnap_note(&plain);
    let manifest = manifest_of(&plain);
    assert_eq!(note["schema"], "coresnap-manifest");
    assert_eq!(note["version"], 3);
    assert!(note.get("core").is_none() && note["capture"].get("pause_us").is_none());
    assert_contained(&note, &manifest, "$");
    assert_eq!(
        note["target"]["start_time_ticks"],
        manifest["target"]["start_time_ticks"]
    );
    assert_eq!(
        note["host"]["boot_id"].as_str().unwrap(),
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
    );
}

/// `unpack` writes holes where `zstd -d` (to a pipe, or with --no-sparse)
/// writes zeros, and never more blocks than `zstd -d`'s own sparse mode.
#[test]
fn unpack_is_sparse() {
    let t = start_threads_target(Program::Threads);
    let scratch = Scratch::new("archive-sparse");
    let dir = scratch.path();
    let zst = dump_as(t.pid, dir, "z", &["-z"]);
    let unpacked = dir.join("unpacked");
    run_ok(&[
        "unpack",
        zst.to_str().unwrap(),
        "-o",
        unpacked.to_str().unwrap(),
    ]);
    let dense = dir.join("dense");
    zstd_d(&zst, &dense, &["--no-sparse"]);
    let zstd_sparse = dir.join("zstd-sparse");
    zstd_d(&zst, &zstd_sparse, &[]);
    assert_loads_in_gdb(t.pid, &unpacked, &thread_ids(t.pid));
    let len = fs::metadata(&unpacked).unwrap().len();
    assert_eq!(len, fs::metadata(&dense).unwrap().len());
    assert!(
        blocks(&unpacked) * 2 < blocks(&dense),
        "unpack: {} blocks, zstd -d --no-sparse: {} blocks, for {len} bytes",
        blocks(&unpacked),
        blocks(&dense)
    );
    assert!(
        blocks(&unpacked) <= blocks(&zstd_sparse),
        "unpack {} vs zstd -d {}",
        blocks(&unpacked),
        blocks(&zstd_sparse)
    );
    // And an existing file is never replaced without --force.
    let again = run(&[
        "unpack",
        zst.to_str().unwrap(),
        "-o",
        unpacked.to_str().unwrap(),
    ]);
    assert!(
        !again.success() && again.stderr.contains("already exists"),
        "{}",
        again.describe()
    );
    run_ok(&[
        "unpack",
        "--force",
        zst.to_str().unwrap(),
        "-o",
        unpacked.to_str().unwrap(),
    ]);
}

/// `verify` passes on fresh dumps and fails, saying why, on one flipped
/// byte in a segment, a truncated file, a changed or missing manifest.
#[test]
fn verify_catches_damage() {
    let t = start_threads_target(Program::Threads);
    let scratch = Scratch::new("archive-verify");
    let dir = scratch.path();
    let plain = dump_as(t.pid, dir, "plain", &[]);
    wait_threads_sleeping(t.pid, &[]);
    let zst = dump_as(t.pid, dir, "z", &["-z"]);
    assert_verified(&plain);
    assert_verified(&zst);

    // One flipped byte in the middle of a PT_LOAD that holds data.
    let manifest = manifest_of(&plain);
    let segment = manifest["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["written_bytes"].as_u64().unwrap_or(0) > 8192)
        .max_by_key(|m| m["written_bytes"].as_u64())
        .unwrap()
        .clone();
    let flipped = dir.join("flipped.1");
    fs::copy(&plain, &flipped).unwrap();
    fs::copy(
        format!("{}.json", plain.display()),
        dir.join("flipped.1.json"),
    )
    .unwrap();
    let mut bytes = fs::read(&flipped).unwrap();
    let offset =
        segment["core_offset"].as_u64().unwrap() + segment["dumped_bytes"].as_u64().unwrap() / 2;
    let offset = (offset..).find(|&o| bytes[o as usize] != 0).unwrap() as usize;
    bytes[offset] ^= 0x01;
    fs::write(&flipped, &bytes).unwrap();
    let report = assert_not_verified(
        &flipped,
        "chunked (256 KiB chunks of 16 KiB leaves): SHA-256 is",
    );
    assert!(report.contains("BLAKE3 is"), "{report}");

    // A hole punched into a page of data: the bytes read as zeros now, and
    // the chunk they were in no longer hashes as stored data did.
    let punched = dir.join("punched.1");
    fs::copy(&plain, &punched).unwrap();
    fs::copy(
        format!("{}.json", plain.display()),
        dir.join("punched.1.json"),
    )
    .unwrap();
    assert_verified(&punched);
    let page = offset as u64 & !4095;
    let file = fs::OpenOptions::new().write(true).open(&punched).unwrap();
    // SAFETY: fallocate on a descriptor this test owns; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            page as libc::off_t,
            4096,
        )
    };
    assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
    drop(file);
    assert!(
        fs::read(&punched).unwrap()[page as usize..page as usize + 4096]
            .iter()
            .all(|&b| b == 0),
        "the punched page reads as zeros"
    );
    let report = assert_not_verified(
        &punched,
        "chunked (256 KiB chunks of 16 KiB leaves): SHA-256 is",
    );
    assert!(report.contains("file length: "), "{report}");

    // Truncated: the plain core and the .zst.
    let short = dir.join("short.1");
    fs::write(&short, &bytes[..bytes.len() - 4096]).unwrap();
    fs::copy(
        format!("{}.json", plain.display()),
        dir.join("short.1.json"),
    )
    .unwrap();
    let report = assert_not_verified(&short, "(truncated)");
    assert!(
        report.contains("chunked (256 KiB chunks of 16 KiB leaves): SHA-256 is"),
        "{report}"
    );
    let zbytes = fs::read(&zst).unwrap();
    let short_z = dir.join("short.1.zst");
    fs::write(&short_z, &zbytes[..zbytes.len() / 2]).unwrap();
    fs::copy(
        format!("{}.json", zst.display()),
        dir.join("short.1.zst.json"),
    )
    .unwrap();
    let out = assert_not_verified(&short_z, "(truncated)");
    assert!(out.contains("seek table"), "{out}");

    // A byte flipped inside the compressed data.
    let mut damaged = zbytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    let bad_z = dir.join("bad.1.zst");
    fs::write(&bad_z, &damaged).unwrap();
    fs::copy(
        format!("{}.json", zst.display()),
        dir.join("bad.1.zst.json"),
    )
    .unwrap();
    assert_not_verified(&bad_z, "file: SHA-256 is");

    // A changed manifest: any field, even one only the JSON has.
    let changed = dir.join("changed.1");
    fs::copy(&plain, &changed).unwrap();
    let text = fs::read_to_string(format!("{}.json", plain.display())).unwrap();
    let edited = text.replacen("\"pause_us\": ", "\"pause_us\": 1", 1);
    assert_ne!(edited, text);
    fs::write(dir.join("changed.1.json"), edited).unwrap();
    assert_not_verified(&changed, "integrity checksum");
    // ... also when the editor fixes the integrity checksum: the note in
    // the core disagrees.
    let mut value: Value = serde_json::from_str(&text).unwrap();
    value["host"]["hostname"] = "elsewhere".into();
    value.as_object_mut().unwrap().remove("integrity");
    fs::write(
        dir.join("changed.1.json"),
        serde_json::to_string_pretty(&value).unwrap(),
    )
    .unwrap();
    let out = assert_not_verified(&changed, "$.host.hostname");
    assert!(out.contains("no integrity checksum"), "{out}");

    // No manifest at all.
    let lonely = dir.join("lonely.1");
    fs::copy(&plain, &lonely).unwrap();
    assert_not_verified(&lonely, "manifest: none at");
}

/// `-z -o -` streams the seekable file; `--manifest` puts the manifest
/// somewhere, and it verifies the streamed file.
#[test]
fn compressed_stream_with_manifest() {
    let t = start_threads_target(Program::Threads);
    let scratch = Scratch::new("archive-stream");
    let dir = scratch.path();
    let out_path = dir.join("stream.zst");
    let manifest = dir.join("stream.zst.json");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "{} -z -q -o - --manifest {} {} > {}",
        Dumper::Coresnap.program().to_str().unwrap(),
        manifest.display(),
        t.pid,
        out_path.display()
    ));
    let out = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
    assert!(out.success(), "{}", out.describe());
    assert_running_untraced(t.pid);
    assert_verified(&out_path);
    let restored = dir.join("restored");
    zstd_d(&out_path, &restored, &[]);
    assert_loads_in_gdb(t.pid, &restored, &thread_ids(t.pid));
    let value = manifest_of(&out_path);
    assert_eq!(
        value["core"]["length"],
        fs::metadata(&restored).unwrap().len()
    );
}

/// A failed dump leaves nothing behind, and nothing is overwritten without
/// --force (neither the core nor its manifest).
#[test]
fn failed_or_refused_dumps_leave_nothing() {
    let scratch = Scratch::new("archive-fail");
    let dir = scratch.path();
    // No such process (pid_max is below this).
    let prefix = dir.join("none");
    let out = run(&["-z", "-o", prefix.to_str().unwrap(), "2147483000"]);
    assert!(!out.success(), "{}", out.describe());
    let bad_level = run(&[
        "--compress=99",
        "-o",
        prefix.to_str().unwrap(),
        "2147483000",
    ]);
    assert!(
        !bad_level.success() && bad_level.stderr.contains("level"),
        "{}",
        bad_level.describe()
    );
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    let t = start_threads_target(Program::Threads);
    let zst = dump_as(t.pid, dir, "z", &["-z"]);
    let json = PathBuf::from(format!("{}.json", zst.display()));
    let before = fs::read(&json).unwrap();
    // The manifest alone is in the way: refused, nothing changed.
    fs::remove_file(&zst).unwrap();
    let prefix = dir.join("z");
    let again = run(&["-z", "-o", prefix.to_str().unwrap(), &t.pid.to_string()]);
    assert!(
        !again.success() && again.stderr.contains("already exists"),
        "{}",
        again.describe()
    );
    assert!(!zst.exists());
    assert_eq!(fs::read(&json).unwrap(), before);
    run_ok(&[
        "-z",
        "--force",
        "-o",
        prefix.to_str().unwrap(),
        &t.pid.to_string(),
    ]);
    assert_verified(&zst);
    let names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
}

/// The flat hashes: a small core gets them (`sha256sum` of the file equals
/// the manifest's), a larger one only with `--flat-hash`; and the chunked
/// root of both, recomputed by `docs/chunked_sha256.py`, is the manifest's.
#[test]
fn flat_hashes_for_small_cores_and_on_request() {
    let scratch = Scratch::new("archive-flat");
    let dir = scratch.path();
    let files = dir.join("files");
    fs::create_dir_all(&files).unwrap();
    let small = Target::spawn(&build(Program::Memory), &[files.as_os_str()]);
    wait_threads_sleeping(small.pid, &[]);
    let core = dump_as(small.pid, dir, "small", &[]);
    let manifest = manifest_of(&core);
    let length = manifest["core"]["length"].as_u64().unwrap();
    assert!(
        length <= 16 << 20,
        "the memory target's core is small: {length}"
    );
    let flat = sha256sum(&core);
    assert_eq!(manifest["core"]["sha256"].as_str(), Some(flat.as_str()));
    assert_eq!(manifest["file"]["sha256"].as_str(), Some(flat.as_str()));
    assert_eq!(
        manifest["core"]["sha256_chunked"].as_str(),
        Some(chunked_sha256_by_script(&core, chunk_size_of(&manifest)).as_str())
    );
    assert_verified(&core);

    let t = start_threads_target(Program::Threads);
    let default = dump_as(t.pid, dir, "default", &[]);
    let manifest = manifest_of(&default);
    assert!(
        manifest["core"]["length"].as_u64().unwrap() > 16 << 20,
        "the threads target's core is larger than 16 MiB"
    );
    assert!(manifest["core"].get("sha256").is_none(), "{manifest:#}");
    assert!(manifest["file"].get("sha256").is_none(), "{manifest:#}");
    assert_eq!(
        manifest["core"]["sha256_chunked"].as_str(),
        Some(chunked_sha256_by_script(&default, chunk_size_of(&manifest)).as_str())
    );
    let report = verify(&default);
    assert!(
        report.success()
            && report
                .stdout
                .contains("chunked (256 KiB chunks of 16 KiB leaves): SHA-256"),
        "{}",
        report.describe()
    );

    wait_threads_sleeping(t.pid, &[]);
    let asked = dump_as(t.pid, dir, "asked", &["--flat-hash"]);
    let manifest = manifest_of(&asked);
    let flat = sha256sum(&asked);
    assert_eq!(manifest["core"]["sha256"].as_str(), Some(flat.as_str()));
    assert_eq!(manifest["file"]["sha256"].as_str(), Some(flat.as_str()));
    assert_eq!(
        manifest["core"]["sha256_chunked"].as_str(),
        Some(chunked_sha256_by_script(&asked, chunk_size_of(&manifest)).as_str())
    );
    let report = verify(&asked);
    assert!(
        report.success() && report.stdout.contains(&format!("file: SHA-256 {flat}")),
        "{}",
        report.describe()
    );
}
