//! Hashing a core as it is written, off the writer's thread.
//!
//! [`StreamHasher`] computes BLAKE3 and SHA-256 of a byte stream on a thread
//! of its own: data runs are copied into pooled 1 MiB buffers and handed
//! over, runs of zeros (the holes of a sparse core) are handed over as a
//! length only. The writer therefore never waits for the hash unless more
//! than `max_pending` bytes of *data* are queued; zeros never count, so a
//! 4 GiB sparse core is hashed after the target has been released instead
//! of while it is frozen (SHA-256 of zeros still costs ~0.55 s per GiB with
//! SHA-NI here; see docs/MANIFEST.md).
//!
//! [`HashingSink`] wraps another [`Sink`]: it hashes the core's bytes (gaps
//! as zeros) and counts, per segment, how many bytes were actually written
//! (the rest are holes). [`HashingWriter`] hashes the bytes of the file as
//! written (the compressed stream for `-z`).

use super::Sink;
use sha2::Digest;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Size of one hand-over buffer.
const BUF_LEN: usize = 1 << 20;
/// Default bound on data bytes queued for the hasher thread.
pub const DEFAULT_MAX_PENDING: usize = 256 << 20;

/// The hashes of one byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests {
    pub len: u64,
    pub blake3: [u8; 32],
    pub sha256: [u8; 32],
}

impl Digests {
    pub fn blake3_hex(&self) -> String {
        hex(&self.blake3)
    }
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[derive(Clone)]
enum Msg {
    /// Shared by both hashing threads; the last one done recycles it.
    Data(Arc<Vec<u8>>),
    Zeros(u64),
}

/// BLAKE3 + SHA-256 of a stream, computed on two background threads (one
/// per algorithm: SHA-256, ~1.8 GB/s with SHA-NI here, is the slower one
/// and sets the pace; BLAKE3 runs at ~7 GB/s).
pub struct StreamHasher {
    senders: Vec<mpsc::Sender<Msg>>,
    free_rx: mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    max_buffers: usize,
    staging: Vec<u8>,
    pending_zeros: u64,
    len: u64,
    stop: Arc<AtomicBool>,
    blake3: Option<JoinHandle<[u8; 32]>>,
    sha256: Option<JoinHandle<[u8; 32]>>,
}

impl StreamHasher {
    /// Starts the hashing thread; at most `max_pending` bytes of data (not
    /// zeros) wait for it before [`update`](Self::update) blocks.
    pub fn new(max_pending: usize) -> StreamHasher {
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let stop = Arc::new(AtomicBool::new(false));
        let (blake_tx, blake_rx) = mpsc::channel::<Msg>();
        let (sha_tx, sha_rx) = mpsc::channel::<Msg>();
        let spawn = |name: &str, rx, mut hasher: Box<dyn Hash>| {
            let free_tx = free_tx.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || hash_thread(rx, free_tx, &stop, hasher.as_mut()))
                .expect("spawn hashing thread")
        };
        let blake3 = spawn("coresnap-blake3", blake_rx, Box::new(blake3::Hasher::new()));
        let sha256 = spawn("coresnap-sha256", sha_rx, Box::new(sha2::Sha256::new()));
        StreamHasher {
            senders: vec![blake_tx, sha_tx],
            free_rx,
            allocated: 0,
            max_buffers: (max_pending / BUF_LEN).max(2),
            staging: Vec::new(),
            pending_zeros: 0,
            len: 0,
            stop,
            blake3: Some(blake3),
            sha256: Some(sha256),
        }
    }

