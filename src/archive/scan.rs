//! One pass over a core file, or a `.zst` of one: the hashes of the core
//! bytes (chunked, and flat when asked for), the flat hashes of a `.zst`
//! file, and the core's headers and notes.
//!
//! Used by `coresnap verify`, and by the dump itself, which hashes the
//! file it wrote this way once the target has been released (hashing while
//! the target is frozen would lengthen the pause; see docs/MANIFEST.md).
//!
//! Holes of a sparse core are found with `SEEK_DATA`/`SEEK_HOLE` and handed
//! to the hasher as lengths, without being read; a `.zst`'s frames of zeros
//! are recognised and not decompressed. With the chunked hashes only, the
//! cost follows the data stored (`crate::sink::hashing`).

use super::elfscan::{self, CoreHeaders, Scan};
use super::reader::SeekableCore;
use crate::cancel::CancelToken;
use crate::sink::hashing::{Digests, StreamHasher, Want};
use nix::unistd::{Whence, lseek};
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;

pub struct Scanned {
    /// Hashes of the core bytes (uncompressed), those asked for.
    pub core: Digests,
    /// Hashes of the file as it is: the same as `core` for a plain core,
    /// the flat hashes of the compressed bytes for a `.zst`.
    pub file: Digests,
    /// The core's first bytes: headers and notes.
    pub prefix: Vec<u8>,
    /// `None`: the core ended before its headers.
    pub headers: Option<Result<CoreHeaders, String>>,
    /// The compressed stream could not be decompressed to its end.
    pub decode_error: Option<io::Error>,
}

#[derive(Debug)]
pub enum ScanError {
    Io(io::Error),
    Interrupted(i32),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Io(e) => write!(f, "{e}"),
            ScanError::Interrupted(signal) => write!(f, "interrupted by signal {signal}"),
        }
    }
}

/// Collects the core's leading bytes until its headers and notes parse.
struct Prefix {
    bytes: Vec<u8>,
    want: usize,
    headers: Option<Result<CoreHeaders, String>>,
}

impl Prefix {
    fn new() -> Prefix {
        Prefix {
            bytes: Vec::new(),
            want: 4096,
            headers: None,
        }
    }

    fn wants_more(&self) -> bool {
        self.headers.is_none()
    }

    fn take(&mut self, data: &[u8]) {
        let mut data = data;
        while self.headers.is_none() && !data.is_empty() {
            let n = self.want.saturating_sub(self.bytes.len()).min(data.len());
            // Exactly what is asked for: the headers' own size may be up to
            // elfscan's limit, and doubling would reserve twice that.
            if self.bytes.capacity() < self.want {
                self.bytes.reserve_exact(self.want - self.bytes.len());
            }
            self.bytes.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.bytes.len() < self.want {
                return;
            }
            match elfscan::scan(&self.bytes) {
                Scan::NeedMore(n) => self.want = n.max(self.bytes.len() + 1),
                Scan::Done(headers) => self.headers = Some(Ok(headers)),
                Scan::Invalid(e) => self.headers = Some(Err(e)),
            }
        }
    }

    fn take_zeros(&mut self, mut n: u64) {
        let zeros = [0u8; 4096];
        while self.wants_more() && n > 0 {
            let k = n.min(zeros.len() as u64) as usize;
            self.take(&zeros[..k]);
            n -= k as u64;
        }
    }

    fn finish(&mut self) {
        if self.headers.is_none() && !self.bytes.is_empty() {
            match elfscan::scan(&self.bytes) {
                Scan::Done(headers) => self.headers = Some(Ok(headers)),
                Scan::Invalid(e) => self.headers = Some(Err(e)),
                Scan::NeedMore(_) => {}
            }
        }
    }
}

const BUF: usize = 1 << 20;

fn check_cancel(cancel: &CancelToken) -> Result<(), ScanError> {
    match cancel.signal() {
        Some(signal) => Err(ScanError::Interrupted(signal)),
        None => Ok(()),
    }
}

