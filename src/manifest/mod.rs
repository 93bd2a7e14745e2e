//! The manifest: what was captured, how, what was left out and why, and the
//! hashes that make the result checkable. Documented in docs/MANIFEST.md.
//!
//! It exists twice:
//!
//! - inside the core, as the `CORESNAP` note ([`note`]), written before any
//!   memory: identity, host, capture settings and every mapping with its
//!   decision;
//! - next to the core, as `<core file>.json`, written at the end: the same
//!   facts plus what only the end knows (pause, bytes written and holes per
//!   mapping, unreadable ranges, where each segment is in the file, the
//!   hashes of the core and of the file, and a checksum of the manifest
//!   itself).
//!
//! [`build`] makes it from a snapshot; [`buildid`] reads build-ids from the
//! mapped files; `coresnap verify` ([`crate::archive::verify`]) checks a
//! file against it.

pub mod build;
pub mod buildid;
pub mod note;
pub mod sign;

use crate::snapshot::Decision;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Value of the `schema` field.
pub const SCHEMA: &str = "coresnap-manifest";
/// Value of the `version` field; bumped on any incompatible change (2: the
/// chunked hashes; the flat ones became optional. 3: the chunked hashes
/// cover leaves within chunks, `core.leaf_size`).
pub const VERSION: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    pub version: u32,
    pub tool: Tool,
    pub host: Host,
    pub target: Target,
    pub capture: Capture,
    /// Every mapping of the target, in address order.
    pub mappings: Vec<MappingEntry>,
    /// Ranges that could not be read (zeros in the core). JSON only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<Vec<UnreadableEntry>>,
    /// The core's bytes (uncompressed). JSON only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<CoreEntry>,
    /// The file as written (the core itself, or its `.zst`). JSON only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileEntry>,
    /// Checksum of this manifest. JSON only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<Integrity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    pub kernel_release: String,
    /// `/proc/sys/kernel/random/boot_id`: with the start time, pins the
    /// process down even across reboots.
    pub boot_id: String,
    pub machine: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub pid: i32,
    /// `starttime` of `/proc/PID/stat`: clock ticks after boot.
    pub start_time_ticks: u64,
    pub clock_ticks_per_second: u64,
    /// The start time as a date, from the boot time (`btime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_utc: Option<String>,
    /// `/proc/PID/exe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_build_id: Option<String>,
    /// The executable's Go build id (`.note.go.buildid`), for a Go program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_go_build_id: Option<String>,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    /// Thread ids, in the core's order (main thread first).
    pub threads: Vec<i32>,
    /// Present when the target runs in other pid or mount namespaces than
    /// coresnap (a container): the ids above are coresnap's view, NT_FILE
    /// holds the paths as the container sees them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Namespaces>,
}

/// The target's namespaces, when they are not coresnap's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    /// `readlink /proc/PID/ns/pid`, e.g. `pid:[4026532178]`.
    pub pid_ns: String,
    /// `readlink /proc/PID/ns/mnt`.
    pub mnt_ns: String,
    /// The target's pid in each nested pid namespace, coresnap's first
    /// (`NSpid` of `/proc/PID/status`).
    pub pids: Vec<i32>,
    /// The pid the target has inside its own namespace.
    pub pid_inside: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    /// When every thread had stopped, UTC, RFC 3339.
    pub time_utc: String,
    /// `stop`: the target stays frozen while its memory is copied.
    pub mode: String,
    /// `coredump_filter` bits used, in hex.
    pub filter: String,
    /// `-a`: filter and MADV_DONTDUMP ignored.
    pub all: bool,
    /// Process state letter before the freeze.
    pub state_before: String,
    /// The target was stopped (SIGSTOP) before and was left stopped.
    pub left_stopped: bool,
    /// The signal the dump was taken on (`--on-signal`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// How long the target was frozen, in microseconds. JSON only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_us: Option<u64>,
    /// With `--mode cow`: the copy's cost in memory (docs/COW.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cow: Option<CowCost>,
    /// Why `--mode cow` was asked for but the dump was taken in stop mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cow_fallback: Option<String>,
    /// How the target was held still: `ptrace`, or with `--no-ptrace`
    /// `cgroup-freezer`, `sigstop`, `already-stopped` or `none`.
    #[serde(default = "default_freeze")]
    pub freeze: String,
    /// `complete`, or `partial` when they came from `/proc` without ptrace
    /// (stack pointer, program counter, system call arguments only).
    #[serde(default = "default_registers")]
    pub registers: String,
}

