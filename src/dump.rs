//! The whole pipeline for one process: freeze, collect the snapshot, write
//! the core into a sink while the target stays frozen, release.

use crate::archive::scan::{self, DataMap, ScanError};
use crate::cancel::CancelToken;
use crate::cow::CowCopy;
use crate::elf::writer::{self, WriteError};
use crate::manifest::build::{Context, Outcome};
use crate::manifest::sign::{self, SignError, SigningKey};
use crate::manifest::{self, FileEntry, Manifest, ZstdEntry};
use crate::output;
use crate::process::freeze::{FreezeError, FrozenProcess};
use crate::process::info;
use crate::process::memory::{MemoryError, MemoryReader, Unreadable};
use crate::process::unattached::UnattachedFreeze;
use crate::sink::hashing::{Digests, Want};
use crate::sink::zstd_seekable::SeekableStats;
use crate::sink::{
    CompressOptions, HashingSink, HashingWriter, Sink, SparseFile, Stream, ZstdSeekableSink,
};
use crate::snapshot::collect::{self, CollectError};
use crate::snapshot::select::{DEFAULT_FILTER, SelectionPolicy};
use crate::watch::{self, Trigger, WatchFor, WatchOutcome};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;

/// Progress callback: (bytes read so far, bytes to read in all).
pub type ProgressFn = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How the target is kept still while its memory is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DumpMode {
    /// Every thread stays stopped until the whole core is written.
    #[default]
    Stop,
    /// Threads are stopped only while registers and metadata are captured
    /// and a copy-on-write clone is made; memory comes from the clone.
    /// With `fallback`, a target that cannot be cloned safely is dumped in
    /// stop mode instead (the report says why); without it the dump fails.
    Cow { fallback: bool },
}

/// How coresnap gets hold of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Attach {
    /// `PTRACE_SEIZE` + `PTRACE_INTERRUPT` of every thread: exact registers.
    #[default]
    Ptrace,
    /// `--no-ptrace`: for a target another tool already traces. It is held
    /// by its cgroup's freezer or SIGSTOP (not at all without `freeze`),
    /// memory is read without attaching, and the registers are only what
    /// `/proc` shows (stack pointer, program counter, system call).
    Unattached { freeze: bool },
}

/// How to take the dump.
#[derive(Clone)]
pub struct DumpOptions {
    /// Dump every readable mapping, ignoring `coredump_filter` and
    /// MADV_DONTDUMP (gcore's `-a`).
    pub all: bool,
    /// `coredump_filter` bits to use instead of the target's own.
    pub filter: Option<u32>,
    /// How long to wait for each thread to stop.
    pub freeze_timeout: Duration,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Set (e.g. from a signal handler) to abandon the dump cleanly.
    pub cancel: CancelToken,
    /// Called with (bytes read, bytes to read) as memory is copied.
    pub progress: Option<ProgressFn>,
    /// How the target is kept still while its memory is copied.
    pub mode: DumpMode,
    /// With `--mode cow`: the most the copy may cost in memory, in bytes
    /// (`--cow-max-copy`); `None`: half of the memory available.
    pub cow_max_copy: Option<u64>,
    /// Why a `--mode cow` dump is being redone in stop mode: set by the
    /// fallback, and recorded in the report and the manifest.
    pub stop_mode_because: Option<String>,
    /// ptrace, or not (`--no-ptrace`).
    pub attach: Attach,
    /// Instead of dumping now, stay attached and dump when the trigger
    /// comes: a signal that will end the process (`--on-signal`), then
    /// delivered unchanged, or its exit (`--on-exit`), which then goes on.
    pub watch: Option<WatchFor>,
    /// Compress while writing, into the zstd seekable format (`-z`).
    pub compress: Option<CompressOptions>,
    /// Hash the core and the file and write the manifest (`<core>.json`,
    /// or `manifest_path`). The CORESNAP note is in the core either way.
    pub manifest: bool,
    /// Where the manifest goes instead of next to the core; the only way
    /// to get one for a stream.
    pub manifest_path: Option<PathBuf>,
    /// Also the flat hashes (`sha256sum` of the core) for a core larger
    /// than [`SMALL_CORE`](crate::sink::hashing::SMALL_CORE): they hash
    /// every hole's zeros (`--flat-hash`).
    pub flat_hash: bool,
    /// Sign the manifest with this key into `<manifest>.sig` (`--sign`):
    /// an SSH signature that `ssh-keygen -Y verify` checks.
    pub sign: Option<std::sync::Arc<SigningKey>>,
}

