//! The one way a test says that it cannot run a check, so that a green run
//! means every check ran.
//!
//! There are two kinds of "cannot":
//!
//! - The **environment** lacks something it could be given (a capability,
//!   a tool, a writable setting, a cgroup2 mount). That is a failure, with
//!   what is missing and how to get it, unless `CORESNAP_ALLOW_SKIP=1` is set
//!   (for local runs without privileges; CI never sets it): then the test
//!   stops and the skip is recorded.
//! - The **hardware or kernel** legitimately lacks a feature (no AVX-512 on
//!   this CPU, a kernel without `PAGEMAP_SCAN`): the check is recorded as not
//!   applicable, with the reason.
//!
//! Either way one line (test, kind, reason) is printed to stderr and appended
//! to the skip file (`CORESNAP_SKIP_FILE`, by default `target/test-skips.txt`),
//! which `tests/run.sh` summarises at the end of the run and fails on when it
//! holds an environment skip.
//!
//! This file uses only `std`, so that the library's unit tests include it
//! too (`src/lib.rs`).

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a test needed and did not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// Something the machine could be given: a failure unless skipping is
    /// allowed.
    Environment {
        /// What is missing, e.g. "CAP_SYS_ADMIN (to mount a tmpfs)".
        what: String,
        /// How to get it, e.g. "run the tests as root".
        remedy: String,
    },
    /// A hardware or kernel feature this machine does not have.
    NotApplicable { reason: String },
}

impl Missing {
    pub fn environment(what: impl Into<String>, remedy: impl Into<String>) -> Missing {
        Missing::Environment {
            what: what.into(),
            remedy: remedy.into(),
        }
    }

    pub fn not_applicable(reason: impl Into<String>) -> Missing {
        Missing::NotApplicable {
            reason: reason.into(),
        }
    }
}

/// The environment variable that turns environment failures into recorded
/// skips.
pub const ALLOW_SKIP: &str = "CORESNAP_ALLOW_SKIP";
/// The environment variable that names the skip file.
pub const SKIP_FILE: &str = "CORESNAP_SKIP_FILE";

/// Whether `CORESNAP_ALLOW_SKIP=1` is set.
pub fn skipping_allowed() -> bool {
    std::env::var_os(ALLOW_SKIP).is_some_and(|v| v == "1")
}

/// Where skips are recorded: `CORESNAP_SKIP_FILE`, else `test-skips.txt` in
/// the cargo target directory.
pub fn skip_file() -> PathBuf {
    if let Some(path) = std::env::var_os(SKIP_FILE) {
        return PathBuf::from(path);
    }
    // Integration tests know the target directory (its `tmp` child); unit
    // tests do not, and fall back to the default one.
    let target = option_env!("CARGO_TARGET_TMPDIR")
        .and_then(|tmp| Path::new(tmp).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-skips.txt")
}

/// The running test as `binary::path::to::test`: the test binary's name
/// without cargo's hash, then the name libtest gives the test's thread.
pub fn current_test() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .map(|name| match name.rsplit_once('-') {
            Some((stem, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => stem.to_string(),
            _ => name,
        })
        .unwrap_or_else(|| "?".to_string());
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed thread>")
        .to_string();
    format!("{binary}::{test}")
}

fn record(kind: &str, reason: &str) {
    let line = format!("{}\t{kind}\t{reason}", current_test());
    eprintln!("{line}");
    let path = skip_file();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // One write of one line with O_APPEND: lines from tests running at the
    // same time (threads, or several test binaries) do not interleave.
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot record a skipped check in {}: {e} (set {SKIP_FILE} to a writable path)",
            path.display()
        );
    }
}

/// Records `missing` for the running test. For an environment lack this
/// panics (the test fails, saying what to do) unless `CORESNAP_ALLOW_SKIP=1`;
/// when it returns, the caller skips the check.
#[track_caller]
pub fn skip(missing: &Missing) {
    match missing {
        Missing::NotApplicable { reason } => record("not-applicable", reason),
        Missing::Environment { what, remedy } => {
            if skipping_allowed() {
                record("environment", &format!("needs {what}; {remedy}"));
            } else {
                record(
                    "environment",
                    &format!("needs {what}; {remedy} (failed: {ALLOW_SKIP} is not 1)"),
                );
                panic!(
                    "this test needs {what}: {remedy}. (To skip such tests on a machine \
                     that cannot provide it, set {ALLOW_SKIP}=1; the skip is then recorded \
                     in {}.)",
                    skip_file().display()
                );
            }
        }
    }
}

/// True (after recording it, see [`skip`]) when `check` failed: the caller
/// returns from the test, or leaves out the check.
#[track_caller]
pub fn unmet(check: Result<(), Missing>) -> bool {
    match check {
        Ok(()) => false,
        Err(missing) => {
            skip(&missing);
            true
        }
    }
}

/// The value, or `None` after recording why it is missing (see [`skip`]):
/// `let Some(mount) = available(Tmpfs::mount(..)) else { return };`.
#[track_caller]
pub fn available<T>(value: Result<T, Missing>) -> Option<T> {
    match value {
        Ok(v) => Some(v),
        Err(missing) => {
            skip(&missing);
            None
        }
    }
}

/// Records a check that does not apply on this machine, for a test that
/// goes on with its other checks.
pub fn not_applicable(reason: impl Into<String>) {
    skip(&Missing::not_applicable(reason));
}

// ---------------------------------------------------------------------------
// Capabilities, checked as the kernel checks them
// ---------------------------------------------------------------------------

/// A Linux capability a test may need (the bit numbers of
/// `include/uapi/linux/capability.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Setgid = 6,
    Setuid = 7,
    Setpcap = 8,
    SysPtrace = 19,
    SysAdmin = 21,
}

impl Capability {
    pub fn name(self) -> &'static str {
        match self {
            Capability::Setgid => "CAP_SETGID",
            Capability::Setuid => "CAP_SETUID",
            Capability::Setpcap => "CAP_SETPCAP",
            Capability::SysPtrace => "CAP_SYS_PTRACE",
            Capability::SysAdmin => "CAP_SYS_ADMIN",
        }
    }
}

/// The effective capability set of this process (`CapEff` of
/// /proc/self/status), which is what the kernel consults, whatever the euid.
pub fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_else(|e| panic!("reading /proc/self/status: {e}"));
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or_else(|| panic!("no CapEff line in /proc/self/status:\n{status}"));
    u64::from_str_radix(hex.trim(), 16)
        .unwrap_or_else(|e| panic!("CapEff {hex:?} in /proc/self/status: {e}"))
}

pub fn has_capability(cap: Capability) -> bool {
    effective_capabilities() & (1 << cap as u32) != 0
}

/// `Ok` if this process holds `cap` in its effective set; otherwise an
/// environment lack naming `purpose`.
pub fn capability(cap: Capability, purpose: &str) -> Result<(), Missing> {
    if has_capability(cap) {
        return Ok(());
    }
    let name = cap.name();
    let short = name.trim_start_matches("CAP_").to_ascii_lowercase();
    Err(Missing::environment(
        format!("{name} ({purpose})"),
        format!(
            "run the tests as root, or give them the capability, e.g. \
             `setpriv --inh-caps=+{short} --ambient-caps=+{short} tests/run.sh`"
        ),
    ))
}
