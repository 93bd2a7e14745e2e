//! Signed manifests (`--sign KEY`): OpenSSH's `ssh-keygen -Y verify` and
//! `coresnap verify --allowed-signers` both accept a real signed dump, and
//! both refuse a changed manifest, a key that is not allowed, and a forged
//! core whose manifest was recomputed by someone without the key.
//!
//! Keys are made by `ssh-keygen` in each test's scratch directory.
//! Set CORESNAP_TEST_KEEP=1 to keep the scratch directories.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const NAMESPACE: &str = "coresnap-manifest@coresnap";
const OPS: &str = "ops@example.org";
/// The first heap word `testdata/memory.c` writes: tag 0x4845 ("HE"), index 0.
const HEAP_WORD_0: u64 = 0x4845 << 48;

fn coresnap(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.args(args);
    run_with_timeout(&mut cmd, DUMP_TIMEOUT, false)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("scratch paths are UTF-8")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `ssh-keygen -q -N '' -C NAME -f DIR/NAME` plus `key_args`; returns the
/// private key's path (the public key is beside it, `.pub`).
fn keygen(dir: &Path, name: &str, key_args: &[&str], passphrase: &str) -> PathBuf {
    let key = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-N", passphrase, "-C", name])
        .args(key_args)
        .arg("-f")
        .arg(&key);
    let out = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
    assert!(out.success(), "ssh-keygen failed:\n{}", out.describe());
    key
}

/// An allowed signers file with one line: `identity <public key of key>`.
fn allowed_signers(dir: &Path, identity: &str, key: &Path) -> PathBuf {
    let public = fs::read_to_string(with_suffix(key, ".pub")).unwrap();
    let path = dir.join(format!("allowed-{identity}"));
    fs::write(&path, format!("{identity} {public}")).unwrap();
    path
}

/// `ssh-keygen -Y verify -f ALLOWED -I IDENTITY -n NAMESPACE -s MANIFEST.sig
/// < MANIFEST`, nothing but OpenSSH.
fn openssh_verify(manifest: &Path, allowed: &Path, identity: &str) -> CmdOutput {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "exec ssh-keygen -Y verify -f \"$1\" -I \"$2\" -n \"$3\" -s \"$4.sig\" < \"$4\"",
        "sh",
        path_str(allowed),
        identity,
        NAMESPACE,
        path_str(manifest),
    ]);
    run_with_timeout(&mut cmd, DUMP_TIMEOUT, true)
}

#[track_caller]
fn assert_openssh_accepts(manifest: &Path, allowed: &Path, identity: &str) {
    let out = openssh_verify(manifest, allowed, identity);
    let good = format!("Good \"{NAMESPACE}\" signature for {identity}");
    assert!(
        out.success() && out.stdout.contains(&good),
        "ssh-keygen -Y verify should accept {}:\n{}",
        manifest.display(),
        out.describe()
    );
}

#[track_caller]
fn assert_openssh_refuses(manifest: &Path, allowed: &Path, identity: &str) {
    let out = openssh_verify(manifest, allowed, identity);
    assert!(
        !out.success() && !out.stdout.contains("Good"),
        "ssh-keygen -Y verify should refuse {}:\n{}",
        manifest.display(),
        out.describe()
    );
}

/// `coresnap verify FILE [--allowed-signers A --identity ID]`.
fn coresnap_verify(file: &Path, signers: Option<(&Path, &str)>) -> CmdOutput {
    let mut args = vec!["verify", path_str(file)];
    if let Some((allowed, identity)) = signers {
        args.extend([
            "--allowed-signers",
            path_str(allowed),
            "--identity",
            identity,
        ]);
    }
    coresnap(&args)
}

/// Passes, and says the manifest is signed by `identity`.
#[track_caller]
fn assert_coresnap_accepts(file: &Path, allowed: &Path, identity: &str) {
    let out = coresnap_verify(file, Some((allowed, identity)));
    let origin = format!("origin: the manifest is signed by {identity} (");
    assert!(
        out.success()
            && out
                .stdout
                .lines()
                .next()
                .is_some_and(|l| l.ends_with(": verified"))
            && out.stdout.contains(&origin),
        "coresnap verify should accept {} as signed by {identity}:\n{}",
        file.display(),
        out.describe()
    );
}

