//! `coresnap unpack`: restores a `.zst` core as a sparse file, byte for byte
//! what `zstd -d` gives, with holes wherever a whole page is zeros.
//!
//! A seekable file is restored frame by frame on several threads, each
//! writing its frame's non-zero pages at their offsets; a plain zstd stream
//! (no seek table) is decompressed in order. The output is written under a
//! temporary name next to its final one and renamed when complete.

use super::ArchiveError;
use super::reader::SeekableCore;
use crate::cancel::CancelToken;
use crate::sink::nonzero_page_runs;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct UnpackReport {
    pub path: PathBuf,
    /// The core's length.
    pub len: u64,
    /// Bytes the core takes on disk.
    pub disk_usage: u64,
    /// Frames decompressed (0: the file had no seek table).
    pub frames: u32,
    pub elapsed: Duration,
}

/// The default output name: `FILE` without `.zst`.
pub fn default_output(input: &Path) -> PathBuf {
    match input.to_str().and_then(|s| s.strip_suffix(".zst")) {
        Some(stem) if !stem.is_empty() => PathBuf::from(stem),
        _ => {
            let mut name = input.as_os_str().to_owned();
            name.push(".core");
            PathBuf::from(name)
        }
    }
}

/// Restores `input` into `output` with `jobs` threads (0: one per CPU).
pub fn unpack(
    input: &Path,
    output: &Path,
    overwrite: bool,
    jobs: usize,
    cancel: &CancelToken,
) -> Result<UnpackReport, ArchiveError> {
    let started = Instant::now();
    if !overwrite && std::fs::symlink_metadata(output).is_ok() {
        return Err(ArchiveError::OutputExists {
            path: output.to_path_buf(),
        });
    }
    let write_err = |source| ArchiveError::Write {
        path: output.to_path_buf(),
        source,
    };
    let dir = crate::output::parent_dir(output);
    let temp = PendingOutput::create(dir, output).map_err(write_err)?;
    let (len, frames) = match SeekableCore::open(input) {
        Ok(core) => (
            unpack_frames(&core, temp.file(), jobs, cancel, output)?,
            core.frames(),
        ),
        Err(ArchiveError::Corrupt { what, .. }) if what.contains("no seek table") => {
            (unpack_stream(input, temp.file(), cancel, output)?, 0)
        }
        Err(e) => return Err(e),
    };
    temp.file().set_len(len).map_err(write_err)?;
    let disk_usage = temp.file().metadata().map_err(write_err)?.blocks() * 512;
    temp.persist(output, overwrite).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            ArchiveError::OutputExists {
                path: output.to_path_buf(),
            }
        } else {
            ArchiveError::Write {
                path: output.to_path_buf(),
                source: error,
            }
        }
    })?;
    Ok(UnpackReport {
        path: output.to_path_buf(),
        len,
        disk_usage,
        frames,
        elapsed: started.elapsed(),
    })
}

/// The core being restored: an unnamed file (`O_TMPFILE`) in the output's
/// directory, given its name only once complete, so that nothing is left
/// behind however unpack ends (an error, a signal, the forced exit after
/// one, SIGKILL). Where the file system has no `O_TMPFILE`, a
/// `.NAME.XXXXXX.partial` file, removed on every path coresnap survives,
/// the forced exit after a signal included.
enum PendingOutput {
    Unnamed(File),
    Named(tempfile::NamedTempFile, crate::cancel::RemoveOnForcedExit),
}

impl PendingOutput {
    fn create(dir: &Path, output: &Path) -> std::io::Result<PendingOutput> {
        use std::os::unix::fs::OpenOptionsExt;
        let unnamed = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir);
        match unnamed {
            Ok(file) => Ok(PendingOutput::Unnamed(file)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EISDIR | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                ) =>
            {
                let temp = tempfile::Builder::new()
                    .prefix(&crate::output::temp_name(output))
                    .suffix(".partial")
                    .tempfile_in(dir)?;
                let guard = crate::cancel::RemoveOnForcedExit::new(temp.path());
                Ok(PendingOutput::Named(temp, guard))
            }
            Err(e) => Err(e),
        }
    }

    fn file(&self) -> &File {
        match self {
            PendingOutput::Unnamed(file) => file,
            PendingOutput::Named(temp, _) => temp.as_file(),
        }
    }

    /// Names the complete file `output` (replacing a file there only if
    /// `overwrite`).
    fn persist(self, output: &Path, overwrite: bool) -> std::io::Result<()> {
        match self {
            PendingOutput::Named(temp, _guard) if overwrite => {
                temp.persist(output).map(drop).map_err(|e| e.error)
            }
            PendingOutput::Named(temp, _guard) => temp
                .persist_noclobber(output)
                .map(drop)
                .map_err(|e| e.error),
            PendingOutput::Unnamed(file) => crate::output::link_unnamed(&file, output, overwrite),
        }
    }
}