impl Default for DumpOptions {
    fn default() -> DumpOptions {
        DumpOptions {
            all: false,
            filter: None,
            freeze_timeout: Duration::from_secs(5),
            overwrite: false,
            cancel: CancelToken::new(),
            progress: None,
            mode: DumpMode::Stop,
            cow_max_copy: None,
            stop_mode_because: None,
            attach: Attach::Ptrace,
            watch: None,
            compress: None,
            manifest: true,
            manifest_path: None,
            flat_hash: false,
            sign: None,
        }
    }
}

/// What a successful dump did.
#[derive(Debug, Clone)]
pub struct DumpReport {
    pub pid: i32,
    /// Where the core went (`None` for a stream).
    pub path: Option<PathBuf>,
    pub threads: usize,
    pub mappings: usize,
    /// Mappings with at least one byte in the core.
    pub mappings_dumped: usize,
    /// Logical size of the core.
    pub core_len: u64,
    /// Bytes the core takes on disk (a file only; holes are free).
    pub disk_usage: Option<u64>,
    /// Bytes read from the target.
    pub bytes_read: u64,
    /// How long the target was stopped.
    pub pause: Duration,
    /// Whole dump, start to finish.
    pub elapsed: Duration,
    /// Ranges that could not be read and are zeros in the core.
    pub unreadable: Vec<Unreadable>,
    /// The target was stopped (state T) before and was left stopped.
    pub left_stopped: bool,
    /// The mode actually used.
    pub mode: DumpMode,
    /// How the target was held: `ptrace`, or without it `cgroup-freezer`,
    /// `sigstop`, `already-stopped`, `none`; without ptrace the registers
    /// are only what `/proc` shows ([`DumpReport::registers_partial`]).
    pub freeze: &'static str,
    /// Why `--mode cow` fell back to stop mode, if it did.
    pub cow_fallback: Option<String>,
    /// With a clone: what the copy was expected to cost in memory and what
    /// it did cost.
    pub cow_cost: Option<crate::cow::CopyCost>,
    /// Problems that did not stop the dump (e.g. cleaning up the clone).
    pub warnings: Vec<String>,
    /// The signal or exit that caused the dump (`watch`), with the thread
    /// it concerned.
    pub trigger: Option<Trigger>,
    /// What was captured and how, with the hashes when they were computed
    /// (see docs/MANIFEST.md).
    pub manifest: Option<Box<Manifest>>,
    /// Where the manifest was written.
    pub manifest_path: Option<PathBuf>,
    /// For a compressed core: frames and compressed size.
    pub compressed: Option<SeekableStats>,
}

impl DumpReport {
    /// The registers are only what `/proc` shows (`--no-ptrace`).
    pub fn registers_partial(&self) -> bool {
        self.freeze != "ptrace"
    }
}

#[derive(Debug, Error)]
pub enum DumpError {
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error(
        "--mode cow is not possible for process {pid}: {source}; {} (drop --no-fallback to dump it in stop mode)",
        .source.effect_on_target()
    )]
    Cow {
        pid: i32,
        source: crate::cow::CowError,
    },
    #[error(
        "--mode cow gave up on process {pid}: {reason}; no core was written{}",
        if *.no_fallback {
            " (drop --no-fallback to dump it in stop mode instead)"
        } else {
            " (what was already streamed cannot be taken back: dump it again with --mode stop)"
        }
    )]
    CowAbandoned {
        pid: i32,
        reason: String,
        /// Part of the core had been written.
        written: bool,
        no_fallback: bool,
    },
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("{0}")]
    Write(#[from] WriteError),
    #[error("{path} already exists; remove it or pass --force to replace it")]
    OutputExists { path: PathBuf },
    #[error("cannot create the core in {dir}: {source}{}", output_hint(.source))]
    CreateOutput {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}{}", output_hint(.source))]
    OutputIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("process {pid} exited during the dump; no core was written")]
    TargetExited { pid: i32 },
    #[error("process {pid} ended without a watched signal or exit; no core was written")]
    ExitedWithoutSignal { pid: i32 },
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    #[error("{what} needs ptrace; it cannot be combined with --no-ptrace")]
    NeedsPtrace { what: &'static str },
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("--sign signs the manifest, and this dump writes none ({what})")]
    SignWithoutManifest { what: &'static str },
}

/// The target, held still by one of the two means.
enum Hold {
    Attached(FrozenProcess),
    Unattached(UnattachedFreeze),
}