/// What copying from a copy-on-write clone costs: each page the target
/// writes during the copy is held twice, the old one by the clone alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CowCost {
    /// The clone's `oom_score_adj`: 1000, the out-of-memory killer's first
    /// pick.
    pub clone_oom_score_adj: i32,
    /// The most the copy was allowed to cost (`--cow-max-copy`).
    pub cap_bytes: u64,
    /// The target's private resident memory at the freeze: the most it
    /// could duplicate.
    pub private_bytes: u64,
    /// How fast the target duplicated memory in the probe after the
    /// release.
    pub write_rate_bytes_per_sec: u64,
    /// The cost expected from that rate before the copy began.
    pub expected_bytes: u64,
    /// The cost measured: memory only the clone held at the end of the
    /// copy. JSON only (not known when the note was written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicated_bytes: Option<u64>,
}

fn default_freeze() -> String {
    "ptrace".into()
}

fn default_registers() -> String {
    "complete".into()
}

/// What the dump was taken on (`--on-signal`, `--on-exit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// `signal` (a signal about to be delivered) or `exit` (the process
    /// at the start of its exit). Absent before both existed: `signal`.
    #[serde(default = "default_trigger_kind")]
    pub kind: String,
    /// The thread the signal was for, or the first one seen exiting.
    pub tid: i32,
    /// The signal; for an exit, the signal that killed the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `SIGSEGV`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<String>,
    /// Delivering the signal ends the process (no handler, not ignored,
    /// a default action that terminates), as read at the delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_end_process: Option<bool>,
    /// The signal's `si_code`, and its name (`SI_USER`, `SEGV_MAPERR`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub si_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub si_code_name: Option<String>,
    /// `kernel` (a fault, a timer...) or `process` (kill, tgkill, raise,
    /// sigqueue: `si_code` <= 0 with a sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_by: Option<String>,
    /// The sender's pid and real uid as the target sees them, where the
    /// kernel records them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_uid: Option<u32>,
    /// The address a kernel-raised SIGSEGV, SIGBUS, SIGILL or SIGFPE names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_address: Option<Hex>,
    /// For an exit: the status passed to `exit` (absent when a signal
    /// killed the process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
}

fn default_trigger_kind() -> String {
    "signal".into()
}

/// One mapping and what the dump did with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingEntry {
    pub start: Hex,
    pub end: Hex,
    /// As in `/proc/PID/maps`: `r-xp`, `rw-s`...
    pub perms: String,
    /// Offset into the mapped file.
    pub offset: u64,
    /// Path (` (deleted)` kept), pseudo name (`[heap]`), or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `decision`: `whole`, `elf_header_page` or `skipped`, and for
    /// `skipped` a `reason` (see docs/MANIFEST.md).
    #[serde(flatten)]
    pub decision: Decision,
    /// Bytes of the mapping the core holds (the segment's `p_filesz`).
    pub dumped_bytes: u64,
    /// The mapping has a PT_LOAD in the core.
    pub in_core: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The mapped file's Go build id (`.note.go.buildid`), for a Go program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_build_id: Option<String>,
    /// File offset of the segment's data. JSON only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_offset: Option<u64>,
    /// Bytes of data actually written (pages that were not all zeros).
    /// JSON only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_bytes: Option<u64>,
    /// `dumped_bytes - written_bytes`: never-populated and all-zero pages,
    /// holes in a sparse file. JSON only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hole_bytes: Option<u64>,
    /// `--mode cow`: the bytes were read after the target was released,
    /// not as at the freeze (shared memory the target cannot write, whose
    /// bytes are its file's). Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_after_release: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableEntry {
    pub start: Hex,
    pub len: u64,
    pub errno: i32,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreEntry {
    /// Length of the (uncompressed) core file.
    pub length: u64,
    /// Number of PT_LOAD program headers.
    pub segments: u64,
    pub notes_offset: u64,
    /// Bytes of memory data written (the rest of the segments are holes).
    pub written_bytes: u64,
    /// Chunk size of the chunked hashes (docs/MANIFEST.md, "Hashes").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    /// Page size of the chunked hashes (version 3 on; absent in version 2,
    /// whose chunked hashes have no page level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_size: Option<u64>,
    /// Chunked BLAKE3 root of the core bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3_chunked: Option<String>,
    /// Chunked SHA-256 root of the core bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_chunked: Option<String>,
    /// Flat BLAKE3 of the core bytes (`b3sum`): small cores and on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Flat SHA-256 of the core bytes (`sha256sum`): small cores and on
    /// request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name (no directory: the manifest sits next to it).
    pub name: String,
    /// `elf-core` or `zstd-seekable`.
    pub format: String,
    pub length: u64,
    /// Flat BLAKE3 of the file as written: always for a `.zst`, for a plain
    /// core when the core's flat hashes were computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Flat SHA-256 of the file as written (`sha256sum FILE`), as above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd: Option<ZstdEntry>,
}