/// Where a plain core's data is.
#[derive(Clone, Copy)]
pub enum DataMap<'a> {
    /// Ask the file system (`SEEK_DATA`/`SEEK_HOLE`): for any core.
    FileSystem,
    /// The ranges its writer wrote, sorted and apart
    /// ([`crate::sink::SparseFile::written`]): every other byte is a hole.
    Written(&'a [Range<u64>]),
}

impl DataMap<'_> {
    /// Next data offset at or after `from` (`None`: only a hole up to the
    /// end).
    fn next_data(self, file: &File, from: u64, len: u64) -> io::Result<Option<u64>> {
        match self {
            DataMap::Written(ranges) => {
                let i = ranges.partition_point(|r| r.end <= from);
                Ok(ranges.get(i).map(|r| r.start.max(from).min(len)))
            }
            DataMap::FileSystem => match lseek(file, from as i64, Whence::SeekData) {
                Ok(at) => Ok(Some((at as u64).min(len))),
                Err(nix::errno::Errno::ENXIO) => Ok(None),
                // No SEEK_DATA on this filesystem: everything is data.
                Err(nix::errno::Errno::EINVAL) => Ok(Some(from)),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The end of the data that starts at `from`.
    fn next_hole(self, file: &File, from: u64, len: u64) -> io::Result<u64> {
        match self {
            DataMap::Written(ranges) => {
                let i = ranges.partition_point(|r| r.end <= from);
                Ok(ranges.get(i).map_or(len, |r| r.end).min(len))
            }
            DataMap::FileSystem => match lseek(file, from as i64, Whence::SeekHole) {
                Ok(at) => Ok((at as u64).min(len)),
                Err(nix::errno::Errno::EINVAL) => Ok(len),
                Err(e) => Err(e.into()),
            },
        }
    }
}

/// Scans a plain core, computing the hashes in `want` (the file is the
/// core).
pub fn scan_elf(
    file: &File,
    cancel: &CancelToken,
    want: Want,
    data: DataMap,
) -> Result<Scanned, ScanError> {
    let len = file.metadata().map_err(ScanError::Io)?.len();
    // Reads are sized to the data extents already; kernel readahead would
    // fill page after page of the holes around each small extent (measured
    // here: 1.8 s instead of 0.2 s for the 1031 extents of a 4 GiB sparse
    // core). Advice only; nothing depends on it succeeding.
    let _ = nix::fcntl::posix_fadvise(
        file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
    );
    let mut hasher = StreamHasher::new(want);
    let mut prefix = Prefix::new();
    let mut buf = vec![0u8; BUF];
    let mut pos = 0u64;
    while pos < len {
        check_cancel(cancel)?;
        let data_at = data
            .next_data(file, pos, len)
            .map_err(ScanError::Io)?
            .unwrap_or(len);
        if data_at > pos {
            hasher.zeros(data_at - pos);
            prefix.take_zeros(data_at - pos);
            pos = data_at;
            continue;
        }
        let end = data
            .next_hole(file, pos, len)
            .map_err(ScanError::Io)?
            .max(pos + 1)
            .min(len);
        while pos < end {
            check_cancel(cancel)?;
            let want = (end - pos).min(BUF as u64) as usize;
            let n = file.read_at(&mut buf[..want], pos).map_err(ScanError::Io)?;
            if n == 0 {
                // Shrunk while being read: what is missing is missing.
                return Err(ScanError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was read",
                )));
            }
            hasher.update(&buf[..n]);
            prefix.take(&buf[..n]);
            pos += n as u64;
        }
    }
    prefix.finish();
    let digests = hasher.finish();
    Ok(Scanned {
        core: digests,
        file: digests,
        prefix: prefix.bytes,
        headers: prefix.headers,
        decode_error: None,
    })
}

/// A reader that hashes what it reads into a hasher it borrows.
struct HashingRead<'a, R: Read> {
    inner: R,
    hasher: &'a mut StreamHasher,
}

