//! Writes a core: headers and notes first, then the memory of every dumped
//! mapping, read from the target on a second thread while the previous
//! buffer is being written, so the dump runs at the speed of the slower side.

use super::layout::{self, CoreLayout, PAGE_SIZE, SegmentSpec};
use super::notes::{Note, core_notes, encode_notes};
use crate::arch;
use crate::cancel::CancelToken;
use crate::process::memory::{MemoryError, MemorySource, Unreadable};
use crate::sink::{Sink, nonzero_page_runs};
use crate::snapshot::Snapshot;
use std::sync::mpsc;
use thiserror::Error;

/// Largest single read from the target.
pub const CHUNK_LEN: usize = 4 << 20;
/// Buffers in flight between the reading and the writing thread; with
/// [`CHUNK_LEN`] this bounds the copy's memory at 16 MiB whatever the
/// target's size.
pub const BUFFERS: usize = 4;

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("writing the core failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("interrupted by signal {signal}")]
    Interrupted { signal: i32 },
}

/// What the copy did.
#[derive(Debug, Clone, Default)]
pub struct WriteStats {
    /// Length of the core file (its logical size).
    pub total_len: u64,
    /// Bytes read from the target.
    pub bytes_read: u64,
    /// Bytes of memory written (pages that were not all zeros).
    pub bytes_written: u64,
    /// Ranges that could not be read (left as zeros), in address order.
    pub unreadable: Vec<Unreadable>,
}

/// One contiguous piece of target memory and where it goes in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Copy {
    addr: u64,
    len: u64,
    file_offset: u64,
}

/// Pieces of memory read with one system call into one buffer that covers
/// a stretch of the file (at most [`CHUNK_LEN`] bytes, [`MAX_PIECES`]
/// pieces, the IOV_MAX of `process_vm_readv`); the bytes between pieces are
/// zeros (holes in the core).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Batch {
    file_offset: u64,
    len: usize,
    /// (address, offset in the batch, length)
    pieces: Vec<(u64, usize, usize)>,
}

const MAX_PIECES: usize = 1024;

/// Groups copies (in file order) into batches; a copy that does not fit in
/// one is split.
fn batches(copies: &[Copy]) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    for copy in copies {
        let mut done = 0u64;
        while done < copy.len {
            let file_offset = copy.file_offset + done;
            let left = (copy.len - done) as usize;
            let joined = match out.last_mut() {
                Some(last)
                    if file_offset >= last.file_offset + last.len as u64
                        && file_offset < last.file_offset + CHUNK_LEN as u64
                        && last.pieces.len() < MAX_PIECES =>
                {
                    let at = (file_offset - last.file_offset) as usize;
                    let take = left.min(CHUNK_LEN - at);
                    last.pieces.push((copy.addr + done, at, take));
                    last.len = at + take;
                    Some(take)
                }
                _ => None,
            };
            let take = joined.unwrap_or_else(|| {
                let take = left.min(CHUNK_LEN);
                out.push(Batch {
                    file_offset,
                    len: take,
                    pieces: vec![(copy.addr + done, 0, take)],
                });
                take
            });
            done += take as u64;
        }
    }
    out
}

/// Computes the layout for `snapshot` with `extra` notes appended.
pub fn plan(snapshot: &Snapshot, extra: Vec<Note>) -> (Vec<u8>, Vec<SegmentSpec>, CoreLayout) {
    let notes = encode_notes(&core_notes(snapshot, extra));
    let segments: Vec<SegmentSpec> = listed(snapshot)
        .map(|r| SegmentSpec {
            vaddr: r.mapping.start,
            memsz: r.mapping.len(),
            filesz: r.dumped_len(),
            readable: r.mapping.readable,
            writable: r.mapping.writable,
            executable: r.mapping.executable,
        })
        .collect();
    let layout = layout::plan(arch::ELF_MACHINE, notes.len() as u64, &segments);
    (notes, segments, layout)
}

/// The regions that get a PT_LOAD, in address order.
fn listed(snapshot: &Snapshot) -> impl Iterator<Item = &crate::snapshot::Region> {
    snapshot.regions.iter().filter(|r| r.listed_in_core())
}

