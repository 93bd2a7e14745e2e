//! The whole pipeline for one process: freeze, collect the snapshot, write
//! the core into a sink while the target stays frozen, release.

use crate::cancel::CancelToken;
use crate::cow::CowCopy;
use crate::elf::writer::{self, WriteError};
use crate::process::freeze::{FreezeError, FrozenProcess};
use crate::process::info;
use crate::process::memory::{MemoryError, MemoryReader, Unreadable};
use crate::sink::{Sink, SparseFile, Stream};
use crate::snapshot::collect::{self, CollectError};
use crate::snapshot::select::{DEFAULT_FILTER, SelectionPolicy};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
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
    /// Why `--mode cow` fell back to stop mode, if it did.
    pub cow_fallback: Option<String>,
    /// Problems that did not stop the dump (e.g. cleaning up the clone).
    pub warnings: Vec<String>,
}

#[derive(Debug, Error)]
pub enum DumpError {
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error("--mode cow is not possible for process {pid}: {source}; nothing was changed in it (drop --no-fallback to dump it in stop mode)")]
    Cow { pid: i32, source: crate::cow::CowError },
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("{0}")]
    Write(#[from] WriteError),
    #[error("{path} already exists; remove it or pass --force to replace it")]
    OutputExists { path: PathBuf },
    #[error("cannot create the core in {dir}: {source}")]
    CreateOutput {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    OutputIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("process {pid} exited during the dump; no core was written")]
    TargetExited { pid: i32 },
}

impl DumpError {
    /// The signal that interrupted the dump, if that is what ended it.
    pub fn interrupted_by(&self) -> Option<i32> {
        match self {
            DumpError::Freeze(FreezeError::Interrupted { signal })
            | DumpError::Write(WriteError::Interrupted { signal }) => Some(*signal),
            _ => None,
        }
    }
}

/// Dumps `pid` into any writer (a pipe, stdout, a socket); zero pages are
/// written out since a stream cannot have holes.
pub fn dump_to_writer<W: Write>(
    pid: i32,
    out: W,
    options: &DumpOptions,
) -> Result<DumpReport, DumpError> {
    let mut sink = Stream::new(out);
    dump_into_sink(pid, &mut sink, options)
}

/// Dumps `pid` to `path`, a sparse file. The core is written under a
/// temporary name in the same directory and renamed when complete, so a
/// failed or interrupted dump leaves no file behind.
pub fn dump_to_path(pid: i32, path: &Path, options: &DumpOptions) -> Result<DumpReport, DumpError> {
    if !options.overwrite && path.exists() {
        return Err(DumpError::OutputExists {
            path: path.to_path_buf(),
        });
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "core".into());
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|source| DumpError::CreateOutput {
            dir: dir.to_path_buf(),
            source,
        })?;
    let mut report = {
        let mut sink = SparseFile::new(temp.as_file());
        dump_into_sink(pid, &mut sink, options)?
    };
    let io_err = |source| DumpError::OutputIo {
        path: path.to_path_buf(),
        source,
    };
    let disk = temp.as_file().metadata().map_err(io_err)?.blocks() * 512;
    let persisted = if options.overwrite {
        temp.persist(path)
    } else {
        temp.persist_noclobber(path)
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            DumpError::OutputExists {
                path: path.to_path_buf(),
            }
        } else {
            DumpError::OutputIo {
                path: path.to_path_buf(),
                source: e.error,
            }
        }
    })?;
    report.path = Some(path.to_path_buf());
    report.disk_usage = Some(disk);
    Ok(report)
}

/// The pipeline into an arbitrary sink.
pub fn dump_into_sink(
    pid: i32,
    sink: &mut dyn Sink,
    options: &DumpOptions,
) -> Result<DumpReport, DumpError> {
    let started = Instant::now();
    let state_before = info::process_state(pid).map(|c| c as u8).unwrap_or(b'R');
    let frozen = FrozenProcess::freeze(pid, options.freeze_timeout, &options.cancel)?;
    let memory = MemoryReader::open(pid)?;
    let policy = SelectionPolicy {
        filter: options
            .filter
            .or_else(|| info::coredump_filter(pid))
            .unwrap_or(DEFAULT_FILTER),
        all: options.all,
    };
    let snapshot = collect::collect(&frozen, state_before, policy, &memory)?;
    let progress = |done: u64, total: u64| {
        if let Some(p) = &options.progress {
            p(done, total);
        }
    };
    let mut cow_fallback = None;
    let cow = match options.mode {
        DumpMode::Stop => None,
        // A stopped target stays stopped either way: no pause to shorten.
        DumpMode::Cow { .. } if frozen.was_stopped() => {
            cow_fallback = Some("the target was already stopped, so there is no pause to shorten".to_string());
            None
        }
        DumpMode::Cow { fallback } => match CowCopy::prepare(&frozen, &snapshot, &memory, options.freeze_timeout) {
            Ok(copy) => Some(copy),
            Err(source) if fallback => {
                cow_fallback = Some(source.to_string());
                None
            }
            Err(source) => return Err(DumpError::Cow { pid, source }),
        },
    };
    let left_stopped = frozen.was_stopped();
    let mode = if cow.is_some() { options.mode } else { DumpMode::Stop };
    let mut warnings = Vec::new();
    let (written, pause) = match cow {
        Some(copy) => {
            let pause = frozen.release();
            let written = writer::write_core(&snapshot, Vec::new(), &copy, sink, &options.cancel, &progress);
            if let Err(e) = copy.finish() {
                warnings.push(format!("cleaning up the copy-on-write clone: {e}"));
            }
            (written, pause)
        }
        None => {
            let written = writer::write_core(&snapshot, Vec::new(), &memory, sink, &options.cancel, &progress);
            (written, frozen.release())
        }
    };
    let stats = match written {
        Ok(stats) => stats,
        Err(WriteError::Memory(MemoryError::ProcessGone { .. })) => {
            return Err(DumpError::TargetExited { pid });
        }
        Err(e) => return Err(e.into()),
    };
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
        cow_fallback,
        warnings,
    })
}
