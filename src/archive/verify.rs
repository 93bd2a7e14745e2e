//! `coresnap verify`: checks a core, or its `.zst`, against its manifest.
//!
//! Checked, in order (every check runs; the report lists each):
//!
//! 1. the manifest exists, parses, is a version this tool reads, and its
//!    integrity checksum matches (it was not edited after the dump);
//! 2. the file: its format and length, its BLAKE3 and SHA-256; for `.zst`,
//!    the seek table (present, adds up to the file length, frame count) and
//!    every frame's content checksum while decompressing;
//! 3. the core bytes (decompressed): length, BLAKE3 and SHA-256;
//! 4. the structure: ET_CORE, one PT_LOAD per mapping the manifest says is
//!    in the core, each at the manifest's address, size and file offset, and
//!    the CORESNAP note present and agreeing with the manifest on every
//!    field it holds.

use super::FileKind;
use super::elfscan::{CoreHeaders, ProgramHeader};
use super::reader::SeekableCore;
use super::scan::{ScanError, scan_elf, scan_zstd};
use crate::cancel::CancelToken;
use crate::manifest::{self, Manifest, note};
use crate::sink::hashing::Digests;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub what: String,
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub file: PathBuf,
    pub manifest_path: PathBuf,
    pub checks: Vec<Check>,
    /// Set when the check was abandoned (a signal).
    pub interrupted: Option<i32>,
}

impl VerifyReport {
    /// Every check passed (and there were checks).
    pub fn verified(&self) -> bool {
        self.interrupted.is_none() && !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    pub fn problems(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    /// The text `coresnap verify` prints.
    pub fn render(&self) -> String {
        let problems = self.problems().count();
        let mut out = if self.verified() {
            format!("{}: verified\n", self.file.display())
        } else if let Some(signal) = self.interrupted {
            format!(
                "{}: NOT verified: interrupted by signal {signal}\n",
                self.file.display()
            )
        } else {
            format!(
                "{}: NOT verified: {problems} problem{}\n",
                self.file.display(),
                if problems == 1 { "" } else { "s" }
            )
        };
        for check in &self.checks {
            out.push_str(if check.ok { "  ok    " } else { "  FAIL  " });
            out.push_str(&check.what);
            out.push('\n');
        }
        out
    }

    fn pass(&mut self, what: impl Into<String>) {
        self.checks.push(Check {
            ok: true,
            what: what.into(),
        });
    }

    fn fail(&mut self, what: impl Into<String>) {
        self.checks.push(Check {
            ok: false,
            what: what.into(),
        });
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        self.checks.push(Check {
            ok,
            what: what.into(),
        });
    }
}

/// Verifies `path` against `manifest_path` (default: `<path>.json`).
pub fn verify(path: &Path, manifest_path: Option<&Path>, cancel: &CancelToken) -> VerifyReport {
    let manifest_path = manifest_path.map_or_else(|| default_manifest(path), Path::to_path_buf);
    let mut report = VerifyReport {
        file: path.to_path_buf(),
        manifest_path: manifest_path.clone(),
        checks: Vec::new(),
        interrupted: None,
    };
    let (manifest, manifest_value) = load_manifest(&manifest_path, &mut report);
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            report.fail(format!("cannot open {}: {e}", path.display()));
            return report;
        }
    };
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut head = [0u8; 4];
    let kind = match read_head(&mut file, &mut head) {
        Ok(n) => FileKind::of(&head[..n]),
        Err(e) => {
            report.fail(format!("cannot read {}: {e}", path.display()));
            return report;
        }
    };
    let format = match kind {
        FileKind::Elf => manifest::FORMAT_ELF,
        FileKind::Zstd => manifest::FORMAT_ZSTD,
        FileKind::Other => {
            report.fail("the file is neither an ELF core nor a zstd file");
            return report;
        }
    };
    let expected_file = manifest.as_ref().and_then(|m| m.file.clone());
    // A core unpacked from the manifest's .zst: its bytes are the core's.
    let unpacked = kind == FileKind::Elf
        && expected_file
            .as_ref()
            .is_some_and(|f| f.format == manifest::FORMAT_ZSTD);
    if unpacked {
        report.pass("the file is an ELF core and the manifest describes its .zst: checking it as the unpacked core");
    } else if let Some(expected) = &expected_file {
        report.check(
            expected.format == format,
            format!(
                "format: {format}{}",
                if expected.format == format {
                    String::new()
                } else {
                    format!(", the manifest says {}", expected.format)
                }
            ),
        );
        if expected.length == file_len {
            report.pass(format!("file length: {file_len} bytes"));
        } else {
            report.fail(format!(
                "file length: {file_len} bytes, the manifest says {}{}",
                expected.length,
                if file_len < expected.length {
                    " (truncated)"
                } else {
                    " (extra bytes)"
                }
            ));
        }
    } else if manifest.is_some() {
        report.fail("the manifest records no file hashes (dumped with --no-manifest hashing off?)");
    }