impl Hold {
    fn was_stopped(&self) -> bool {
        match self {
            Hold::Attached(frozen) => frozen.was_stopped(),
            Hold::Unattached(held) => held.was_stopped(),
        }
    }

    fn method(&self) -> &'static str {
        match self {
            Hold::Attached(_) => "ptrace",
            Hold::Unattached(held) => held.method().name(),
        }
    }

    /// Lets the target go; how long it was held.
    fn release(self) -> Duration {
        match self {
            Hold::Attached(frozen) => frozen.release(),
            Hold::Unattached(held) => held.release(),
        }
    }
}

/// What to do about an error writing the output.
fn output_hint(error: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            " (free some space there, or write elsewhere with -o)"
        }
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => {
            " (write to another directory with -o)"
        }
        _ => "",
    }
}

/// An I/O error of the sink is an error writing `path`: say which file.
fn at_output(path: &Path) -> impl Fn(DumpError) -> DumpError + '_ {
    move |error| match error {
        DumpError::Write(WriteError::Io(source)) => DumpError::OutputIo {
            path: path.to_path_buf(),
            source,
        },
        error => error,
    }
}

impl DumpError {
    /// The signal that interrupted the dump, if that is what ended it.
    pub fn interrupted_by(&self) -> Option<i32> {
        match self {
            DumpError::Freeze(FreezeError::Interrupted { signal })
            | DumpError::Write(WriteError::Interrupted { signal })
            | DumpError::Watch(crate::watch::WatchError::Interrupted { signal }) => Some(*signal),
            _ => None,
        }
    }
}

/// Dumps `pid` into any writer (a pipe, stdout, a socket); zero pages are
/// written out since a stream cannot have holes. With `options.compress`
/// the stream is the zstd seekable file; a manifest is written only to
/// `options.manifest_path`.
pub fn dump_to_writer<W: Write>(
    pid: i32,
    out: W,
    options: &DumpOptions,
) -> Result<DumpReport, DumpError> {
    let stream_err = |source| DumpError::OutputIo {
        path: PathBuf::from("standard output"),
        source,
    };
    if let Some(path) = &options.manifest_path {
        check_free(path, options.overwrite)?;
        check_signature_free(path, options)?;
    } else if options.sign.is_some() {
        return Err(DumpError::SignWithoutManifest {
            what: "a stream has one only with --manifest PATH",
        });
    }
    let (mut report, file) = match options.compress {
        None => {
            let mut sink = Stream::new(out);
            let report = dump_into_sink(pid, &mut sink, options)?;
            let file = report.manifest.as_ref().and_then(|m| core_as_file(m, "-"));
            (report, file)
        }
        Some(compress) => {
            let writer = HashingWriter::new(out, options.manifest);
            let mut sink = ZstdSeekableSink::new(writer, compress).map_err(stream_err)?;
            let mut report = dump_into_sink(pid, &mut sink, options)?;
            let (writer, stats) = sink.complete().map_err(stream_err)?;
            let (_, digests) = writer.into_parts();
            let file = digests.map(|d| zstd_file("-", &stats, d));
            report.compressed = Some(stats);
            (report, file)
        }
    };
    if let (Some(manifest), Some(file)) = (report.manifest.as_mut(), file) {
        manifest.record_file(file);
    }
    if let (Some(manifest), Some(path)) = (report.manifest.as_ref(), options.manifest_path.as_ref())
    {
        write_manifest(manifest, path, options)?.persist()?;
        report.manifest_path = Some(path.clone());
    }
    Ok(report)
}