/// Fails with exit status 1, the signature check failing with `why`.
#[track_caller]
fn assert_coresnap_refuses(file: &Path, allowed: &Path, identity: &str, why: &str) -> String {
    let out = coresnap_verify(file, Some((allowed, identity)));
    let failed = out
        .stdout
        .lines()
        .find(|l| l.starts_with("  FAIL  signature: "));
    assert!(
        out.status.code() == Some(1)
            && out.stdout.contains("NOT verified")
            && failed.is_some_and(|l| l.contains(why)),
        "coresnap verify should refuse the signature of {} ({why:?}):\n{}",
        file.display(),
        out.describe()
    );
    out.stdout
}

/// `coresnap EXTRA -o DIR/core PID`; returns the core's path.
fn dump_into(dir: &Path, pid: i32, extra: &[&str]) -> PathBuf {
    let prefix = dir.join("core");
    let pid_arg = pid.to_string();
    let mut args = extra.to_vec();
    args.extend(["-o", path_str(&prefix), &pid_arg]);
    let out = coresnap(&args);
    assert!(
        out.success(),
        "coresnap {args:?} failed:\n{}",
        out.describe()
    );
    assert_running_untraced(pid);
    let compressed = extra.iter().any(|a| a.starts_with("-z"));
    let core = with_suffix(
        &prefix,
        &format!(".{pid}{}", if compressed { ".zst" } else { "" }),
    );
    assert!(
        core.exists(),
        "{} missing:\n{}",
        core.display(),
        out.describe()
    );
    core
}

/// The target's first heap word as gdb reads it from `core`.
fn heap_word_in_gdb(target: &Target, core: &Path) -> u64 {
    let command = format!("x/1gx {:#x}", target.addr("heap"));
    let out = run_gdb(&target.exe, core, &[&command]);
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .find_map(|(_, words)| parse_hex(words.split_whitespace().next()?))
        .unwrap_or_else(|| panic!("no word in gdb's output:\n{out}"))
}

/// The memory target, idle, with the kernel's default coredump_filter.
fn memory_target(scratch: &Scratch) -> Target {
    let files = scratch.path().join("files");
    fs::create_dir_all(&files).unwrap();
    let target = Target::spawn(&build(Program::Memory), &[files.as_os_str()]);
    set_coredump_filter(target.pid, 0x33);
    wait_threads_sleeping(target.pid, &[]);
    target
}

fn requirements() -> [Result<(), Missing>; 3] {
    [
        ptrace_access(),
        program("ssh-keygen", "-?", "openssh-client"),
        program("gdb", "--version", "gdb"),
    ]
}

/// A plain dump, a compressed one from a copy-on-write clone and one taken
/// on a condition, each signed with an ed25519 key: OpenSSH and coresnap
/// accept each signature, and the signed plain core holds the target's
/// memory as gdb reads it. Without allowed signers, verify passes but says
/// it checked consistency, not origin.
#[test]
fn signed_dumps_verify_with_openssh_and_coresnap() {
    let [a, b, c] = requirements();
    require!(a, b, c);
    let scratch = Scratch::new("signing-good");
    let dir = scratch.path();
    let key = keygen(dir, "ops", &["-t", "ed25519"], "");
    let allowed = allowed_signers(dir, OPS, &key);
    let target = memory_target(&scratch);
    let sign = ["--sign", path_str(&key)];

    let plain_dir = dir.join("plain");
    fs::create_dir(&plain_dir).unwrap();
    let plain = dump_into(&plain_dir, target.pid, &sign);
    assert_loads_in_gdb(target.pid, &plain, &thread_ids(target.pid));
    assert_eq!(heap_word_in_gdb(&target, &plain), HEAP_WORD_0);
    let manifest = with_suffix(&plain, ".json");
    let signature = fs::read_to_string(with_suffix(&manifest, ".sig")).unwrap();
    assert!(
        signature.starts_with("-----BEGIN SSH SIGNATURE-----\n"),
        "{signature}"
    );
    assert_openssh_accepts(&manifest, &allowed, OPS);
    assert_coresnap_accepts(&plain, &allowed, OPS);

    let unchecked = coresnap_verify(&plain, None);
    assert!(unchecked.success(), "{}", unchecked.describe());
    assert!(
        unchecked.stdout.contains("consistency only: ")
            && unchecked.stdout.contains("who made them was not checked")
            && !unchecked.stdout.contains("origin: "),
        "verify without allowed signers must not claim origin:\n{}",
        unchecked.describe()
    );

    wait_threads_sleeping(target.pid, &[]);
    let cow_dir = dir.join("cow");
    fs::create_dir(&cow_dir).unwrap();
    let zst = dump_into(
        &cow_dir,
        target.pid,
        &["-z", "--mode", "cow", sign[0], sign[1]],
    );
    assert_openssh_accepts(&with_suffix(&zst, ".json"), &allowed, OPS);
    assert_coresnap_accepts(&zst, &allowed, OPS);

    // A condition that holds at once: the dump goes through the watcher.
    wait_threads_sleeping(target.pid, &[]);
    let watch_dir = dir.join("watch");
    fs::create_dir(&watch_dir).unwrap();
    let prefix = watch_dir.join("core");
    let pid = target.pid.to_string();
    let out = coresnap(&[
        "--threads-above",
        "0",
        "--for",
        "0s",
        "--sign",
        path_str(&key),
        "-o",
        path_str(&prefix),
        &pid,
    ]);
    assert!(out.success(), "{}", out.describe());
    assert_running_untraced(target.pid);
    let watched = with_suffix(&prefix, &format!(".{pid}.1"));
    assert_openssh_accepts(&with_suffix(&watched, ".json"), &allowed, OPS);
    assert_coresnap_accepts(&watched, &allowed, OPS);
}