    let scanned = match kind {
        FileKind::Zstd => {
            check_seek_table(path, manifest.as_ref(), &mut report);
            scan_zstd(&file, cancel)
        }
        _ => scan_elf(&file, cancel),
    };
    let scanned = match scanned {
        Ok(s) => s,
        Err(ScanError::Interrupted(signal)) => {
            report.interrupted = Some(signal);
            return report;
        }
        Err(ScanError::Io(e)) => {
            report.fail(format!("cannot read {}: {e}", path.display()));
            return report;
        }
    };
    if let Some(e) = &scanned.decode_error {
        report.fail(format!(
            "the compressed data is damaged after {} bytes of core: {e}",
            scanned.core.len
        ));
    } else if kind == FileKind::Zstd {
        report.pass("every zstd frame decompresses and its content checksum matches");
    }
    if let Some(expected) = expected_file.as_ref().filter(|_| !unpacked) {
        compare_digests(
            &mut report,
            "file",
            &scanned.file,
            &expected.blake3,
            &expected.sha256,
        );
    }
    if let Some(core) = manifest.as_ref().and_then(|m| m.core.as_ref()) {
        if core.length == scanned.core.len {
            report.pass(format!("core length: {} bytes", core.length));
        } else {
            report.fail(format!(
                "core length: {} bytes, the manifest says {}",
                scanned.core.len, core.length
            ));
        }
        if kind == FileKind::Zstd || unpacked {
            match (&core.blake3, &core.sha256) {
                (Some(b), Some(s)) => {
                    compare_digests(&mut report, "core bytes", &scanned.core, b, s)
                }
                _ => report.fail("the manifest records no hashes of the core bytes"),
            }
        }
    }
    match &scanned.headers {
        None => report.fail("the core ends before its headers and notes"),
        Some(Err(e)) => report.fail(format!("structure: {e}")),
        Some(Ok(headers)) => check_structure(
            &mut report,
            headers,
            &scanned.prefix,
            manifest.as_ref(),
            manifest_value.as_ref(),
        ),
    }
    report
}

/// `<path>.json`, or for an unpacked core whose own manifest is absent,
/// the manifest of the `.zst` it came from (`<path>.zst.json`).
fn default_manifest(path: &Path) -> PathBuf {
    let own = crate::dump::manifest_path_for(path);
    if own.exists() {
        return own;
    }
    let mut zst = path.as_os_str().to_owned();
    zst.push(".zst.json");
    let zst = PathBuf::from(zst);
    if zst.exists() { zst } else { own }
}

fn read_head(file: &mut File, head: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn load_manifest(
    path: &Path,
    report: &mut VerifyReport,
) -> (Option<Manifest>, Option<serde_json::Value>) {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report.fail(format!(
                "manifest: none at {} (coresnap writes <core file>.json next to the core; give --manifest PATH if it is elsewhere)",
                path.display()
            ));
            return (None, None);
        }
        Err(e) => {
            report.fail(format!("manifest: cannot read {}: {e}", path.display()));
            return (None, None);
        }
    };
    match Manifest::parse(&text) {
        Ok((manifest, intact)) => {
            match intact {
                Some(true) => report.pass(format!(
                    "manifest {}: {} version {}, integrity checksum matches",
                    path.display(),
                    manifest.schema,
                    manifest.version
                )),
                Some(false) => report.fail(format!(
                    "manifest {}: changed after it was written (its integrity checksum does not match its content)",
                    path.display()
                )),
                None => report.fail(format!("manifest {}: has no integrity checksum", path.display())),
            }
            let value = serde_json::from_slice(&text).ok();
            (Some(manifest), value)
        }
        Err(e) => {
            report.fail(format!("manifest {}: {e}", path.display()));
            (None, None)
        }
    }
}

