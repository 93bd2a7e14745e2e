//! `coresnap verify`: checks a core, or its `.zst`, against its manifest.
//!
//! Checked, in order (every check runs; the report lists each):
//!
//! 1. the manifest exists, parses, is a version this tool reads, and its
//!    integrity checksum matches (it was not edited after the dump);
//! 2. the file: its format and length, its flat BLAKE3 and SHA-256 when the
//!    manifest holds them; for `.zst`, the seek table (present, adds up to
//!    the file length, frame count) and every frame's content checksum
//!    while decompressing;
//! 3. the core bytes (decompressed): length, the chunked BLAKE3 and SHA-256
//!    roots, and the flat ones when the manifest holds them. Only the data
//!    is read (holes and frames of zeros are not), so with the chunked
//!    hashes alone the cost follows the bytes stored;
//! 4. the structure: ET_CORE, one PT_LOAD per mapping the manifest says is
//!    in the core, each at the manifest's address, size and file offset, and
//!    the CORESNAP note present and agreeing with the manifest on every
//!    field it holds.

use super::FileKind;
use super::elfscan::{CoreHeaders, ProgramHeader};
use super::reader::SeekableCore;
use super::scan::{DataMap, ScanError, scan_elf, scan_zstd};
use crate::cancel::CancelToken;
use crate::manifest::sign::{self, AllowedSigners, SignedBy};
use crate::manifest::{self, Manifest, note};
use crate::sink::hashing::{Chunking, HashPair, Want};
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
    /// Who made the dump, as far as a signature shows it.
    pub origin: Origin,
}

/// What the check shows about who made the dump. Hashes and checksums only
/// show that a core and its manifest agree: anyone able to rewrite both can
/// make them agree again. Only a signature by an allowed key shows origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// No signature was checked (no allowed signers were given);
    /// `signature` names one found next to the manifest, left unchecked.
    NotChecked { signature: Option<PathBuf> },
    /// The manifest is signed by a key the allowed signers allow.
    Signed(SignedBy),
    /// A signature check was asked for and failed (a check says why).
    Failed,
}

impl Origin {
    fn render(&self) -> String {
        match self {
            Origin::Signed(by) => format!(
                "origin: the manifest is signed by {} ({}, allowed by line {} of the allowed signers file)\n",
                by.identity, by.key, by.line
            ),
            Origin::NotChecked { signature } => format!(
                "consistency only: the file agrees with its manifest, but anyone able to rewrite both could make them agree; who made them was not checked ({})\n",
                match signature {
                    Some(path) => format!(
                        "check the signature {} with --allowed-signers FILE --identity ID",
                        path.display()
                    ),
                    None => "no signature: dump with --sign KEY".to_string(),
                }
            ),
            Origin::Failed => String::new(),
        }
    }
}