/// Changing the manifest after signing, signing with a key the allowed
/// signers do not list, a signature made for another namespace, and no
/// signature at all are refused by both OpenSSH and coresnap, which also
/// agree on the allowed signers' patterns and options; a signature
/// made afterwards by OpenSSH itself (the way to sign with a key kept in
/// ssh-agent) is accepted by coresnap.
#[test]
fn changed_manifest_and_wrong_key_fail_both_checks() {
    let [a, b, c] = requirements();
    require!(a, b, c);
    let scratch = Scratch::new("signing-bad");
    let dir = scratch.path();
    let ops = keygen(dir, "ops", &["-t", "ed25519"], "");
    let mallory = keygen(dir, "mallory", &["-t", "ecdsa", "-b", "256"], "");
    let allowed = allowed_signers(dir, OPS, &ops);
    let target = memory_target(&scratch);

    // Changed after signing: one field edited (its integrity checksum then
    // fails too), and only whitespace added (the checksum, computed over the
    // parsed JSON, still matches; the signature covers the exact bytes).
    let edited_dir = dir.join("edited");
    fs::create_dir(&edited_dir).unwrap();
    let core = dump_into(&edited_dir, target.pid, &["--sign", path_str(&ops)]);
    let manifest = with_suffix(&core, ".json");
    let original = fs::read_to_string(&manifest).unwrap();
    let comm = "\"comm\": \"memory\"";
    assert!(original.contains(comm), "{original}");
    fs::write(&manifest, original.replace(comm, "\"comm\": \"sshd\"")).unwrap();
    assert_openssh_refuses(&manifest, &allowed, OPS);
    assert_coresnap_refuses(&core, &allowed, OPS, "does not match the manifest");
    fs::write(&manifest, format!("{original}\n")).unwrap();
    assert_openssh_refuses(&manifest, &allowed, OPS);
    let out = assert_coresnap_refuses(&core, &allowed, OPS, "does not match the manifest");
    assert!(out.contains("integrity checksum matches"), "{out}");
    fs::write(&manifest, &original).unwrap();
    assert_coresnap_accepts(&core, &allowed, OPS);

    // Signed by a key the allowed signers do not list (ECDSA, which both
    // accept under its own allowed signers), or listed for someone else.
    wait_threads_sleeping(target.pid, &[]);
    let mallory_dir = dir.join("signed-by-mallory");
    fs::create_dir(&mallory_dir).unwrap();
    let forged = dump_into(&mallory_dir, target.pid, &["--sign", path_str(&mallory)]);
    let forged_manifest = with_suffix(&forged, ".json");
    assert_openssh_refuses(&forged_manifest, &allowed, OPS);
    assert_coresnap_refuses(&forged, &allowed, OPS, "is not an allowed signer");
    let mallory_allowed = allowed_signers(dir, "mallory", &mallory);
    assert_openssh_accepts(&forged_manifest, &mallory_allowed, "mallory");
    assert_coresnap_accepts(&forged, &mallory_allowed, "mallory");
    assert_openssh_refuses(&manifest, &allowed, "dev@example.org");
    assert_coresnap_refuses(&core, &allowed, "dev@example.org", "allows it for");

    // Principal patterns, namespaces and validity times of the allowed
    // signers format, judged alike by both, for three identities.
    let public = fs::read_to_string(with_suffix(&ops, ".pub")).unwrap();
    let identities = [OPS, "dev@example.org", "ops@example.com"];
    let lines = [
        (
            format!("*@example.org,!dev@example.org namespaces=\"file,{NAMESPACE}\" {public}"),
            [true, false, false],
        ),
        (format!("{OPS} namespaces=\"file\" {public}"), [false; 3]),
        (
            format!("{OPS} valid-before=\"20000101Z\" {public}"),
            [false; 3],
        ),
        (
            format!("{OPS} valid-after=\"20000101Z\",valid-before=\"99991231Z\" {public}"),
            [true, false, false],
        ),
        (
            format!("# {OPS} {public}\n{OPS},dev@* cert-authority {public}"),
            [false; 3],
        ),
    ];
    let patterns = dir.join("allowed-patterns");
    for (line, expected) in lines {
        fs::write(&patterns, &line).unwrap();
        for (identity, accepted) in identities.into_iter().zip(expected) {
            if accepted {
                assert_openssh_accepts(&manifest, &patterns, identity);
                assert_coresnap_accepts(&core, &patterns, identity);
            } else {
                assert_openssh_refuses(&manifest, &patterns, identity);
                assert_coresnap_refuses(&core, &patterns, identity, "is not an allowed signer");
            }
        }
    }

    // No signature, then one made afterwards by OpenSSH: for another
    // namespace, then for coresnap's.
    wait_threads_sleeping(target.pid, &[]);
    let later_dir = dir.join("later");
    fs::create_dir(&later_dir).unwrap();
    let unsigned = dump_into(&later_dir, target.pid, &[]);
    let unsigned_manifest = with_suffix(&unsigned, ".json");
    assert_openssh_refuses(&unsigned_manifest, &allowed, OPS);
    assert_coresnap_refuses(&unsigned, &allowed, OPS, "no signature at");
    for (namespace, accepted) in [("file", false), (NAMESPACE, true)] {
        let _ = fs::remove_file(with_suffix(&unsigned_manifest, ".sig"));
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-Y", "sign", "-n", namespace, "-f"])
            .arg(&ops)
            .arg(&unsigned_manifest);
        let out = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
        assert!(out.success(), "ssh-keygen -Y sign:\n{}", out.describe());
        if accepted {
            assert_coresnap_accepts(&unsigned, &allowed, OPS);
        } else {
            assert_coresnap_refuses(&unsigned, &allowed, OPS, "namespace \"file\"");
        }
    }
}