/// The reads that fill the segments: whole dumped ranges, or only the
/// populated parts of private anonymous memory.
fn copies(snapshot: &Snapshot, layout: &CoreLayout) -> Vec<Copy> {
    let mut out = Vec::new();
    for (region, &offset) in listed(snapshot).zip(&layout.segment_offsets) {
        let start = region.mapping.start;
        let end = start + region.dumped_len();
        if end == start {
            continue;
        }
        let ranges = region
            .populated
            .clone()
            .unwrap_or_else(|| vec![(start, end)]);
        for (from, to) in ranges {
            let (from, to) = (from.max(start), to.min(end));
            if from < to {
                out.push(Copy {
                    addr: from,
                    len: to - from,
                    file_offset: offset + (from - start),
                });
            }
        }
    }
    out
}

/// Writes the whole core for `snapshot` into `sink`, reading memory through
/// `memory` while the target stays frozen.
pub fn write_core(
    snapshot: &Snapshot,
    extra_notes: Vec<Note>,
    memory: &dyn MemorySource,
    sink: &mut dyn Sink,
    cancel: &CancelToken,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<WriteStats, WriteError> {
    let (notes, _, layout) = plan(snapshot, extra_notes);
    write_planned(snapshot, &notes, &layout, memory, sink, cancel, progress)
}

/// [`write_core`] for a layout the caller already planned with [`plan`]
/// (to know segment offsets before writing), so the notes are not encoded
/// twice.
pub fn write_planned(
    snapshot: &Snapshot,
    notes: &[u8],
    layout: &CoreLayout,
    memory: &dyn MemorySource,
    sink: &mut dyn Sink,
    cancel: &CancelToken,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<WriteStats, WriteError> {
    sink.write_at(0, &layout.headers)?;
    sink.write_at(layout.notes_offset, notes)?;
    let copies = copies(snapshot, layout);
    let to_read: u64 = copies.iter().map(|c| c.len).sum();
    let mut stats = WriteStats {
        total_len: layout.total_len,
        ..WriteStats::default()
    };

    std::thread::scope(|scope| -> Result<(), WriteError> {
        let (full_tx, full_rx) = mpsc::sync_channel::<Result<Filled, MemoryError>>(BUFFERS);
        let (free_tx, free_rx) = mpsc::channel::<PageBuffer>();
        let copies = &copies;
        let batches = batches(copies);
        scope.spawn(move || {
            // Buffers are made only when none is free: touching a fresh
            // page costs the kernel a clear, and a writer that keeps up
            // needs only two.
            let mut made = 0;
            for batch in batches {
                let buf = match free_rx.try_recv() {
                    Ok(buf) => Ok(buf),
                    Err(_) if made < BUFFERS => {
                        made += 1;
                        Ok(PageBuffer::new(CHUNK_LEN / PAGE_SIZE as usize))
                    }
                    Err(_) => free_rx.recv(),
                };
                let Ok(mut buf) = buf else { return };
                buf.set_len(batch.len);
                zero_gaps(buf.bytes_mut(), &batch.pieces);
                let mut unreadable = Vec::new();
                let result = memory
                    .read_pieces(&batch.pieces, buf.bytes_mut(), &mut unreadable)
                    .map(|()| Filled {
                        file_offset: batch.file_offset,
                        buf,
                        unreadable,
                    });
                let failed = result.is_err();
                if full_tx.send(result).is_err() || failed {
                    return;
                }
            }
        });
        // Dropping the receiver on an early return stops the reader.
        for filled in full_rx {
            let filled = filled?;
            if let Some(signal) = cancel.signal() {
                return Err(WriteError::Interrupted { signal });
            }
            stats.bytes_read += filled.buf.bytes().len() as u64;
            stats.bytes_written +=
                write_nonzero_pages(sink, filled.file_offset, filled.buf.bytes())?;
            stats.unreadable.extend(filled.unreadable);
            progress(stats.bytes_read, to_read);
            let _ = free_tx.send(filled.buf);
        }
        Ok(())
    })?;
    sink.finish(layout.total_len)?;
    Ok(stats)
}

struct Filled {
    file_offset: u64,
    buf: PageBuffer,
    unreadable: Vec<Unreadable>,
}

/// A page-aligned byte buffer: whole pages of the target land on whole
/// pages here, which keeps the zero-page scan and the writes aligned.
pub struct PageBuffer {
    /// One page more than needed, so that an aligned start can be chosen.
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageBuffer {
    /// A zeroed buffer of `pages` pages. A byte vector is allocated zeroed
    /// (large ones come straight from mmap, already zero and not yet
    /// faulted in) and aligned by hand: a page-aligned type would make the
    /// allocator align, then fill every page with zeros, faulting in and
    /// clearing it twice (a fifth of a small process's dump).
    pub fn new(pages: usize) -> PageBuffer {
        let page = PAGE_SIZE as usize;
        let storage = vec![0u8; (pages + 1) * page];
        let start = storage.as_ptr().align_offset(page);
        PageBuffer {
            storage,
            start,
            len: pages * page,
        }
    }

    /// Sets the length in bytes, growing the buffer if needed.
    pub fn set_len(&mut self, len: usize) {
        if self.start + len > self.storage.len() {
            *self = PageBuffer::new(len.div_ceil(PAGE_SIZE as usize));
        }
        self.len = len;
    }

    pub fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Writes the runs of `data` that are not whole pages of zeros; the sink
/// turns the rest into holes. Returns the bytes written.
fn write_nonzero_pages(sink: &mut dyn Sink, file_offset: u64, data: &[u8]) -> std::io::Result<u64> {
    let mut written = 0u64;
    for run in nonzero_page_runs(data) {
        sink.write_at(file_offset + run.start as u64, &data[run.clone()])?;
        written += run.len() as u64;
    }
    Ok(written)
}

/// Zeroes the parts of a reused buffer that no piece will fill.
fn zero_gaps(buf: &mut [u8], pieces: &[(u64, usize, usize)]) {
    let mut at = 0;
    for &(_, start, len) in pieces {
        buf[at..start].fill(0);
        at = start + len;
    }
    let end = buf.len();
    buf[at..end].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_join_neighbours_and_split_big_copies() {
        let copies = [
            Copy {
                addr: 0x1000,
                len: 0x1000,
                file_offset: 0x10000,
            },
            // a hole of one page in the file between these two
            Copy {
                addr: 0x9000,
                len: 0x2000,
                file_offset: 0x12000,
            },
            // too far away in the file: a new batch, split in two
            Copy {
                addr: 0x20000,
                len: CHUNK_LEN as u64 + 0x1000,
                file_offset: 0x10000 + CHUNK_LEN as u64,
            },
        ];
        let got = batches(&copies);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            Batch {
                file_offset: 0x10000,
                len: 0x4000,
                pieces: vec![(0x1000, 0, 0x1000), (0x9000, 0x2000, 0x2000)]
            }
        );
        assert_eq!(got[1].pieces, vec![(0x20000, 0, CHUNK_LEN)]);
        assert_eq!(got[2].pieces, vec![(0x20000 + CHUNK_LEN as u64, 0, 0x1000)]);
        // The iovec limit ends a batch before the byte limit does here.
        let many: Vec<Copy> = (0..2000u64)
            .map(|i| Copy {
                addr: i * 0x4000,
                len: 0x800,
                file_offset: i * 0x1000,
            })
            .collect();
        let got = batches(&many);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].pieces.len(), MAX_PIECES);
        assert_eq!(got[1].file_offset, 1024 * 0x1000);
        let mut buf = vec![9u8; 0x4000];
        zero_gaps(&mut buf, &got[0].pieces[..1]);
        assert!(buf[..0x800].iter().all(|&b| b == 9) && buf[0x800..].iter().all(|&b| b == 0));
    }
    use crate::sink::Stream;

    #[test]
    fn zero_pages_are_skipped_not_lost() {
        let mut data = vec![0u8; 5 * 4096];
        data[4096 + 7] = 1;
        data[3 * 4096] = 2;
        data[4 * 4096 + 4095] = 3;
        let mut out = Vec::new();
        let mut sink = Stream::new(&mut out);
        let written = write_nonzero_pages(&mut sink, 0, &data).unwrap();
        sink.finish(data.len() as u64).unwrap();
        assert_eq!(written, 3 * 4096);
        assert_eq!(out, data);
    }
}
