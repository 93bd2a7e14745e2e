//! The analysed core: every fact `coresnap inspect` reports, as plain data
//! (serialised as the JSON of `--json`, documented in docs/INSPECT.md).
//! Rendering is in [`super::render`].

use super::modules::{FunctionFrame, ModuleInfo};
use super::source::{DecompressionStats, FileFormat};
use super::unwind::Method;
use serde::{Serialize, Serializer};

/// Value of the `schema` field.
pub const SCHEMA: &str = "coresnap-inspect";
/// Value of the `version` field; bumped on any incompatible change.
pub const VERSION: u32 = 1;

pub(crate) fn hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

pub(crate) fn opt_hex<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&format!("{v:#x}")),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub version: u32,
    pub file: FileFacts,
    pub elf: ElfFacts,
    pub process: Option<Process>,
    pub capture: Option<Capture>,
    pub manifest: ManifestStatus,
    pub threads: Vec<Thread>,
    pub mappings: Vec<Mapping>,
    pub modules: Vec<ModuleInfo>,
    pub notes: Vec<NoteCount>,
    pub sizes: Sizes,
    /// Whether `threads[].backtrace` was computed.
    pub backtraces: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileFacts {
    pub path: String,
    pub format: FileFormat,
    /// Length of the file (the compressed length for a `.zst`).
    pub length: u64,
    /// Bytes the file occupies on disk.
    pub disk_usage: u64,
    /// Decompression work done to produce this report (`.zst` only).
    pub decompression: Option<DecompressionStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ElfFacts {
    pub program_headers: u64,
    /// `e_phnum` was PN_XNUM (the count is in the section header).
    pub pn_xnum: bool,
    pub load_segments: usize,
    pub note_segments: usize,
    pub notes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub pid: i32,
    pub ppid: Option<i32>,
    pub pgrp: Option<i32>,
    pub sid: Option<i32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `comm` (at most 15 bytes).
    pub name: Option<String>,
    /// The start of the command line (the core keeps 79 bytes).
    pub command_line: Option<String>,
    /// Full argument list, from the CORESNAP note when present.
    pub argv: Option<Vec<String>>,
    /// The executable: the mapping that holds AT_ENTRY, else the note's.
    pub executable: Option<String>,
    /// Process state letter (`S`, `R`, `T`...).
    pub state: Option<String>,
    pub signal: Option<Signal>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Signal {
    pub number: i32,
    pub name: String,
    pub code: Option<i32>,
    pub errno: Option<i32>,
    /// Fault address (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP).
    #[serde(serialize_with = "opt_hex")]
    pub address: Option<u64>,
    pub sender_pid: Option<i32>,
    pub sender_uid: Option<u32>,
    /// The thread that took it (the first NT_PRSTATUS with it).
    pub thread: Option<i32>,
}

/// From the CORESNAP note: who wrote the core, when, how.
#[derive(Debug, Clone, Serialize)]
pub struct Capture {
    pub tool: Option<String>,
    pub tool_version: Option<String>,
    pub time_utc: Option<String>,
    pub mode: Option<String>,
    /// How the target was held (`ptrace`, or `sigstop`... with --no-ptrace).
    pub freeze: Option<String>,
    /// `partial` when the registers came from /proc without ptrace.
    pub registers: Option<String>,
    pub filter: Option<String>,
    pub all: Option<bool>,
    pub state_before: Option<String>,
    pub hostname: Option<String>,
    pub kernel_release: Option<String>,
    pub boot_id: Option<String>,
    pub process_start_utc: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ManifestStatus {
    /// Where the manifest was looked for.
    pub path: String,
    pub present: bool,
    /// `verified`, `failed`, `not-checked` (without `--verify`), `absent`,
    /// `unavailable`.
    pub verification: String,
    /// Each check and its outcome, when verified.
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Thread {
    /// Position in the core (0: the first NT_PRSTATUS).
    pub index: usize,
    pub tid: i32,
    /// `pr_cursig`, when non-zero.
    pub signal: Option<i32>,
    #[serde(serialize_with = "hex")]
    pub pc: u64,
    #[serde(serialize_with = "hex")]
    pub sp: u64,
    #[serde(serialize_with = "hex")]
    pub fp: u64,
    /// Where the pc is.
    pub location: CodeLocation,
    /// The notes that follow this thread's NT_PRSTATUS (register sets,
    /// per-thread NT_SIGINFO), by type name.
    pub notes: Vec<String>,
    pub backtrace: Option<Backtrace>,
}

/// What is known about one code address.
#[derive(Debug, Clone, Serialize)]
pub struct CodeLocation {
    /// The function name shown (innermost inlined function, else the
    /// function, else the symbol); `None` when unknown (`??`).
    pub function: Option<String>,
    /// The symbol-table symbol holding the address, and the offset in it.
    pub symbol: Option<String>,
    pub offset: Option<u64>,
    /// Path of the mapped file holding the address.
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backtrace {
    pub frames: Vec<Frame>,
    /// Why the walk stopped.
    pub end: String,
    /// True when it reached the end of the stack.
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    pub index: usize,
    /// The pc for the first frame, the return address for the others.
    #[serde(serialize_with = "hex")]
    pub address: u64,
    pub method: Method,
    pub function: Option<String>,
    pub symbol: Option<String>,
    pub offset: Option<u64>,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mapping {
    #[serde(serialize_with = "hex")]
    pub start: u64,
    #[serde(serialize_with = "hex")]
    pub end: u64,
    /// `rwx` letters, `-` for each missing one; `?` when unknown (a mapping
    /// only NT_FILE knows).
    pub perms: String,
    pub file: Option<String>,
    pub file_offset: Option<u64>,
    /// Has a PT_LOAD.
    pub in_core: bool,
    /// Bytes of the mapping the core holds.
    pub bytes_present: u64,
    /// Of those, bytes that are holes in the (sparse) file, when known.
    pub hole_bytes: Option<u64>,
    /// Bytes of the mapping the core does not hold.
    pub bytes_absent: u64,
    /// File offset of the segment's data.
    #[serde(serialize_with = "opt_hex")]
    pub core_offset: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NoteCount {
    pub name: String,
    #[serde(rename = "type")]
    pub n_type: u32,
    pub type_name: String,
    pub count: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    /// Length of the core (uncompressed).
    pub logical: u64,
    /// Bytes the file occupies on disk.
    pub on_disk: u64,
    /// Length of the file itself (compressed for a `.zst`).
    pub file_length: u64,
    /// Sum of the mappings' sizes.
    pub mapped: u64,
    /// Sum of the bytes the core holds for them.
    pub present: u64,
    /// Of those, holes in the file, when known.
    pub holes: Option<u64>,
}

impl From<&super::modules::Symbolized> for CodeLocation {
    fn from(s: &super::modules::Symbolized) -> CodeLocation {
        let innermost: Option<&FunctionFrame> = s.frames.first();
        CodeLocation {
            function: innermost
                .and_then(|f| f.function.clone())
                .or_else(|| s.symbol.as_ref().map(|x| x.0.clone())),
            symbol: s.symbol.as_ref().map(|x| x.0.clone()),
            offset: s.symbol.as_ref().map(|x| x.1),
            module: s.module.clone(),
            file: innermost.and_then(|f| f.file.clone()),
            line: innermost.and_then(|f| f.line),
        }
    }
}