/// A forger without the key changes the target's memory and dumps it
/// again: the forged core says what they want (gdb shows their word), its
/// manifest is recomputed and agrees with it, so a consistency check alone
/// passes. With the genuine signature kept beside it, OpenSSH and coresnap
/// refuse it; with the signature removed, coresnap says it is missing, and
/// a FIFO in its place is refused at once.
#[test]
fn forged_core_with_recomputed_manifest_fails_the_signature_check() {
    let [a, b, c] = requirements();
    require!(a, b, c);
    let scratch = Scratch::new("signing-forged");
    let dir = scratch.path();
    let key = keygen(dir, "ops", &["-t", "ed25519"], "");
    let allowed = allowed_signers(dir, OPS, &key);
    let target = memory_target(&scratch);

    let genuine_dir = dir.join("genuine");
    fs::create_dir(&genuine_dir).unwrap();
    let genuine = dump_into(&genuine_dir, target.pid, &["--sign", path_str(&key)]);
    assert_eq!(heap_word_in_gdb(&target, &genuine), HEAP_WORD_0);
    assert_coresnap_accepts(&genuine, &allowed, OPS);

    // "FAKE" in the live target's heap, through /proc/PID/mem (the test is
    // allowed to ptrace it), then an unsigned dump under the same name.
    const FORGED_WORD: u64 = 0x4641_4b45_0000_0000;
    let mem = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/mem", target.pid))
        .unwrap();
    mem.write_all_at(&FORGED_WORD.to_le_bytes(), target.addr("heap"))
        .unwrap();
    drop(mem);
    let forger_dir = dir.join("forger");
    fs::create_dir(&forger_dir).unwrap();
    let forged = dump_into(&forger_dir, target.pid, &[]);
    assert_eq!(heap_word_in_gdb(&target, &forged), FORGED_WORD);
    fs::rename(&forged, &genuine).unwrap();
    fs::rename(
        with_suffix(&forged, ".json"),
        with_suffix(&genuine, ".json"),
    )
    .unwrap();
    assert_eq!(heap_word_in_gdb(&target, &genuine), FORGED_WORD);

    let consistent = coresnap_verify(&genuine, None);
    assert!(
        consistent.success() && consistent.stdout.contains("consistency only: "),
        "the forged pair is consistent, and verify says that is all it checked:\n{}",
        consistent.describe()
    );
    let manifest = with_suffix(&genuine, ".json");
    assert_openssh_refuses(&manifest, &allowed, OPS);
    assert_coresnap_refuses(&genuine, &allowed, OPS, "does not match the manifest");
    fs::remove_file(with_suffix(&manifest, ".sig")).unwrap();
    assert_coresnap_refuses(&genuine, &allowed, OPS, "no signature at");

    // A FIFO planted as the signature is refused, not waited on.
    let mut mkfifo = Command::new("mkfifo");
    mkfifo.arg(with_suffix(&manifest, ".sig"));
    let out = run_with_timeout(&mut mkfifo, DUMP_TIMEOUT, false);
    assert!(out.success(), "mkfifo:\n{}", out.describe());
    assert_coresnap_refuses(&genuine, &allowed, OPS, "not a regular file");
}