/// Writes the non-zero pages of `data` (which belongs at `offset`, a page
/// multiple) into `out`.
fn write_sparse(out: &File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    for run in nonzero_page_runs(data) {
        out.write_all_at(&data[run.clone()], offset + run.start as u64)?;
    }
    Ok(())
}

fn unpack_frames(
    core: &SeekableCore,
    out: &File,
    jobs: usize,
    cancel: &CancelToken,
    output: &Path,
) -> Result<u64, ArchiveError> {
    let jobs = if jobs > 0 {
        jobs
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let next = AtomicU32::new(0);
    let failure: Mutex<Option<ArchiveError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(core.frames().max(1) as usize) {
            scope.spawn(|| {
                let mut decompressor = match zstd::bulk::Decompressor::new() {
                    Ok(d) => d,
                    Err(source) => {
                        failure
                            .lock()
                            .expect("not poisoned")
                            .get_or_insert(ArchiveError::Write {
                                path: output.to_path_buf(),
                                source,
                            });
                        return;
                    }
                };
                let mut data = Vec::new();
                loop {
                    if failure.lock().expect("not poisoned").is_some() {
                        return;
                    }
                    if let Some(signal) = cancel.signal() {
                        failure
                            .lock()
                            .expect("not poisoned")
                            .get_or_insert(ArchiveError::Interrupted { signal });
                        return;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= core.frames() {
                        return;
                    }
                    let (start, len) = core.frame_range(index);
                    let write_err = |source| ArchiveError::Write {
                        path: output.to_path_buf(),
                        source,
                    };
                    let result = if core.frame_is_small(index) {
                        core.raw_frame(index).and_then(|raw| {
                            if super::reader::rle_zero_frame_len(&raw) == Some(len) {
                                return Ok(()); // a hole
                            }
                            core.decode_frame(index, &raw, &mut decompressor, &mut data)?;
                            write_sparse(out, start, &data).map_err(write_err)
                        })
                    } else {
                        // Never held whole, whatever the seek table claims.
                        core.compressed_reader(index)
                            .and_then(|input| {
                                core.stream_frame(index, input, |at, piece| {
                                    if let Some(signal) = cancel.signal() {
                                        return Err(ArchiveError::Interrupted { signal });
                                    }
                                    write_sparse(out, start + at, piece).map_err(write_err)
                                })
                            })
                            .map(drop)
                    };
                    if let Err(e) = result {
                        failure.lock().expect("not poisoned").get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failure.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(core.len()),
    }
}

fn unpack_stream(
    input: &Path,
    out: &File,
    cancel: &CancelToken,
    output: &Path,
) -> Result<u64, ArchiveError> {
    let read_err = |source| ArchiveError::Read {
        path: input.to_path_buf(),
        source,
    };
    let file = File::open(input).map_err(read_err)?;
    let mut decoder = zstd::stream::read::Decoder::new(file).map_err(read_err)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    loop {
        if let Some(signal) = cancel.signal() {
            return Err(ArchiveError::Interrupted { signal });
        }
        // Fill whole buffers so that pages stay aligned to the file.
        let mut filled = 0;
        while filled < buf.len() {
            match decoder.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ArchiveError::Corrupt {
                        path: input.to_path_buf(),
                        what: format!("after {offset} bytes: {e}"),
                    });
                }
            }
        }
        if filled == 0 {
            return Ok(offset);
        }
        write_sparse(out, offset, &buf[..filled]).map_err(|source| ArchiveError::Write {
            path: output.to_path_buf(),
            source,
        })?;
        offset += filled as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Sink;
    use crate::sink::zstd_seekable::{CompressOptions, FRAME_LEN, ZstdSeekableSink};

    #[test]
    fn seekable_and_plain_streams_restore_sparse_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = vec![0u8; 3 * FRAME_LEN + 5000];
        expected[10] = 1;
        expected[FRAME_LEN + 8191] = 2;
        expected[3 * FRAME_LEN + 4999] = 3;
        let mut sink =
            ZstdSeekableSink::new(Vec::new(), CompressOptions { level: 1, jobs: 2 }).unwrap();
        sink.write_at(0, &expected).unwrap();
        sink.finish(expected.len() as u64).unwrap();
        let (seekable, _) = sink.complete().unwrap();
        let plain = zstd::encode_all(&expected[..], 1).unwrap();
        for (name, bytes) in [("s.zst", seekable), ("p.zst", plain)] {
            let input = dir.path().join(name);
            std::fs::write(&input, bytes).unwrap();
            let output = default_output(&input);
            let report = unpack(&input, &output, false, 0, &CancelToken::new()).unwrap();
            assert_eq!(std::fs::read(&output).unwrap(), expected, "{name}");
            assert!(
                report.disk_usage <= 4 * 4096 * 2,
                "{name}: {} bytes on disk",
                report.disk_usage
            );
            assert!(matches!(
                unpack(&input, &output, false, 0, &CancelToken::new()),
                Err(ArchiveError::OutputExists { .. })
            ));
        }
    }
}