/// Whose signature `verify` requires: `--allowed-signers FILE --identity
/// ID`, as `ssh-keygen -Y verify -f FILE -I ID` takes them.
#[derive(Debug, Clone, Copy)]
pub struct SignerCheck<'a> {
    pub allowed_signers: &'a Path,
    pub identity: &'a str,
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
        if self.verified() {
            out.push_str(&self.origin.render());
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

/// Verifies `path` against `manifest_path` (default: `<path>.json`), for
/// consistency only: no signature is checked.
pub fn verify(path: &Path, manifest_path: Option<&Path>, cancel: &CancelToken) -> VerifyReport {
    verify_signed(path, manifest_path, None, cancel)
}

/// [`verify`], and with `signers` the manifest's signature
/// (`<manifest>.sig`) too: it must be good and made by a key the allowed
/// signers allow for the identity.
pub fn verify_signed(
    path: &Path,
    manifest_path: Option<&Path>,
    signers: Option<SignerCheck>,
    cancel: &CancelToken,
) -> VerifyReport {
    let manifest_path = manifest_path.map_or_else(|| default_manifest(path), Path::to_path_buf);
    let mut report = VerifyReport {
        file: path.to_path_buf(),
        manifest_path: manifest_path.clone(),
        checks: Vec::new(),
        interrupted: None,
        origin: Origin::NotChecked { signature: None },
    };
    let (manifest, manifest_value, manifest_text) = load_manifest(&manifest_path, &mut report);
    report.origin = check_origin(
        &manifest_path,
        manifest_text.as_deref(),
        signers,
        &mut report,
    );
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

    let want = wanted_hashes(manifest.as_ref(), kind, &mut report);
    let scanned = match kind {
        FileKind::Zstd => {
            check_seek_table(path, manifest.as_ref(), &mut report);
            scan_zstd(&file, cancel, want)
        }
        _ => scan_elf(&file, cancel, want, DataMap::FileSystem),
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
        let recorded = (expected.blake3.as_deref(), expected.sha256.as_deref());
        if recorded != (None, None) {
            compare_digests(&mut report, "file", scanned.file.flat.as_ref(), recorded);
        } else if kind == FileKind::Zstd {
            report.fail("the manifest records no hashes of the .zst file");
        }
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
        let chunked = (
            core.blake3_chunked.as_deref(),
            core.sha256_chunked.as_deref(),
        );
        let flat = (core.blake3.as_deref(), core.sha256.as_deref());
        if chunked != (None, None) {
            let what = format!(
                "core bytes, chunked ({} KiB chunks{})",
                core.chunk_size.unwrap_or(0) >> 10,
                match core.leaf_size {
                    Some(leaf) if leaf >= 1024 => format!(" of {} KiB leaves", leaf >> 10),
                    Some(leaf) => format!(" of {leaf}-byte leaves"),
                    None => String::new(),
                }
            );
            let roots = scanned.core.chunked.as_ref().map(|c| &c.root);
            compare_digests(&mut report, &what, roots, chunked);
        }
        // For a plain core the flat hashes of the file are those of the
        // core, compared above.
        if flat != (None, None) && (kind == FileKind::Zstd || unpacked) {
            compare_digests(&mut report, "core bytes", scanned.core.flat.as_ref(), flat);
        }
        if chunked == (None, None) && flat == (None, None) {
            report.fail("the manifest records no hashes of the core bytes");
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

/// Largest manifest read. Parsing JSON takes several times its size in
/// memory (docs/SECURITY.md gives the measured peak); a real manifest is
/// about 300 bytes per mapping, some 20 MiB for a process at the default
/// limit of 65,530 mappings.
pub const MAX_MANIFEST: u64 = 32 << 20;

/// The bytes of `path` if it holds at most `limit` (`None` if more; only
/// `limit + 1` bytes are ever read). Only a regular file is read: opened
/// without blocking, a FIFO planted as the manifest cannot hang `verify`.
fn read_limited(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = Vec::new();
    file.take(limit + 1).read_to_end(&mut text)?;
    Ok((text.len() as u64 <= limit).then_some(text))
}

fn load_manifest(
    path: &Path,
    report: &mut VerifyReport,
) -> (Option<Manifest>, Option<serde_json::Value>, Option<Vec<u8>>) {
    let text = match read_limited(path, MAX_MANIFEST) {
        Ok(Some(t)) => t,
        Ok(None) => {
            report.fail(format!(
                "manifest {}: larger than the {} MiB coresnap reads (a manifest lists about 300 bytes per mapping); not read",
                path.display(),
                MAX_MANIFEST >> 20
            ));
            return (None, None, None);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report.fail(format!(
                "manifest: none at {} (coresnap writes <core file>.json next to the core; give --manifest PATH if it is elsewhere)",
                path.display()
            ));
            return (None, None, None);
        }
        Err(e) => {
            report.fail(format!("manifest: cannot read {}: {e}", path.display()));
            return (None, None, None);
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
            (Some(manifest), value, Some(text))
        }
        Err(e) => {
            report.fail(format!("manifest {}: {e}", path.display()));
            (None, None, None)
        }
    }
}

/// The signature check, over the manifest bytes that were parsed (never a
/// second read, which could find another file).
fn check_origin(
    manifest_path: &Path,
    manifest_text: Option<&[u8]>,
    signers: Option<SignerCheck>,
    report: &mut VerifyReport,
) -> Origin {
    let signature_path = sign::signature_path_for(manifest_path);
    let Some(signers) = signers else {
        let present = std::fs::symlink_metadata(&signature_path).is_ok();
        return Origin::NotChecked {
            signature: present.then_some(signature_path),
        };
    };
    let Some(text) = manifest_text else {
        report.fail("signature: not checked, there is no readable manifest to check it against");
        return Origin::Failed;
    };
    let checked = AllowedSigners::load(signers.allowed_signers).and_then(|allowed| {
        sign::check(
            text,
            &signature_path,
            &allowed,
            signers.identity,
            std::time::SystemTime::now(),
        )
    });
    match checked {
        Ok(by) => {
            report.pass(format!(
                "signature {}: good, by {} ({}), namespace {}",
                signature_path.display(),
                by.identity,
                by.key,
                sign::NAMESPACE
            ));
            Origin::Signed(by)
        }
        Err(e) => {
            report.fail(format!("signature: {e}"));
            Origin::Failed
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
                    "seek table: {} covering {} core bytes, consistent with the file length",
                    crate::inspect::render::count_of(core.frames() as u64, "frame"),
                    core.len()
                )),
            }
        }
        Err(e) => report.fail(format!("seek table: {e}")),
    }
}

/// The hashes to compute: those the manifest holds, so that a core whose
/// manifest has only the chunked ones is checked at the cost of its data.
fn wanted_hashes(manifest: Option<&Manifest>, kind: FileKind, report: &mut VerifyReport) -> Want {
    let Some(manifest) = manifest else {
        return Want {
            chunked: None,
            flat: false,
        };
    };
    let core = manifest.core.as_ref();
    let chunked = core
        .filter(|c| c.blake3_chunked.is_some() || c.sha256_chunked.is_some())
        .and_then(|c| {
            let Some(chunk_size) = c.chunk_size else {
                report.fail("the manifest has chunked hashes but no chunk size".to_string());
                return None;
            };
            // Version 2 chunked hashes have no page level; from version 3
            // on the leaf size must be there.
            if manifest.version >= 3 && c.leaf_size.is_none() {
                report.fail("the manifest has chunked hashes but no leaf size".to_string());
                return None;
            }
            let chunking = Chunking {
                chunk_size,
                leaf_size: c.leaf_size,
            };
            chunking.check().map_err(|e| report.fail(e)).ok()
        });
    let core_flat = core.is_some_and(|c| c.blake3.is_some() || c.sha256.is_some());
    let file_flat = kind == FileKind::Elf
        && manifest
            .file
            .as_ref()
            .is_some_and(|f| f.blake3.is_some() || f.sha256.is_some());
    Want {
        chunked,
        flat: core_flat || file_flat,
    }
}

/// Compares the computed `got` with the manifest's (BLAKE3, SHA-256), each
/// only when the manifest holds it.
fn compare_digests(
    report: &mut VerifyReport,
    what: &str,
    got: Option<&HashPair>,
    (blake3, sha256): (Option<&str>, Option<&str>),
) {
    let computed = [
        ("BLAKE3", blake3, got.map(HashPair::blake3_hex)),
        ("SHA-256", sha256, got.map(HashPair::sha256_hex)),
    ];
    for (name, recorded, computed) in computed {
        match (recorded, computed) {
            (None, _) => {}
            (Some(recorded), Some(computed)) if recorded == computed => {
                report.pass(format!("{what}: {name} {computed}"))
            }
            (Some(recorded), Some(computed)) => report.fail(format!(
                "{what}: {name} is {computed}, the manifest says {recorded}"
            )),
            (Some(_), None) => report.fail(format!("{what}: {name} could not be computed")),
        }
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