fn check_seek_table(path: &Path, manifest: Option<&Manifest>, report: &mut VerifyReport) {
    match SeekableCore::open(path) {
        Ok(core) => {
            let expected = manifest
                .and_then(|m| m.file.as_ref())
                .and_then(|f| f.zstd.as_ref());
            match expected {
                Some(z) if z.frames != core.frames() => report.fail(format!(
                    "seek table: {} frames, the manifest says {}",
                    core.frames(),
                    z.frames
                )),
                _ => report.pass(format!(
                    "seek table: {} frames covering {} core bytes, consistent with the file length",
                    core.frames(),
                    core.len()
                )),
            }
        }
        Err(e) => report.fail(format!("seek table: {e}")),
    }
}

fn compare_digests(
    report: &mut VerifyReport,
    what: &str,
    got: &Digests,
    blake3: &str,
    sha256: &str,
) {
    let b = got.blake3_hex();
    if b == blake3 {
        report.pass(format!("{what}: BLAKE3 {b}"));
    } else {
        report.fail(format!("{what}: BLAKE3 is {b}, the manifest says {blake3}"));
    }
    let s = got.sha256_hex();
    if s == sha256 {
        report.pass(format!("{what}: SHA-256 {s}"));
    } else {
        report.fail(format!(
            "{what}: SHA-256 is {s}, the manifest says {sha256}"
        ));
    }
}

fn check_structure(
    report: &mut VerifyReport,
    headers: &CoreHeaders,
    prefix: &[u8],
    manifest: Option<&Manifest>,
    manifest_value: Option<&serde_json::Value>,
) {
    if headers.e_type != 4 {
        report.fail(format!("ELF type {} is not ET_CORE (4)", headers.e_type));
        return;
    }
    let note_json = headers.notes(prefix).and_then(note::find);
    let Some(manifest) = manifest else {
        // Without a manifest, still say whether the core describes itself.
        match note_json.map(serde_json::from_slice::<serde_json::Value>) {
            Some(Ok(_)) => report.pass("the CORESNAP note is present and parses"),
            Some(Err(e)) => report.fail(format!("the CORESNAP note does not parse: {e}")),
            None => report.fail("the core has no CORESNAP note"),
        }
        return;
    };
    let loads: Vec<&ProgramHeader> = headers.loads().collect();
    let listed: Vec<&manifest::MappingEntry> =
        manifest.mappings.iter().filter(|m| m.in_core).collect();
    let mut mismatches = Vec::new();
    if loads.len() != listed.len() {
        mismatches.push(format!(
            "{} PT_LOAD segments, the manifest lists {} mappings in the core",
            loads.len(),
            listed.len()
        ));
    }
    for (i, (ph, m)) in loads.iter().zip(&listed).enumerate() {
        let want = (
            m.start.0,
            m.end.0 - m.start.0,
            m.dumped_bytes,
            m.core_offset,
        );
        let got = (ph.vaddr, ph.memsz, ph.filesz, Some(ph.offset));
        if want != got {
            mismatches.push(format!(
                "segment {i}: address {:#x} size {:#x} file bytes {:#x} at {:#x}, the manifest says {:#x} size {:#x} file bytes {:#x} at {}",
                got.0,
                got.1,
                got.2,
                ph.offset,
                want.0,
                want.1,
                want.2,
                want.3.map_or("?".to_string(), |o| format!("{o:#x}"))
            ));
        }
    }
    if mismatches.is_empty() {
        report.pass(format!(
            "structure: ET_CORE, {} PT_LOAD segments match the manifest's mappings",
            loads.len()
        ));
    } else {
        let more = mismatches.len().saturating_sub(5);
        let mut text = format!(
            "structure: {}",
            mismatches
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        report.fail(text);
    }
    match (note_json, manifest_value) {
        (None, _) => report.fail("the core has no CORESNAP note"),
        (Some(json), Some(value)) => match serde_json::from_slice::<serde_json::Value>(json) {
            Ok(note_value) => match manifest::contained_in(&note_value, value) {
                Ok(()) => report.pass("the CORESNAP note agrees with the manifest"),
                Err(diff) => {
                    report.fail(format!("the CORESNAP note and the manifest differ: {diff}"))
                }
            },
            Err(e) => report.fail(format!("the CORESNAP note does not parse: {e}")),
        },
        (Some(_), None) => {}
    }
}
