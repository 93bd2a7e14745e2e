//! A sink that compresses the core while it is written, in the zstd
//! seekable format: the core is cut into frames of [`FRAME_LEN`]
//! uncompressed bytes, each compressed independently (with a content
//! checksum) by a pool of worker threads and written in order, followed by
//! the seek table in a skippable frame (the format zeekstd and facebook's
//! `contrib/seekable_format` read). Plain `zstd -d` restores the exact core
//! bytes; [`crate::archive::reader::SeekableCore`] reads any part of it by
//! decompressing only the frames that hold it.
//!
//! Gaps in the sink's input (holes of a sparse core) are zeros in the
//! stream. A gap of [`SPLIT_GAP`] or more ends the current frame and becomes
//! frames of its own, built directly as zstd RLE blocks (4 bytes per
//! 128 KiB, no compression work at all), so a 4 GiB sparse core costs what
//! its data costs. Shorter gaps are zeros inside a frame.
//!
//! [`Sink::finish`] only queues the last frame; [`ZstdSeekableSink::complete`]
//! waits for the workers and writes the seek table. The dump calls it after
//! releasing the target, so the target does not wait for the tail.

use super::Sink;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use zstd::zstd_safe;

/// Uncompressed bytes per frame: large enough for the ratio of one big
/// frame (within 1% here), small enough for random access and for the
/// workers to share the work.
pub const FRAME_LEN: usize = 4 << 20;
/// The default level: on a Python heap it compresses as well as level 3
/// (0.13x) at about twice the speed.
pub const DEFAULT_LEVEL: i32 = 1;
/// A gap at least this long is written as frames of zeros of its own.
pub const SPLIT_GAP: u64 = 1 << 20;

/// How to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressOptions {
    /// zstd level (negative: faster, up to 19: smaller).
    pub level: i32,
    /// Worker threads (0: one per available CPU).
    pub jobs: usize,
}

impl Default for CompressOptions {
    fn default() -> CompressOptions {
        CompressOptions {
            level: DEFAULT_LEVEL,
            jobs: 0,
        }
    }
}