    /// Appends `data` to the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.pending_zeros > 0 {
            let n = std::mem::take(&mut self.pending_zeros);
            self.send(Msg::Zeros(n));
        }
        while !data.is_empty() {
            if self.staging.capacity() == 0 {
                self.staging = self.take_buffer();
            }
            let n = (BUF_LEN - self.staging.len()).min(data.len());
            self.staging.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.staging.len() == BUF_LEN {
                self.flush_staging();
            }
        }
    }

    /// Appends `n` zero bytes to the stream (costs nothing here).
    pub fn zeros(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.flush_staging();
        self.len += n;
        self.pending_zeros += n;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waits for the thread to hash everything and returns the digests.
    pub fn finish(mut self) -> Digests {
        self.flush_staging();
        if self.pending_zeros > 0 {
            let n = std::mem::take(&mut self.pending_zeros);
            self.send(Msg::Zeros(n));
        }
        self.senders.clear();
        let join = |handle: Option<JoinHandle<[u8; 32]>>| match handle.expect("joined once").join()
        {
            Ok(digest) => digest,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let blake3 = join(self.blake3.take());
        let sha256 = join(self.sha256.take());
        Digests {
            len: self.len,
            blake3,
            sha256,
        }
    }

    fn flush_staging(&mut self) {
        if !self.staging.is_empty() {
            let buf = std::mem::take(&mut self.staging);
            self.send(Msg::Data(Arc::new(buf)));
        }
    }

    fn send(&mut self, msg: Msg) {
        // The threads only go away when we drop the senders. The last one
        // gets the message itself: no reference may stay here, or a buffer
        // could be freed instead of coming back to the pool.
        let (last, others) = self.senders.split_last().expect("hasher open");
        for tx in others {
            let _ = tx.send(msg.clone());
        }
        let _ = last.send(msg);
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        if let Ok(buf) = self.free_rx.try_recv() {
            return buf;
        }
        if self.allocated < self.max_buffers {
            self.allocated += 1;
            return Vec::with_capacity(BUF_LEN);
        }
        self.free_rx
            .recv()
            .unwrap_or_else(|_| Vec::with_capacity(BUF_LEN))
    }
}

impl Drop for StreamHasher {
    fn drop(&mut self) {
        // Abandoned (the dump failed): stop hashing zeros nobody will use.
        // The thread exits on its own once the channel is closed.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One hash function, fed by one thread.
trait Hash: Send {
    fn update(&mut self, data: &[u8]);
    fn digest(&mut self) -> [u8; 32];
}

impl Hash for blake3::Hasher {
    fn update(&mut self, data: &[u8]) {
        blake3::Hasher::update(self, data);
    }
    fn digest(&mut self) -> [u8; 32] {
        *self.finalize().as_bytes()
    }
}

impl Hash for sha2::Sha256 {
    fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(self, data);
    }
    fn digest(&mut self) -> [u8; 32] {
        self.finalize_reset().into()
    }
}

fn hash_thread(
    rx: mpsc::Receiver<Msg>,
    free_tx: mpsc::Sender<Vec<u8>>,
    stop: &AtomicBool,
    hasher: &mut dyn Hash,
) -> [u8; 32] {
    let zeros = vec![0u8; BUF_LEN];
    for msg in rx {
        match msg {
            Msg::Data(buf) => {
                hasher.update(&buf);
                // Exactly one of the two threads gets the buffer back.
                if let Some(mut buf) = Arc::into_inner(buf) {
                    buf.clear();
                    let _ = free_tx.send(buf);
                }
            }
            Msg::Zeros(mut n) => {
                while n > 0 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let k = n.min(BUF_LEN as u64) as usize;
                    hasher.update(&zeros[..k]);
                    n -= k as u64;
                }
            }
        }
    }
    hasher.digest()
}

/// A sink that forwards everything to `inner`, hashes the core's bytes (gaps
/// as zeros) when asked to, and counts the bytes written into each of the
/// given file ranges (the core's segments).
pub struct HashingSink<'a> {
    inner: &'a mut dyn Sink,
    hasher: Option<StreamHasher>,
    position: u64,
    /// Sorted, non-overlapping file ranges `[start, end)`.
    ranges: Vec<(u64, u64)>,
    written: Vec<u64>,
    cursor: usize,
}

