//! Where the core's bytes go. The writer hands over byte runs in increasing
//! file offset order and leaves gaps where the core holds only zeros; a
//! sink turns gaps into holes (a regular file) or into zero bytes (a pipe).

pub mod hashing;
pub mod zstd_seekable;

pub use hashing::{Digests, HashingSink, HashingWriter};
pub use zstd_seekable::{CompressOptions, ZstdSeekableSink};

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

pub trait Sink {
    /// Writes `data` at `offset`, which is never below the end of the
    /// previous write.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Completes the file at `total_len` bytes (the tail may be a gap).
    fn finish(&mut self, total_len: u64) -> io::Result<()>;
}

/// A regular file written with positional writes: gaps stay holes, so a
/// sparse process gives a sparse core.
///
/// Page-aligned runs of memory go through a second, `O_DIRECT` descriptor
/// of the same file: on the machines measured (docs/PERFORMANCE.md) that
/// writes a large core several times faster than through the page cache,
/// and it does not evict the page cache of the production machine being
/// debugged. Anything else (the headers, or a file system without
/// `O_DIRECT`) uses the ordinary descriptor.
pub struct SparseFile<'a> {
    file: &'a File,
    direct: Option<File>,
}

impl<'a> SparseFile<'a> {
    pub fn new(file: &'a File) -> SparseFile<'a> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .ok();
        SparseFile { file, direct }
    }

    /// Plain buffered writes only.
    pub fn buffered(file: &'a File) -> SparseFile<'a> {
        SparseFile { file, direct: None }
    }
}

fn page_aligned(offset: u64, data: &[u8]) -> bool {
    const ALIGN: usize = 4096;
    (offset as usize).is_multiple_of(ALIGN)
        && data.len().is_multiple_of(ALIGN)
        && (data.as_ptr() as usize).is_multiple_of(ALIGN)
}

impl Sink for SparseFile<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if let Some(direct) = &self.direct
            && page_aligned(offset, data)
        {
            match direct.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // The file system refuses direct I/O after all: buffered it is.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, offset)
    }

    fn finish(&mut self, total_len: u64) -> io::Result<()> {
        self.file.set_len(total_len)
    }
}

/// Any `Write` (a pipe, a socket, stdout): gaps are written as zeros.
pub struct Stream<W: Write> {
    inner: W,
    position: u64,
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl<W: Write> Stream<W> {
    pub fn new(inner: W) -> Stream<W> {
        Stream { inner, position: 0 }
    }

    fn fill_zeros_to(&mut self, offset: u64) -> io::Result<()> {
        while self.position < offset {
            let n = ((offset - self.position) as usize).min(ZEROS.len());
            self.inner.write_all(&ZEROS[..n])?;
            self.position += n as u64;
        }
        Ok(())
    }
}

impl<W: Write> Sink for Stream<W> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset < self.position {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "stream sink cannot seek backwards",
            ));
        }
        self.fill_zeros_to(offset)?;
        self.inner.write_all(data)?;
        self.position += data.len() as u64;
        Ok(())
    }

    fn finish(&mut self, total_len: u64) -> io::Result<()> {
        self.fill_zeros_to(total_len)?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn stream_fills_gaps_with_zeros() {
        let mut out = Vec::new();
        let mut sink = Stream::new(&mut out);
        sink.write_at(0, b"ab").unwrap();
        sink.write_at(5, b"cd").unwrap();
        assert!(sink.write_at(1, b"x").is_err());
        sink.finish(10).unwrap();
        assert_eq!(out, b"ab\0\0\0cd\0\0\0");
    }

    #[test]
    fn sparse_file_leaves_holes() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("core")).unwrap();
        let mut sink = SparseFile::new(&file);
        // An aligned page (O_DIRECT where the file system has it), then
        // unaligned data through the page cache, then a far page.
        let mut page = crate::elf::writer::PageBuffer::new(1);
        page.bytes_mut().fill(7);
        sink.write_at(0, page.bytes()).unwrap();
        sink.write_at(4096, &[1; 4096]).unwrap();
        sink.write_at(64 << 20, &[2; 100]).unwrap();
        sink.finish((64 << 20) + 8192).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), (64 << 20) + 8192);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let back = std::fs::read(dir.path().join("core")).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 7));
        assert!(back[4096..8192].iter().all(|&b| b == 1));
        assert!(back[64 << 20..(64 << 20) + 100].iter().all(|&b| b == 2));
        assert!(back[8192..64 << 20].iter().all(|&b| b == 0));
    }
}