pub const FORMAT_ELF: &str = "elf-core";
pub const FORMAT_ZSTD: &str = "zstd-seekable";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZstdEntry {
    pub level: i32,
    pub frames: u32,
    /// Uncompressed bytes per frame (the last one may be shorter).
    pub frame_len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    /// BLAKE3 of the manifest's canonical form: the JSON without this
    /// field, keys sorted, no whitespace.
    pub manifest_blake3: String,
}

/// An address, written as a `0x` hex string (JSON numbers lose precision
/// above 2^53 in many readers; `[vsyscall]` is at 0xffffffffff600000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hex, D::Error> {
        let text = String::deserialize(d)?;
        let digits = text
            .strip_prefix("0x")
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not 0x-hex")))?;
        u64::from_str_radix(digits, 16)
            .map(Hex)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a coresnap manifest (schema {0:?})")]
    Schema(String),
    #[error("manifest version {0} is newer than this coresnap understands ({VERSION})")]
    Version(u64),
}

impl Manifest {
    /// The canonical bytes the integrity checksum covers.
    fn canonical(value: &serde_json::Value) -> Vec<u8> {
        let mut value = value.clone();
        if let Some(map) = value.as_object_mut() {
            map.remove("integrity");
        }
        serde_json::to_vec(&sort_keys(value)).expect("a Value always serializes")
    }

    /// Sets [`Manifest::integrity`] from the rest.
    pub fn seal(&mut self) {
        self.integrity = None;
        let value = serde_json::to_value(&*self).expect("manifest serializes");
        let digest = blake3::hash(&Self::canonical(&value));
        self.integrity = Some(Integrity {
            manifest_blake3: crate::sink::hashing::hex(digest.as_bytes()),
        });
    }

    /// The sealed manifest as the pretty-printed text of `<core>.json`.
    pub fn to_json(&self) -> String {
        let mut sealed = self.clone();
        sealed.seal();
        let mut text = serde_json::to_string_pretty(&sealed).expect("manifest serializes");
        text.push('\n');
        text
    }