impl CompressOptions {
    /// The number of workers to start.
    pub fn workers(&self) -> usize {
        if self.jobs > 0 {
            self.jobs
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// What the compressed stream holds, once complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeekableStats {
    pub frames: u32,
    pub frame_len: u64,
    /// Uncompressed bytes (the core's length).
    pub uncompressed_len: u64,
    /// Compressed bytes, seek table included (the file's length).
    pub compressed_len: u64,
    pub level: i32,
}

struct Job {
    index: u64,
    data: Vec<u8>,
}

struct Done {
    index: u64,
    compressed: Vec<u8>,
    uncompressed_len: usize,
    /// The input buffer, handed back for reuse.
    input: Option<Vec<u8>>,
}

pub struct ZstdSeekableSink<W: Write> {
    /// `None` only once completed.
    out: Option<W>,
    level: i32,
    frame: Vec<u8>,
    /// Stream offset of `frame[0]`.
    frame_start: u64,
    next_index: u64,
    next_to_write: u64,
    ready: BTreeMap<u64, Done>,
    in_flight: usize,
    max_in_flight: usize,
    jobs_tx: Option<mpsc::Sender<Job>>,
    done_rx: mpsc::Receiver<io::Result<Done>>,
    free: Vec<Vec<u8>>,
    workers: Vec<JoinHandle<()>>,
    table: zeekstd::SeekTable,
    compressed_len: u64,
    finished: bool,
}

impl<W: Write> ZstdSeekableSink<W> {
    pub fn new(out: W, options: CompressOptions) -> io::Result<ZstdSeekableSink<W>> {
        // Fail early on a level zstd rejects.
        frame_compressor(options.level)?;
        let workers = options.workers();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<io::Result<Done>>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let mut handles = Vec::with_capacity(workers);
        for n in 0..workers {
            let jobs_rx = jobs_rx.clone();
            let done_tx = done_tx.clone();
            let level = options.level;
            let handle = std::thread::Builder::new()
                .name(format!("coresnap-zstd-{n}"))
                .spawn(move || worker(level, &jobs_rx, &done_tx))
                .map_err(|e| io::Error::other(format!("cannot start a compression thread: {e}")))?;
            handles.push(handle);
        }
        Ok(ZstdSeekableSink {
            out: Some(out),
            level: options.level,
            frame: Vec::with_capacity(FRAME_LEN),
            frame_start: 0,
            next_index: 0,
            next_to_write: 0,
            ready: BTreeMap::new(),
            in_flight: 0,
            max_in_flight: workers + 2,
            jobs_tx: Some(jobs_tx),
            done_rx,
            free: Vec::new(),
            workers: handles,
            table: zeekstd::SeekTable::new(),
            compressed_len: 0,
            finished: false,
        })
    }

    fn writer(&mut self) -> &mut W {
        self.out.as_mut().expect("writer present until completed")
    }

    fn position(&self) -> u64 {
        self.frame_start + self.frame.len() as u64
    }

    /// Extends the stream with zeros up to `offset`.
    fn fill_zeros_to(&mut self, offset: u64) -> io::Result<()> {
        if offset.saturating_sub(self.position()) >= SPLIT_GAP {
            if !self.frame.is_empty() {
                self.submit()?;
            }
            while self.position() < offset {
                let n = (offset - self.position()).min(FRAME_LEN as u64) as usize;
                self.push_zero_frame(n)?;
            }
            return Ok(());
        }
        while self.position() < offset {
            let n = (offset - self.position()).min((FRAME_LEN - self.frame.len()) as u64) as usize;
            self.frame.resize(self.frame.len() + n, 0);
            if self.frame.len() == FRAME_LEN {
                self.submit()?;
            }
        }
        Ok(())
    }

    /// Appends a frame of `n` zeros (the current frame must be empty).
    fn push_zero_frame(&mut self, n: usize) -> io::Result<()> {
        let index = self.next_index;
        self.next_index += 1;
        self.frame_start += n as u64;
        self.ready.insert(
            index,
            Done {
                index,
                compressed: zero_frame(n),
                uncompressed_len: n,
                input: None,
            },
        );
        self.write_ready()
    }

    /// Hands the current frame to the workers.
    fn submit(&mut self) -> io::Result<()> {
        let next = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(FRAME_LEN));
        let data = std::mem::replace(&mut self.frame, next);
        self.frame_start += data.len() as u64;
        let index = self.next_index;
        self.next_index += 1;
        self.jobs_tx
            .as_ref()
            .expect("workers running")
            .send(Job { index, data })
            .map_err(|_| io::Error::other("the compression threads stopped"))?;
        self.in_flight += 1;
        while self.in_flight >= self.max_in_flight {
            self.receive(true)?;
        }
        while self.receive(false)? {}
        Ok(())
    }

    /// Takes one finished frame (waiting for it if `block`), then writes
    /// every frame that is next in order. Returns whether one was taken.
    fn receive(&mut self, block: bool) -> io::Result<bool> {
        let done = if block {
            match self.done_rx.recv() {
                Ok(done) => done,
                Err(_) => return Err(io::Error::other("the compression threads stopped")),
            }
        } else {
            match self.done_rx.try_recv() {
                Ok(done) => done,
                Err(_) => return Ok(false),
            }
        };
        self.in_flight -= 1;
        let done = done?;
        self.ready.insert(done.index, done);
        self.write_ready()?;
        Ok(true)
    }

    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(mut done) = self.ready.remove(&self.next_to_write) {
            self.writer().write_all(&done.compressed)?;
            self.table
                .log_frame(done.compressed.len() as u32, done.uncompressed_len as u32)
                .map_err(|e| io::Error::other(format!("seek table: {e}")))?;
            self.compressed_len += done.compressed.len() as u64;
            self.next_to_write += 1;
            if let Some(mut input) = done.input.take() {
                input.clear();
                self.free.push(input);
            }
        }
        Ok(())
    }

    /// Waits for every frame, writes the seek table and flushes. Call after
    /// [`Sink::finish`].
    pub fn complete(mut self) -> io::Result<(W, SeekableStats)> {
        if !self.finished {
            return Err(io::Error::other(
                "compressed core completed before it was finished",
            ));
        }
        while self.in_flight > 0 {
            self.receive(true)?;
        }
        self.jobs_tx = None;
        let uncompressed_len = self.frame_start;
        let frames = self.table.num_frames();
        let table = std::mem::take(&mut self.table);
        let mut serializer = table.into_serializer();
        let mut bytes = vec![0u8; serializer.encoded_len()];
        let n = serializer.write_into(&mut bytes);
        self.writer().write_all(&bytes[..n])?;
        self.writer().flush()?;
        self.compressed_len += n as u64;
        let stats = SeekableStats {
            frames,
            frame_len: FRAME_LEN as u64,
            uncompressed_len,
            compressed_len: self.compressed_len,
            level: self.level,
        };
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
        let out = self.out.take().expect("writer present until completed");
        Ok((out, stats))
    }
}

impl<W: Write> Sink for ZstdSeekableSink<W> {
    fn write_at(&mut self, offset: u64, mut data: &[u8]) -> io::Result<()> {
        if offset < self.position() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "compressed sink cannot seek backwards",
            ));
        }
        self.fill_zeros_to(offset)?;
        while !data.is_empty() {
            let n = (FRAME_LEN - self.frame.len()).min(data.len());
            self.frame.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.frame.len() == FRAME_LEN {
                self.submit()?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, total_len: u64) -> io::Result<()> {
        self.fill_zeros_to(total_len)?;
        if !self.frame.is_empty() {
            self.submit()?;
        }
        self.finished = true;
        Ok(())
    }
}

impl<W: Write> Drop for ZstdSeekableSink<W> {
    fn drop(&mut self) {
        // Closing the job queue stops the workers after their current frame.
        self.jobs_tx = None;
    }
}