impl<R: Read> Read for HashingRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A reader that hashes what it reads.
struct HashRead<R: Read> {
    inner: R,
    hasher: StreamHasher,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Scans a `.zst`: the flat hashes of the file, the hashes in `want` of the
/// core bytes, checking every frame's checksum. A seekable file is read frame by frame (frames of
/// zeros are recognised and hashed as zeros without decompressing them);
/// anything else, a damaged seek table included, is decompressed as one
/// stream.
pub fn scan_zstd(file: &File, cancel: &CancelToken, want: Want) -> Result<Scanned, ScanError> {
    let seekable = file
        .try_clone()
        .ok()
        .and_then(|f| SeekableCore::from_file(f, std::path::Path::new("the file")).ok());
    match seekable {
        Some(core) => scan_frames(&core, file, cancel, want),
        None => scan_stream(file, cancel, want),
    }
}

fn scan_frames(
    core: &SeekableCore,
    file: &File,
    cancel: &CancelToken,
    want: Want,
) -> Result<Scanned, ScanError> {
    let mut file_hasher = StreamHasher::new(Want::FLAT);
    let mut core_hasher = StreamHasher::new(want);
    let mut prefix = Prefix::new();
    let mut decompressor = zstd::bulk::Decompressor::new().map_err(ScanError::Io)?;
    let mut decode_error = None;
    let mut data = Vec::new();
    let as_io = |e: super::ArchiveError| match e {
        super::ArchiveError::Read { source, .. } => source,
        other => io::Error::new(
            io::ErrorKind::InvalidData,
            other.to_string().replacen("the file: ", "", 1),
        ),
    };
    let mut compressed = FrameBytes {
        file,
        block: Vec::new(),
        block_start: 0,
    };
    for index in 0..core.frames() {
        check_cancel(cancel)?;
        if !core.frame_is_small(index) {
            // Streamed: never held whole, whatever the seek table claims.
            let mut raw = HashingRead {
                inner: core
                    .compressed_reader(index)
                    .map_err(|e| ScanError::Io(as_io(e)))?,
                hasher: &mut file_hasher,
            };
            if decode_error.is_none() {
                let streamed = core.stream_frame(index, &mut raw, |_, piece| {
                    core_hasher.update(piece);
                    prefix.take(piece);
                    check_cancel(cancel).map_err(|_| super::ArchiveError::Interrupted {
                        signal: cancel.signal().unwrap_or(0),
                    })
                });
                match streamed {
                    Ok(_) => {}
                    Err(super::ArchiveError::Interrupted { signal }) => {
                        return Err(ScanError::Interrupted(signal));
                    }
                    Err(e) => decode_error = Some(as_io(e)),
                }
            }
            // The file's hash covers the bytes the decoder did not read.
            io::copy(&mut raw, &mut io::sink()).map_err(ScanError::Io)?;
            continue;
        }
        let (start, len) = core
            .compressed_range(index)
            .map_err(|e| ScanError::Io(as_io(e)))?;
        let raw = compressed.get(start, len).map_err(ScanError::Io)?;
        file_hasher.update(raw);
        if decode_error.is_some() {
            continue;
        }
        let (_, len) = core.frame_range(index);
        if super::reader::rle_zero_frame_len(raw) == Some(len) {
            core_hasher.zeros(len);
            prefix.take_zeros(len);
            continue;
        }
        match core.decode_frame(index, raw, &mut decompressor, &mut data) {
            Ok(()) => {
                core_hasher.update(&data);
                prefix.take(&data);
            }
            Err(e) => decode_error = Some(as_io(e)),
        }
    }
    let mut table = vec![0u8; core.seek_table_len() as usize];
    file.read_exact_at(&mut table, core.file_len() - core.seek_table_len())
        .map_err(ScanError::Io)?;
    file_hasher.update(&table);
    prefix.finish();
    Ok(Scanned {
        core: core_hasher.finish(),
        file: file_hasher.finish(),
        prefix: prefix.bytes,
        headers: prefix.headers,
        decode_error,
    })
}

/// The frames' compressed bytes, which lie one after the other, read in
/// blocks of [`BUF`] or more: one read per frame would cost a system call
/// for each of the 262,144 frames of zeros of a 1 TiB core.
struct FrameBytes<'a> {
    file: &'a File,
    block: Vec<u8>,
    /// File offset of `block[0]`.
    block_start: u64,
}