    /// Parses a manifest; also returns whether its integrity checksum is
    /// present and right (`None`: absent).
    pub fn parse(text: &[u8]) -> Result<(Manifest, Option<bool>), ManifestError> {
        let value: serde_json::Value = serde_json::from_slice(text)?;
        let schema = value
            .get("schema")
            .and_then(|s| s.as_str())
            .unwrap_or_default();
        if schema != SCHEMA {
            return Err(ManifestError::Schema(schema.to_string()));
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version > u64::from(VERSION) {
            return Err(ManifestError::Version(version));
        }
        let intact = value
            .get("integrity")
            .and_then(|i| i.get("manifest_blake3"))
            .and_then(|h| h.as_str())
            .map(|recorded| {
                let digest = blake3::hash(&Self::canonical(&value));
                recorded == crate::sink::hashing::hex(digest.as_bytes())
            });
        let manifest = serde_json::from_value(value)?;
        Ok((manifest, intact))
    }
}

/// Recursively sorts object keys (whatever map type serde_json was built
/// with), so the canonical form never depends on the order in the file.
fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> =
                map.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Whether every field present in `part` has the same value in `whole`
/// (objects: key by key; arrays: same length, element by element). Returns
/// the JSON path of the first difference.
pub fn contained_in(part: &serde_json::Value, whole: &serde_json::Value) -> Result<(), String> {
    fn walk(
        part: &serde_json::Value,
        whole: &serde_json::Value,
        path: &mut String,
    ) -> Result<(), String> {
        use serde_json::Value;
        match (part, whole) {
            (Value::Object(p), Value::Object(w)) => {
                for (key, value) in p {
                    let len = path.len();
                    path.push('.');
                    path.push_str(key);
                    match w.get(key) {
                        Some(other) => walk(value, other, path)?,
                        None => return Err(format!("{path} is missing")),
                    }
                    path.truncate(len);
                }
                Ok(())
            }
            (Value::Array(p), Value::Array(w)) => {
                if p.len() != w.len() {
                    return Err(format!(
                        "{path} has {} entries instead of {}",
                        w.len(),
                        p.len()
                    ));
                }
                for (i, (a, b)) in p.iter().zip(w).enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(a, b, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            (a, b) if a == b => Ok(()),
            (a, b) => Err(format!("{path} is {b} instead of {a}")),
        }
    }
    let mut path = String::from("$");
    walk(part, whole, &mut path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SkipReason;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            schema: SCHEMA.into(),
            version: VERSION,
            tool: Tool {
                name: "coresnap".into(),
                version: "0.1.0".into(),
            },
            host: Host {
                hostname: "h".into(),
                kernel_release: "6.18".into(),
                boot_id: "b".into(),
                machine: "x86_64".into(),
            },
            target: Target {
                pid: 42,
                start_time_ticks: 7,
                clock_ticks_per_second: 100,
                start_time_utc: None,
                exe: Some("/bin/x".into()),
                exe_build_id: None,
                exe_go_build_id: None,
                comm: "x".into(),
                cmdline: vec!["x".into(), "-v".into()],
                uid: 0,
                gid: 0,
                threads: vec![42, 43],
                namespaces: None,
            },
            capture: Capture {
                time_utc: "2026-01-01T00:00:00.000000Z".into(),
                mode: "stop".into(),
                filter: "0x33".into(),
                all: false,
                state_before: "S".into(),
                left_stopped: false,
                trigger: None,
                pause_us: None,
                cow: None,
                cow_fallback: None,
                freeze: "ptrace".into(),
                registers: "complete".into(),
            },
            mappings: vec![
                MappingEntry {
                    start: Hex(0xffffffffff600000),
                    end: Hex(0xffffffffff601000),
                    perms: "--xp".into(),
                    offset: 0,
                    name: Some("[vsyscall]".into()),
                    decision: Decision::Skipped {
                        reason: SkipReason::Filtered { bit: 4 },
                    },
                    dumped_bytes: 0,
                    in_core: false,
                    build_id: None,
                    go_build_id: None,
                    core_offset: None,
                    written_bytes: None,
                    hole_bytes: None,
                    read_after_release: false,
                },
                MappingEntry {
                    start: Hex(0x1000),
                    end: Hex(0x3000),
                    perms: "rw-p".into(),
                    offset: 0,
                    name: None,
                    decision: Decision::Whole,
                    dumped_bytes: 0x2000,
                    in_core: true,
                    build_id: Some("abcd".into()),
                    go_build_id: None,
                    core_offset: Some(0x1000),
                    written_bytes: Some(0x1000),
                    hole_bytes: Some(0x1000),
                    read_after_release: false,
                },
            ],
            unreadable: Some(vec![]),
            core: None,
            file: None,
            integrity: None,
        }
    }

    #[test]
    fn round_trips_and_detects_edits() {
        let m = sample();
        let text = m.to_json();
        assert!(text.contains("\"start\": \"0xffffffffff600000\""), "{text}");
        assert!(text.contains("\"decision\": \"skipped\""), "{text}");
        let (back, intact) = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(intact, Some(true));
        assert_eq!(back.mappings, m.mappings);
        let edited = text.replace("\"pid\": 42", "\"pid\": 43");
        assert_eq!(Manifest::parse(edited.as_bytes()).unwrap().1, Some(false));
        assert!(matches!(
            Manifest::parse(b"{\"schema\":\"x\"}"),
            Err(ManifestError::Schema(_))
        ));
    }

    #[test]
    fn containment_reports_the_first_difference() {
        let whole = serde_json::json!({"a": 1, "b": {"c": [1, {"d": 2, "e": 3}]}});
        assert!(contained_in(&serde_json::json!({"b": {"c": [1, {"d": 2}]}}), &whole).is_ok());
        assert_eq!(
            contained_in(&serde_json::json!({"b": {"c": [1, {"d": 5}]}}), &whole).unwrap_err(),
            "$.b.c[1].d is 2 instead of 5"
        );
        assert!(
            contained_in(&serde_json::json!({"z": 1}), &whole)
                .unwrap_err()
                .contains("missing")
        );
    }
}