/// A zstd frame of `n` (1..=4 GiB) zero bytes made of RLE blocks: magic,
/// a single-segment header with a 4-byte content size and no checksum, then
/// one 4-byte RLE block per 128 KiB (RFC 8878, sections 3.1.1.1 and 3.1.1.2).
pub fn zero_frame(n: usize) -> Vec<u8> {
    const BLOCK: usize = 128 << 10;
    let mut out = Vec::with_capacity(9 + 4 * n.div_ceil(BLOCK));
    out.extend_from_slice(&0xfd2f_b528u32.to_le_bytes());
    // Frame_Content_Size_flag 2 (4 bytes), Single_Segment_flag 1.
    out.push(0b1010_0000);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    let mut left = n;
    while left > 0 {
        let k = left.min(BLOCK);
        left -= k;
        // Last_Block, Block_Type 1 (RLE), Block_Size = bytes to repeat.
        let header = u32::from(left == 0) | (1 << 1) | ((k as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.push(0);
    }
    out
}

fn frame_compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    let (min, max) = (zstd_safe::min_c_level(), zstd_safe::max_c_level());
    if level < min || level > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("compression level {level} is outside zstd's range {min}..={max}"),
        ));
    }
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    Ok(compressor)
}

fn compress_frame(
    compressor: &mut zstd::bulk::Compressor<'static>,
    data: &[u8],
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    compressor.compress_to_buffer(data, &mut out)?;
    Ok(out)
}

fn worker(level: i32, jobs: &Mutex<mpsc::Receiver<Job>>, done: &mpsc::Sender<io::Result<Done>>) {
    let mut compressor = match frame_compressor(level) {
        Ok(c) => c,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let result = compress_frame(&mut compressor, &job.data).map(|compressed| Done {
            index: job.index,
            compressed,
            uncompressed_len: job.data.len(),
            input: Some(job.data),
        });
        if done.send(result).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i / 7 % 13) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    #[test]
    fn zstd_restores_the_exact_stream_with_gaps_as_zeros() {
        let mut sink =
            ZstdSeekableSink::new(Vec::new(), CompressOptions { level: 3, jobs: 3 }).unwrap();
        let mut expected = vec![0u8; 3 * FRAME_LEN + FRAME_LEN / 2 + 100];
        let writes = [
            (0usize, 5000usize),
            (4096 * 3, FRAME_LEN + 10),
            (3 * FRAME_LEN + 8, 4096),
        ];
        for (offset, len) in writes {
            let data = pattern(len);
            expected[offset..offset + len].copy_from_slice(&data);
            sink.write_at(offset as u64, &data).unwrap();
        }
        assert!(sink.write_at(1, b"x").is_err());
        sink.finish(expected.len() as u64).unwrap();
        let (out, stats) = sink.complete().unwrap();
        assert_eq!(stats.uncompressed_len, expected.len() as u64);
        assert_eq!(stats.compressed_len, out.len() as u64);
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), expected);
        let table =
            zeekstd::SeekTable::from_seekable(&mut zeekstd::BytesWrapper::new(&out)).unwrap();
        assert_eq!(table.num_frames(), stats.frames);
        assert_eq!(table.size_decomp(), expected.len() as u64);
    }

    #[test]
    fn long_gaps_become_rle_frames_and_tail_gap_counts() {
        let mut sink =
            ZstdSeekableSink::new(Vec::new(), CompressOptions { level: 1, jobs: 1 }).unwrap();
        sink.write_at(7, b"start").unwrap();
        sink.write_at(10 * FRAME_LEN as u64 + 5, b"end").unwrap();
        sink.finish(12 * FRAME_LEN as u64 + 1).unwrap();
        let (out, stats) = sink.complete().unwrap();
        // "start", zero frames, "end", zero frames for the tail.
        assert!(out.len() < 16 * 1024, "{} bytes", out.len());
        let plain = zstd::decode_all(&out[..]).unwrap();
        assert_eq!(plain.len(), 12 * FRAME_LEN + 1);
        assert_eq!(&plain[7..12], b"start");
        assert_eq!(&plain[10 * FRAME_LEN + 5..10 * FRAME_LEN + 8], b"end");
        assert_eq!(plain.iter().filter(|&&b| b != 0).count(), 8);
        let table =
            zeekstd::SeekTable::from_seekable(&mut zeekstd::BytesWrapper::new(&out)).unwrap();
        assert_eq!(table.num_frames(), stats.frames);
        assert_eq!(table.size_decomp(), plain.len() as u64);
    }

    #[test]
    fn rle_zero_frames_decode() {
        for n in [1, 4095, 128 << 10, (128 << 10) + 1, FRAME_LEN] {
            let frame = zero_frame(n);
            assert_eq!(zstd::decode_all(&frame[..]).unwrap(), vec![0u8; n], "{n}");
        }
    }

    #[test]
    fn bad_level_is_refused() {
        assert!(ZstdSeekableSink::new(Vec::new(), CompressOptions { level: 99, jobs: 1 }).is_err());
    }
}