impl FrameBytes<'_> {
    /// The `len` bytes at `start`.
    fn get(&mut self, start: u64, len: u64) -> io::Result<&[u8]> {
        let block_end = self.block_start + self.block.len() as u64;
        if start < self.block_start || start + len > block_end {
            self.block.resize(len.max(BUF as u64) as usize, 0);
            let mut filled = 0;
            while filled < self.block.len() {
                match self
                    .file
                    .read_at(&mut self.block[filled..], start + filled as u64)
                {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.block.truncate(filled);
            self.block_start = start;
            if (filled as u64) < len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ends inside a frame the seek table lists",
                ));
            }
        }
        let from = (start - self.block_start) as usize;
        Ok(&self.block[from..from + len as usize])
    }
}

fn scan_stream(file: &File, cancel: &CancelToken, want: Want) -> Result<Scanned, ScanError> {
    let reader = ReadAt { file, pos: 0 };
    let raw = HashRead {
        inner: reader,
        hasher: StreamHasher::new(Want::FLAT),
    };
    let mut decoder = zstd::stream::read::Decoder::new(raw).map_err(ScanError::Io)?;
    let mut core = StreamHasher::new(want);
    let mut prefix = Prefix::new();
    let mut buf = vec![0u8; BUF];
    let mut decode_error = None;
    loop {
        check_cancel(cancel)?;
        match read_full(&mut decoder, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                core.update(&buf[..n]);
                prefix.take(&buf[..n]);
            }
            Err(e) => {
                decode_error = Some(e);
                break;
            }
        }
    }
    prefix.finish();
    // Hash whatever the decoder did not read (after damage, or trailing).
    let mut raw = decoder.finish().into_inner();
    loop {
        check_cancel(cancel)?;
        match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ScanError::Io(e)),
        }
    }
    Ok(Scanned {
        core: core.finish(),
        file: raw.hasher.finish(),
        prefix: prefix.bytes,
        headers: prefix.headers,
        decode_error,
    })
}

/// Sequential reads with positional I/O (leaves the file offset alone).
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{Sink, SparseFile};

    #[test]
    fn holes_hash_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = File::create(&path).unwrap();
        let mut sink = SparseFile::new(&file);
        sink.write_at(0, b"\x7fELF").unwrap();
        sink.write_at(8 << 20, &[5u8; 10000]).unwrap();
        sink.finish(20 << 20).unwrap();
        let written = sink.written().to_vec();
        assert_eq!(written, [0..4, (8 << 20)..((8 << 20) + 10000)]);
        let file = File::open(&path).unwrap();
        let scanned = scan_elf(
            &file,
            &CancelToken::new(),
            Want::chunked(true),
            DataMap::FileSystem,
        )
        .unwrap();
        // The writer's own record of its data gives the same hashes as the
        // file system's.
        let from_record = scan_elf(
            &file,
            &CancelToken::new(),
            Want::chunked(true),
            DataMap::Written(&written),
        )
        .unwrap();
        assert_eq!(from_record.core, scanned.core);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(scanned.core.len, 20 << 20);
        assert_eq!(
            scanned.core.flat.unwrap().blake3,
            *blake3::hash(&bytes).as_bytes()
        );
        let mut read_hasher = StreamHasher::new(Want::chunked(false));
        read_hasher.update(&bytes);
        assert_eq!(scanned.core.chunked, read_hasher.finish().chunked);
        assert!(
            matches!(scanned.headers, Some(Err(_))),
            "not a 64-bit ELF header: invalid, not missing"
        );
    }
}
