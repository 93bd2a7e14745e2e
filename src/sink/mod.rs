//! Where the core's bytes go. The writer hands over byte runs in increasing
//! file offset order and leaves gaps where the core holds only zeros; a
//! sink turns gaps into holes (a regular file) or into zero bytes (a pipe).

mod chunk_workers;
pub mod hashing;
pub mod zstd_seekable;

pub use hashing::{Digests, HashingSink, HashingWriter};
pub use zstd_seekable::{CompressOptions, ZstdSeekableSink};

use crate::elf::layout::PAGE_SIZE;
use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// The byte ranges of `data` made of pages that are not all zeros, merged
/// where they touch (the last page may be short): what a sparse output
/// writes; the zero pages in between become holes.
pub fn nonzero_page_runs(data: &[u8]) -> Vec<Range<usize>> {
    let page = PAGE_SIZE as usize;
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (index, chunk) in data.chunks(page).enumerate() {
        if is_zero(chunk) {
            continue;
        }
        let start = index * page;
        let end = start + chunk.len();
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => runs.push(start..end),
        }
    }
    runs
}

/// OR-folds 8 bytes at a time; the compiler vectorises it.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let acc = words.by_ref().fold(0u64, |a, w| {
        a | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
    });
    acc == 0 && words.remainder().iter().all(|&b| b == 0)
}

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
/// Writes go through the page cache, as gcore's and the kernel's do. An
/// `O_DIRECT` path was tried and dropped: it runs at the disk's speed,
/// between two and three times slower here (docs/PERFORMANCE.md).
pub struct SparseFile<'a> {
    file: &'a File,
    written: Vec<Range<u64>>,
}

impl<'a> SparseFile<'a> {
    /// `file` must be new and empty: every byte this sink does not write is
    /// taken to be a hole (see [`SparseFile::written`]).
    pub fn new(file: &'a File) -> SparseFile<'a> {
        SparseFile {
            file,
            written: Vec::new(),
        }
    }

    /// The byte ranges written, in order, merged where they touch; every
    /// other byte of the file is zero. Reading the file back for its hashes
    /// then needs no `SEEK_DATA`, which some file systems (9p, several
    /// network file systems) answer with "all of it is data".
    pub fn written(&self) -> &[Range<u64>] {
        &self.written
    }

    /// [`SparseFile::written`], taken when the writing is done.
    pub fn into_written(self) -> Vec<Range<u64>> {
        self.written
    }
}

impl Sink for SparseFile<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        let end = offset + data.len() as u64;
        match self.written.last_mut() {
            Some(last) if last.end == offset => last.end = end,
            _ if data.is_empty() => {}
            _ => self.written.push(offset..end),
        }
        Ok(())
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

    #[test]
    fn finds_the_runs_of_nonzero_pages() {
        let mut data = vec![0u8; 5 * 4096 + 100];
        data[4096 + 7] = 1;
        data[2 * 4096] = 2;
        data[5 * 4096 + 99] = 3;
        assert_eq!(
            nonzero_page_runs(&data),
            vec![4096..3 * 4096, 5 * 4096..5 * 4096 + 100]
        );
        assert!(nonzero_page_runs(&[0; 3 * 4096]).is_empty());
        assert!(is_zero(&[0; 13]) && !is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }
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
        sink.write_at(0, &[1; 4096]).unwrap();
        sink.write_at(64 << 20, &[2; 100]).unwrap();
        sink.finish((64 << 20) + 8192).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), (64 << 20) + 8192);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let back = std::fs::read(dir.path().join("core")).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 1));
        assert!(back[64 << 20..(64 << 20) + 100].iter().all(|&b| b == 2));
        assert!(back[4096..64 << 20].iter().all(|&b| b == 0));
    }
}