impl<'a> HashingSink<'a> {
    /// `ranges`: the file ranges to count written bytes in, sorted.
    pub fn new(inner: &'a mut dyn Sink, hash: bool, ranges: Vec<(u64, u64)>) -> HashingSink<'a> {
        let written = vec![0; ranges.len()];
        HashingSink {
            inner,
            hasher: hash.then(|| StreamHasher::new(DEFAULT_MAX_PENDING)),
            position: 0,
            ranges,
            written,
            cursor: 0,
        }
    }

    /// Bytes written into each range given to [`new`](Self::new).
    pub fn written(&self) -> &[u64] {
        &self.written
    }

    /// Waits for the hashes (call it after the target has been released).
    pub fn finish_hashing(&mut self) -> Option<Digests> {
        self.hasher.take().map(StreamHasher::finish)
    }

    fn tally(&mut self, offset: u64, len: u64) {
        let end = offset + len;
        while self.cursor < self.ranges.len() && self.ranges[self.cursor].1 <= offset {
            self.cursor += 1;
        }
        let mut i = self.cursor;
        while i < self.ranges.len() && self.ranges[i].0 < end {
            let (from, to) = self.ranges[i];
            let overlap = to.min(end).saturating_sub(from.max(offset));
            self.written[i] += overlap;
            i += 1;
        }
    }
}

impl Sink for HashingSink<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.zeros(offset.saturating_sub(self.position));
            hasher.update(data);
        }
        self.tally(offset, data.len() as u64);
        self.position = offset + data.len() as u64;
        Ok(())
    }

    fn finish(&mut self, total_len: u64) -> io::Result<()> {
        self.inner.finish(total_len)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.zeros(total_len.saturating_sub(self.position));
        }
        self.position = self.position.max(total_len);
        Ok(())
    }
}

/// A writer that hashes what passes through it (the file as written), or
/// only counts it when hashing is off.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Option<StreamHasher>,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, hash: bool) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: hash.then(|| StreamHasher::new(DEFAULT_MAX_PENDING)),
            len: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The writer, and the digests if hashing was on.
    pub fn into_parts(self) -> (W, Option<Digests>) {
        (self.inner, self.hasher.map(StreamHasher::finish))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes a whole reader (used by `verify`); returns the digests.
pub fn hash_reader(mut reader: impl io::Read) -> io::Result<Digests> {
    let mut hasher = StreamHasher::new(DEFAULT_MAX_PENDING);
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Stream;

    fn reference(data: &[u8]) -> Digests {
        Digests {
            len: data.len() as u64,
            blake3: *blake3::hash(data).as_bytes(),
            sha256: <sha2::Sha256 as sha2::Digest>::digest(data).into(),
        }
    }

    #[test]
    fn gaps_are_hashed_as_zeros() {
        let mut out = Vec::new();
        let mut stream = Stream::new(&mut out);
        let mut sink = HashingSink::new(&mut stream, true, vec![(4096, 8192), (8192, 3 << 20)]);
        sink.write_at(0, b"header").unwrap();
        sink.write_at(5000, &[7u8; 100]).unwrap();
        sink.write_at(8192 + 10, &vec![9u8; 2 << 20]).unwrap();
        sink.finish((3 << 20) + 17).unwrap();
        assert_eq!(sink.written(), &[100, 2 << 20]);
        let digests = sink.finish_hashing().unwrap();
        assert_eq!(digests, reference(&out));
        assert_eq!(digests.len, (3 << 20) + 17);
    }

    #[test]
    fn small_pool_still_hashes_everything() {
        let mut hasher = StreamHasher::new(0);
        let data: Vec<u8> = (0..(5 * BUF_LEN + 123))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for piece in data.chunks(77_777) {
            hasher.update(piece);
        }
        hasher.zeros(3);
        let mut all = data.clone();
        all.extend_from_slice(&[0, 0, 0]);
        assert_eq!(hasher.finish(), reference(&all));
    }

    #[test]
    fn pool_survives_many_small_runs() {
        // One page of data between holes, over and over: every run goes
        // through the pool, which must never lose a buffer.
        let mut hasher = StreamHasher::new(2 * BUF_LEN);
        let page = [7u8; 4096];
        let mut all = Vec::new();
        for _ in 0..20_000 {
            hasher.update(&page);
            hasher.zeros(100);
            all.extend_from_slice(&page);
            all.extend_from_slice(&[0; 100]);
        }
        assert_eq!(hasher.finish(), reference(&all));
    }

    #[test]
    fn writer_hashes_what_it_writes() {
        let mut w = HashingWriter::new(Vec::new(), true);
        w.write_all(b"abc").unwrap();
        w.write_all(&[1; 3000]).unwrap();
        assert_eq!(w.len(), 3003);
        let (out, digests) = w.into_parts();
        assert_eq!(digests, Some(reference(&out)));
        assert_eq!(hex(&[0, 0xab, 0x5f]), "00ab5f");
    }
}