/// The manifest's name for the core at `path`: `<path>.json`.
pub fn manifest_path_for(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

fn check_free(path: &Path, overwrite: bool) -> Result<(), DumpError> {
    if !overwrite && std::fs::symlink_metadata(path).is_ok() {
        return Err(DumpError::OutputExists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn check_signature_free(manifest: &Path, options: &DumpOptions) -> Result<(), DumpError> {
    match options.sign {
        Some(_) => check_free(&sign::signature_path_for(manifest), options.overwrite),
        None => Ok(()),
    }
}

/// A file written in its final directory without its final name, and given
/// that name by [`Pending::persist`] (gone if dropped before).
struct Pending {
    temp: TempOutput,
    path: PathBuf,
    overwrite: bool,
}

/// The file being written: unnamed (`O_TMPFILE`) where the file system
/// allows it, so that nothing is left behind even when coresnap is killed
/// with SIGKILL (or by the OOM killer); else under a temporary name
/// (`.NAME.XXXXXX.partial`), removed on every path coresnap survives.
enum TempOutput {
    Unnamed(std::fs::File),
    Named(tempfile::NamedTempFile),
}

impl TempOutput {
    fn as_file(&self) -> &std::fs::File {
        match self {
            TempOutput::Unnamed(file) => file,
            TempOutput::Named(temp) => temp.as_file(),
        }
    }
}

impl Pending {
    fn create(path: &Path, overwrite: bool) -> Result<Pending, DumpError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = output::parent_dir(path);
        let unnamed = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir);
        let temp = match unnamed {
            Ok(file) => TempOutput::Unnamed(file),
            // No O_TMPFILE in this kernel or file system.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EISDIR | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                ) =>
            {
                TempOutput::Named(
                    tempfile::Builder::new()
                        .prefix(&output::temp_name(path))
                        .suffix(".partial")
                        .tempfile_in(dir)
                        .map_err(|source| DumpError::CreateOutput {
                            dir: dir.to_path_buf(),
                            source,
                        })?,
                )
            }
            Err(source) => {
                return Err(DumpError::CreateOutput {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Pending {
            temp,
            path: path.to_path_buf(),
            overwrite,
        })
    }

    fn io_err(&self) -> impl Fn(std::io::Error) -> DumpError + '_ {
        move |source| DumpError::OutputIo {
            path: self.path.clone(),
            source,
        }
    }

    fn persist(self) -> Result<(), DumpError> {
        let Pending {
            temp,
            path,
            overwrite,
        } = self;
        let persisted = match temp {
            TempOutput::Unnamed(file) => output::link_unnamed(&file, &path, overwrite),
            TempOutput::Named(temp) if overwrite => {
                temp.persist(&path).map(drop).map_err(|e| e.error)
            }
            TempOutput::Named(temp) => temp.persist_noclobber(&path).map(drop).map_err(|e| e.error),
        };
        persisted.map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                DumpError::OutputExists { path }
            } else {
                DumpError::OutputIo {
                    path,
                    source: error,
                }
            }
        })
    }
}

/// The manifest and, with `--sign`, its signature over the very bytes
/// written, both complete but not yet under their names.
struct PendingManifest {
    manifest: Pending,
    signature: Option<Pending>,
}

impl PendingManifest {
    /// Names the manifest, then its signature; on failure neither is left.
    fn persist(self) -> Result<PathBuf, DumpError> {
        let path = self.manifest.path.clone();
        let overwrite = self.manifest.overwrite;
        self.manifest.persist()?;
        match self.signature {
            Some(signature) => {
                if let Err(e) = signature.persist() {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            }
            // The signature of the manifest just replaced would only fail.
            None if overwrite => {
                let _ = std::fs::remove_file(sign::signature_path_for(&path));
            }
            None => {}
        }
        Ok(path)
    }
}

fn write_manifest(
    manifest: &Manifest,
    path: &Path,
    options: &DumpOptions,
) -> Result<PendingManifest, DumpError> {
    let pending = Pending::create(path, options.overwrite)?;
    let text = manifest.to_json();
    let mut file = pending.temp.as_file();
    file.write_all(text.as_bytes()).map_err(pending.io_err())?;
    let signature = match &options.sign {
        Some(key) => {
            let armored = key.sign(text.as_bytes())?;
            let signature = Pending::create(&sign::signature_path_for(path), options.overwrite)?;
            let mut file = signature.temp.as_file();
            file.write_all(armored.as_bytes())
                .map_err(signature.io_err())?;
            Some(signature)
        }
        None => None,
    };
    Ok(PendingManifest {
        manifest: pending,
        signature,
    })
}

/// The file entry of an uncompressed core: the file is the core.
fn core_as_file(manifest: &Manifest, name: &str) -> Option<FileEntry> {
    let core = manifest.core.as_ref()?;
    Some(FileEntry {
        name: name.to_string(),
        format: manifest::FORMAT_ELF.into(),
        length: core.length,
        blake3: core.blake3.clone(),
        sha256: core.sha256.clone(),
        zstd: None,
    })
}

fn zstd_file(name: &str, stats: &SeekableStats, digests: Digests) -> FileEntry {
    FileEntry {
        name: name.to_string(),
        format: manifest::FORMAT_ZSTD.into(),
        length: stats.compressed_len,
        blake3: digests.flat.map(|f| f.blake3_hex()),
        sha256: digests.flat.map(|f| f.sha256_hex()),
        zstd: Some(ZstdEntry {
            level: stats.level,
            frames: stats.frames,
            frame_len: stats.frame_len,
        }),
    }
}

/// Dumps `pid` to `path`: a sparse file, or with `options.compress` the
/// zstd seekable file, written directly (no uncompressed copy), plus the
/// manifest `<path>.json` (or `options.manifest_path`). Everything is
/// written under temporary names in the target directories and renamed
/// when complete, so a failed or interrupted dump leaves no file behind;
/// existing files are replaced only with `options.overwrite`.
pub fn dump_to_path(pid: i32, path: &Path, options: &DumpOptions) -> Result<DumpReport, DumpError> {
    match dump_to_path_once(pid, path, options) {
        // The clone was lost with part of the core written: a file, unlike
        // a stream, can be started over.
        Err(DumpError::CowAbandoned {
            reason,
            written: true,
            no_fallback: false,
            ..
        }) => dump_to_path_once(pid, path, &in_stop_mode(options, reason)),
        other => other,
    }
}

/// The same dump in stop mode: the fallback when the clone is lost.
fn in_stop_mode(options: &DumpOptions, because: String) -> DumpOptions {
    DumpOptions {
        mode: DumpMode::Stop,
        stop_mode_because: Some(because),
        ..options.clone()
    }
}

fn dump_to_path_once(
    pid: i32,
    path: &Path,
    options: &DumpOptions,
) -> Result<DumpReport, DumpError> {
    let started = Instant::now();
    let manifest_path = options.manifest.then(|| {
        options
            .manifest_path
            .clone()
            .unwrap_or_else(|| manifest_path_for(path))
    });
    check_free(path, options.overwrite)?;
    if let Some(m) = &manifest_path {
        check_free(m, options.overwrite)?;
        check_signature_free(m, options)?;
    } else if options.sign.is_some() {
        return Err(DumpError::SignWithoutManifest {
            what: "--no-manifest",
        });
    }
    let core = Pending::create(path, options.overwrite)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The file is hashed after the target is released, by reading it back:
    // hashing in the write path would lengthen the pause (docs/MANIFEST.md).
    // For a plain core, where the data went: read back, only those ranges
    // are read, whatever the file system says about holes.
    let mut written = Vec::new();
    let mut report = match options.compress {
        None => {
            let mut sink = SparseFile::new(core.temp.as_file());
            let report = dump_with(pid, &mut sink, options, false).map_err(at_output(path))?;
            written = sink.into_written();
            report
        }
        Some(compress) => {
            let buffered = std::io::BufWriter::with_capacity(1 << 20, core.temp.as_file());
            let mut sink = ZstdSeekableSink::new(buffered, compress).map_err(core.io_err())?;
            let mut report = dump_with(pid, &mut sink, options, false).map_err(at_output(path))?;
            let (buffered, stats) = sink.complete().map_err(core.io_err())?;
            buffered
                .into_inner()
                .map_err(|e| e.into_error())
                .map_err(core.io_err())?;
            report.compressed = Some(stats);
            report
        }
    };
    report.disk_usage = Some(
        core.temp
            .as_file()
            .metadata()
            .map_err(core.io_err())?
            .blocks()
            * 512,
    );
    let manifest_file = match (report.manifest.as_mut(), &manifest_path) {
        (Some(manifest), Some(manifest_path)) => {
            let file = core.temp.as_file();
            let want = Want::for_core(report.core_len, options.flat_hash);
            let scanned = match &report.compressed {
                Some(_) => scan::scan_zstd(file, &options.cancel, want),
                None => scan::scan_elf(file, &options.cancel, want, DataMap::Written(&written)),
            }
            .map_err(|e| match e {
                ScanError::Interrupted(signal) => {
                    DumpError::Write(WriteError::Interrupted { signal })
                }
                ScanError::Io(source) => DumpError::OutputIo {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
            if let Some(e) = scanned.decode_error {
                return Err(DumpError::OutputIo {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
            manifest.record_core_digests(&scanned.core);
            let entry = match &report.compressed {
                Some(stats) => zstd_file(&name, stats, scanned.file),
                None => core_as_file(manifest, &name).expect("core digests just recorded"),
            };
            manifest.record_file(entry);
            Some(write_manifest(manifest, manifest_path, options)?)
        }
        _ => None,
    };
    core.persist()?;
    if let Some(pending) = manifest_file {
        match pending.persist() {
            Ok(manifest_path) => report.manifest_path = Some(manifest_path),
            Err(e) => {
                // Leave nothing half-done behind: the core goes too.
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        }
    }
    report.path = Some(path.to_path_buf());
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The pipeline into an arbitrary sink. With `options.manifest`, the core's
/// bytes are hashed on their way into the sink (see [`dump_to_path`] for
/// hashing after the release instead).
pub fn dump_into_sink(
    pid: i32,
    sink: &mut dyn Sink,
    options: &DumpOptions,
) -> Result<DumpReport, DumpError> {
    dump_with(pid, sink, options, options.manifest)
}

/// The pipeline; `hash_inline`: hash the core in the write path. A clone
/// given up before anything was written is followed by a dump in stop mode
/// into the same sink, unless `--no-fallback`.
fn dump_with(
    pid: i32,
    sink: &mut dyn Sink,
    options: &DumpOptions,
    hash_inline: bool,
) -> Result<DumpReport, DumpError> {
    match dump_once(pid, sink, options, hash_inline) {
        Err(DumpError::CowAbandoned {
            reason,
            written: false,
            no_fallback: false,
            ..
        }) => dump_once(pid, sink, &in_stop_mode(options, reason), hash_inline),
        other => other,
    }
}

fn dump_once(
    pid: i32,
    sink: &mut dyn Sink,
    options: &DumpOptions,
    hash_inline: bool,
) -> Result<DumpReport, DumpError> {
    let started = Instant::now();
    if let Attach::Unattached { .. } = options.attach {
        if options.watch.is_some() {
            return Err(DumpError::NeedsPtrace {
                what: "--on-signal and --on-exit",
            });
        }
        if let DumpMode::Cow { .. } = options.mode {
            return Err(DumpError::NeedsPtrace { what: "--mode cow" });
        }
    }
    let state_before = info::process_state(pid).map(|c| c as u8).unwrap_or(b'R');
    // Without ptrace, make sure the memory can be read before stopping the
    // target for nothing. (It is opened again once the target is held: a
    // file opened before an exec would show the old, gone memory.)
    if let Attach::Unattached { .. } = options.attach {
        UnattachedFreeze::check_memory_readable(pid)?;
    }
    let (hold, trigger) = match (&options.watch, options.attach) {
        (_, Attach::Unattached { freeze }) => (
            Hold::Unattached(UnattachedFreeze::freeze(
                pid,
                freeze,
                options.freeze_timeout,
                &options.cancel,
            )?),
            None,
        ),
        (None, Attach::Ptrace) => (
            Hold::Attached(FrozenProcess::freeze(
                pid,
                options.freeze_timeout,
                &options.cancel,
            )?),
            None,
        ),
        (Some(watch_for), Attach::Ptrace) => {
            match watch::wait_for_trigger(pid, watch_for, &options.cancel)? {
                WatchOutcome::Triggered(frozen, trigger) => {
                    (Hold::Attached(*frozen), Some(trigger))
                }
                WatchOutcome::Exited => return Err(DumpError::ExitedWithoutSignal { pid }),
            }
        }
    };
    // When every thread had stopped (with --on-signal, when the signal came).
    let captured_at = SystemTime::now();
    let mut memory = MemoryReader::open(pid)?;
    let policy = SelectionPolicy {
        filter: options
            .filter
            .or_else(|| info::coredump_filter(pid))
            .unwrap_or(DEFAULT_FILTER),
        all: options.all,
    };
    let signal = trigger.as_ref().and_then(Trigger::signal);
    let freeze_method = hold.method();
    let progress = |done: u64, total: u64| {
        if let Some(p) = &options.progress {
            p(done, total);
        }
    };
    let mut cow_fallback = options.stop_mode_because.clone();
    let cow_cap = crate::cow::copy_cap(pid, options.cow_max_copy);
    let mut cow_private = 0;
    // In copy-on-write mode only the threads' registers are read before the
    // clone is made; the rest of the snapshot comes after the release.
    let mut cow = None;
    match (options.mode, &hold) {
        (DumpMode::Stop, _) | (_, Hold::Unattached(_)) => {}
        // The trigger's signal or exit goes on when the target is released,
        // which a fatal one ends, and the exit stop is where a clone would
        // have to be made: the process is dumped where the trigger holds it.
        (DumpMode::Cow { .. }, _) if trigger.is_some() => {
            cow_fallback = Some(
                "a trigger holds the process at its signal or exit, and releasing it early would let that go on".to_string(),
            );
        }
        // A stopped target stays stopped either way: no pause to shorten.
        (DumpMode::Cow { .. }, _) if hold.was_stopped() => {
            cow_fallback =
                Some("the target was already stopped, so there is no pause to shorten".to_string());
        }
        (DumpMode::Cow { fallback }, Hold::Attached(frozen)) => {
            let threads =
                collect::capture_threads(frozen, signal).map_err(|e| collect_failed(pid, e))?;
            let prepared = crate::cow::check_budget(pid, cow_cap).and_then(|private| {
                cow_private = private;
                CowCopy::prepare(frozen, policy, &memory, options.freeze_timeout)
            });
            match prepared {
                Ok(copy) => cow = Some((copy, threads)),
                Err(source) if fallback => cow_fallback = Some(source.to_string()),
                Err(source) => return Err(DumpError::Cow { pid, source }),
            }
        }
    }
    let left_stopped = hold.was_stopped();
    // With a clone holding the memory, the target goes free now: its
    // mappings, /proc facts and the manifest (build-ids are read from disk)
    // need not pause it.
    let mut held = Some(hold);
    let released_early = cow.as_ref().and_then(|_| held.take()).map(Hold::release);
    let collected = match (&mut cow, &held) {
        (Some((copy, threads)), _) => copy.mappings().and_then(|mappings| {
            let threads = std::mem::take(threads);
            collect::describe(pid, threads, state_before, policy, mappings, copy)
        }),
        (None, Some(Hold::Attached(frozen))) => {
            collect::collect_with_signal(frozen, state_before, policy, &memory, signal)
        }
        (None, Some(Hold::Unattached(held))) => {
            collect::collect_unattached(held, state_before, policy, &memory)
        }
        (None, None) => unreachable!("the target is released only with a clone"),
    };
    let mut snapshot = collected.map_err(|e| collect_failed(pid, e))?;
    // As a signal's thread leads a kernel core, the thread seen first at
    // its exit leads: gdb opens the core on it. The rest keep their order.
    if let Some(Trigger::Exit(exit)) = &trigger {
        snapshot.threads.sort_by_key(|t| t.tid != exit.tid);
    }
    let cow = cow.map(|(copy, _)| copy);
    if let Some(copy) = &cow {
        for region in &mut snapshot.regions {
            region.read_after_release = copy.read_after_release(region);
        }
    }
    memory.avoid_unsharing(
        snapshot
            .regions
            .iter()
            .map(|r| &r.mapping)
            .filter(|m| !m.shared && m.anonymous_kb > 0 && m.shared_kb > 0)
            .map(|m| (m.start, m.end))
            .collect(),
    );
    // The page map is read from whichever process the memory comes from.
    // Regions copied under the freeze (MADV_DONTFORK ones are not even in
    // the clone) are read in full from that copy.
    match &cow {
        Some(copy) => {
            collect::find_populated(&mut snapshot, copy.child_pid(), crate::cow::needs_preload)
        }
        None => collect::find_populated(&mut snapshot, pid, |_| false),
    }
    // The work since the release overlapped the probe of the target's
    // write rate; whether the copy stays within its cap is decided now,
    // before the first byte is written.
    let mut cow_cost = None;
    if let (Some(copy), DumpMode::Cow { fallback }) = (&cow, options.mode) {
        match copy.probe(cow_cap, cow_private) {
            Ok(cost) => cow_cost = Some(cost),
            Err(reason) => {
                return Err(DumpError::CowAbandoned {
                    pid,
                    reason,
                    written: false,
                    no_fallback: !fallback,
                });
            }
        }
    }
    let mode = if cow.is_some() {
        options.mode
    } else {
        DumpMode::Stop
    };
    let mut warnings = Vec::new();
    if freeze_method != "ptrace" {
        warnings.push(format!(
            "the registers are partial: without ptrace only the stack pointer, program counter and system call arguments of threads stopped in the kernel are known (target held by: {freeze_method})"
        ));
    }
    // The manifest's pre-copy facts go into the core as the CORESNAP note;
    // the sink is wrapped to hash the core and count what each segment got.
    let mut manifest = manifest::build::begin(
        &snapshot,
        &Context {
            captured_at,
            mode: mode_name(mode),
            left_stopped,
            trigger: trigger.as_ref(),
            freeze: freeze_method,
        },
    );
    manifest.capture.cow = cow_cost.map(|cost| manifest::CowCost {
        clone_oom_score_adj: crate::cow::CLONE_OOM_SCORE_ADJ,
        cap_bytes: cost.cap,
        private_bytes: cost.private,
        write_rate_bytes_per_sec: cost.write_rate,
        expected_bytes: cost.expected,
        duplicated_bytes: None,
    });
    manifest.capture.cow_fallback = cow_fallback.clone();
    let note = manifest::note::encode(&manifest);
    let (notes, _, layout) = writer::plan(&snapshot, vec![note]);
    let ranges = snapshot
        .regions
        .iter()
        .filter(|r| r.listed_in_core())
        .zip(&layout.segment_offsets)
        .map(|(r, &offset)| (offset, offset + r.dumped_len()))
        .collect();
    let want = Want::for_core(layout.total_len, options.flat_hash);
    let mut measured = HashingSink::new(sink, hash_inline.then_some(want), ranges);
    let sink: &mut dyn Sink = &mut measured;
    let (written, pause) = match cow {
        Some(copy) => {
            let pause = released_early.unwrap_or_default();
            let written = writer::write_planned(
                &snapshot,
                &notes,
                &layout,
                &copy,
                sink,
                &options.cancel,
                &progress,
            );
            if let Err(WriteError::Memory(MemoryError::ProcessGone { pid: gone })) = &written
                && *gone == copy.child_pid()
            {
                let reason = copy.lost();
                let _ = copy.finish();
                return Err(DumpError::CowAbandoned {
                    pid,
                    reason,
                    written: true,
                    no_fallback: options.mode == DumpMode::Cow { fallback: false },
                });
            }
            cow_cost = Some(copy.cost());
            if let Err(e) = copy.finish() {
                // A target that exited meanwhile has nothing left to clean
                // up: its children, the clone among them, went to the reaper.
                let exited =
                    info::process_state(pid).is_none_or(|state| matches!(state, 'Z' | 'X'));
                if !exited {
                    warnings.push(format!("cleaning up the copy-on-write clone: {e}"));
                }
            }
            (written, pause)
        }
        None => {
            let written = writer::write_planned(
                &snapshot,
                &notes,
                &layout,
                &memory,
                sink,
                &options.cancel,
                &progress,
            );
            let pause = held.take().map(Hold::release).unwrap_or_default();
            (written, pause)
        }
    };
    let stats = match written {
        Ok(stats) => stats,
        Err(WriteError::Memory(MemoryError::ProcessGone { .. })) => {
            return Err(DumpError::TargetExited { pid });
        }
        Err(e) => return Err(e.into()),
    };
    if let (Some(cost), Some(entry)) = (cow_cost, manifest.capture.cow.as_mut()) {
        entry.duplicated_bytes = Some(cost.duplicated);
    }
    // After the release: the hasher may still be catching up on holes.
    let core_digests = measured.finish_hashing();
    manifest.record_outcome(&Outcome {
        pause,
        layout: &layout,
        written: measured.written(),
        unreadable: &stats.unreadable,
        core: core_digests,
    });
    Ok(DumpReport {
        pid,
        path: None,
        threads: snapshot.threads.len(),
        mappings: snapshot.regions.len(),
        mappings_dumped: snapshot
            .regions
            .iter()
            .filter(|r| r.dumped_len() > 0)
            .count(),
        core_len: stats.total_len,
        disk_usage: None,
        bytes_read: stats.bytes_read,
        pause,
        elapsed: started.elapsed(),
        unreadable: stats.unreadable,
        left_stopped,
        mode,
        freeze: freeze_method,
        cow_fallback,
        cow_cost,
        warnings,
        trigger,
        manifest: Some(Box::new(manifest)),
        manifest_path: None,
        compressed: None,
    })
}

/// What a failure to read the snapshot means: a frozen thread leaves its
/// stop only when SIGKILL ends the whole process, and whatever failed then
/// is only a consequence of that.
fn collect_failed(pid: i32, error: CollectError) -> DumpError {
    match error {
        CollectError::Registers {
            errno: nix::errno::Errno::ESRCH,
            ..
        } => DumpError::TargetExited { pid },
        _ if info::process_state(pid).is_none_or(|state| matches!(state, 'Z' | 'X')) => {
            DumpError::TargetExited { pid }
        }
        error => error.into(),
    }
}

/// The manifest's name for a mode.
fn mode_name(mode: DumpMode) -> &'static str {
    match mode {
        DumpMode::Stop => "stop",
        DumpMode::Cow { .. } => "cow",
    }
}