/// Keys coresnap cannot sign with are refused with a reason before the
/// target is touched: no file is written and the target runs on untraced.
#[test]
fn unusable_keys_are_refused_before_the_dump() {
    let [a, b, _] = requirements();
    require!(a, b);
    let scratch = Scratch::new("signing-keys");
    let dir = scratch.path();
    let target = Target::spawn(&build(Program::Threads), &[]);
    let protected = keygen(dir, "protected", &["-t", "ed25519"], "a passphrase");
    let rsa = keygen(dir, "rsa", &["-t", "rsa", "-b", "2048"], "");
    let good = keygen(dir, "good", &["-t", "ed25519"], "");
    let public = with_suffix(&good, ".pub");
    let exposed = dir.join("exposed");
    fs::copy(&good, &exposed).unwrap();
    fs::set_permissions(&exposed, fs::Permissions::from_mode(0o644)).unwrap();
    let absent = dir.join("absent");
    let output = dir.join("out");
    let pid = target.pid.to_string();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--sign", path_str(&protected)],
            "protected by a passphrase",
        ),
        (&["--sign", path_str(&rsa)], "ed25519 or ECDSA"),
        (
            &["--sign", path_str(&exposed)],
            "can be read by others (mode 0644)",
        ),
        (
            &["--sign", path_str(&public)],
            "is not an OpenSSH private key",
        ),
        (
            &["--sign", path_str(&absent)],
            "cannot read the signing key",
        ),
        (
            &["--sign", path_str(&good), "--no-manifest"],
            "cannot be used with",
        ),
    ];
    for (extra, why) in cases {
        let mut args = extra.to_vec();
        args.extend(["-o", path_str(&output), &pid]);
        let out = coresnap(&args);
        assert!(
            !out.success() && out.stderr.contains(why),
            "coresnap {args:?} should fail saying {why:?}:\n{}",
            out.describe()
        );
        assert_running_untraced(target.pid);
    }
    // A stream has a manifest only with --manifest.
    let out = coresnap(&["--sign", path_str(&good), "-o", "-", &pid]);
    assert!(
        !out.success() && out.stderr.contains("--manifest PATH") && out.stdout.is_empty(),
        "{}",
        out.describe()
    );
    assert_running_untraced(target.pid);
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("out"))
        .collect();
    assert!(left.is_empty(), "files written: {left:?}");
}
