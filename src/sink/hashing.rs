//! Hashing a core off the caller's thread, at a cost that follows the bytes
//! stored rather than the core's logical length.
//!
//! Two kinds of hash, each with BLAKE3 and SHA-256 (docs/MANIFEST.md,
//! "Hashes"):
//!
//! - **chunked** ([`ChunkedDigest`]): the stream is cut into leaves of
//!   16 KiB, leaves are grouped into chunks, a chunk's hash covers its
//!   leaves' hashes and a root hash covers the list of chunk hashes. A leaf
//!   of zeros and a chunk of zeros have hashes known in advance, so a hole
//!   costs 32 bytes of hash input per leaf or chunk instead of hashing its
//!   zeros: hashing a 1 TiB core that holds 4 MiB of data, or a 4 GiB core
//!   with one page touched in every 4 MiB, costs about what the stored
//!   pages cost.
//! - **flat**: the hash of the bytes themselves, as `sha256sum` and `b3sum`
//!   print it. Holes are hashed as zeros (SHA-256 and BLAKE3 of n zeros have
//!   no shortcut), so it is computed only where that is cheap or asked for.
//!
//! [`StreamHasher`] runs one thread per algorithm: data runs are copied into
//! pooled 1 MiB buffers and handed over, runs of zeros are handed over as a
//! length only. The caller therefore never waits unless more than
//! `DEFAULT_MAX_PENDING` bytes of *data* are queued.
//!
//! [`HashingSink`] wraps another [`Sink`]: it hashes the core's bytes (gaps
//! as zeros) when asked to and counts, per segment, how many bytes were
//! actually written (the rest are holes). [`HashingWriter`] hashes the bytes
//! of the file as written (the compressed stream for `-z`).

use super::Sink;
use super::chunk_workers::ChunkWorkers;
use sha2::Digest;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Size of one hand-over buffer.
const BUF_LEN: usize = 1 << 20;
/// Bound on data bytes queued for the hashing threads.
const DEFAULT_MAX_PENDING: usize = 256 << 20;

/// Chunk size of the chunked hashes coresnap writes. Beyond the data, a
/// chunked hash costs the zeros that share a leaf with data, 32 bytes of
/// chunk input for each leaf of zeros in a chunk that holds data, and 32 bytes of root input per chunk of the
/// logical length: for a 1 TiB core, 128 MiB of root input (about 70 ms of
/// SHA-256 here).
pub const CHUNK_SIZE: u64 = 256 << 10;

/// Leaf size of the chunked hashes coresnap writes. A core's holes come in
/// 4 KiB pages, so a smaller leaf would hash fewer zeros beside a lone
/// page of data (here at most 12 KiB), but BLAKE3 hashes a 4 KiB input at
/// about a third of its speed on 16 KiB (its 1 KiB chunks are hashed 16 at
/// a time with AVX-512); SHA-256 does not care.
pub const LEAF_SIZE: u64 = 16 << 10;

/// The first bytes of every chunked root's input: names the scheme, so that
/// a chunked root never equals a flat hash of some other content, nor a
/// root of the other scheme.
pub const CHUNKED_TAG: &[u8] = b"coresnap-chunked-v2";

/// The tag of the scheme of manifest version 2, where a chunk's hash was
/// that of its bytes (zeros in a chunk holding data were hashed as bytes).
/// `verify` still checks such manifests.
pub const CHUNKED_TAG_V1: &[u8] = b"coresnap-chunked-v1";

/// Chunk sizes a manifest may name (verify refuses others rather than
/// allocate or loop on a bogus value).
pub const CHUNK_SIZES: std::ops::RangeInclusive<u64> = 4096..=(1 << 30);

/// Leaf sizes a manifest may name.
pub const LEAF_SIZES: std::ops::RangeInclusive<u64> = 512..=(1 << 20);

/// How a chunked hash cuts its stream (docs/MANIFEST.md, "The chunked
/// hash, exactly").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    pub chunk_size: u64,
    /// `Some(leaf)`: a chunk's hash is the hash of its leaves' hashes
    /// (`coresnap-chunked-v2`, what coresnap writes). `None`: a chunk's
    /// hash is the hash of its bytes (`coresnap-chunked-v1`, manifest
    /// version 2).
    pub leaf_size: Option<u64>,
}

impl Chunking {
    /// What a dump writes.
    pub const CURRENT: Chunking = Chunking {
        chunk_size: CHUNK_SIZE,
        leaf_size: Some(LEAF_SIZE),
    };

    /// Why a manifest's sizes cannot be used, if they cannot: powers of
    /// two in range, a chunk a whole number of leaves.
    pub fn check(self) -> Result<Chunking, String> {
        let power = |n: u64| n.is_power_of_two();
        if !CHUNK_SIZES.contains(&self.chunk_size) || !power(self.chunk_size) {
            return Err(format!(
                "the manifest's chunk size {} is not one coresnap writes (a power of two from {} to {} bytes)",
                self.chunk_size,
                CHUNK_SIZES.start(),
                CHUNK_SIZES.end()
            ));
        }
        if let Some(leaf) = self.leaf_size
            && (!LEAF_SIZES.contains(&leaf) || !power(leaf) || leaf > self.chunk_size)
        {
            return Err(format!(
                "the manifest's leaf size {leaf} is not one coresnap writes (a power of two from {} bytes to the chunk size)",
                LEAF_SIZES.start()
            ));
        }
        Ok(self)
    }
}

/// Which hashes to compute over a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// The chunked hashes, cut this way.
    pub chunked: Option<Chunking>,
    /// The flat hashes (holes hashed as zeros).
    pub flat: bool,
}

impl Want {
    /// Flat hashes only: for bytes that are all stored (a `.zst` file).
    pub const FLAT: Want = Want {
        chunked: None,
        flat: true,
    };

    /// The chunked hashes a dump writes, and the flat ones if `flat`.
    pub fn chunked(flat: bool) -> Want {
        Want {
            chunked: Some(Chunking::CURRENT),
            flat,
        }
    }

    /// What a dump computes for a core of `len` bytes: the chunked hashes,
    /// and the flat ones when the core is small or `flat` asks for them.
    pub fn for_core(len: u64, flat: bool) -> Want {
        Want::chunked(flat || len <= SMALL_CORE)
    }
}

/// Cores up to this logical length also get flat hashes: hashing all of
/// their zeros costs at most about 10 ms here (SHA-256 at ~1.8 GB/s).
pub const SMALL_CORE: u64 = 16 << 20;

/// A BLAKE3 and a SHA-256 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashPair {
    pub blake3: [u8; 32],
    pub sha256: [u8; 32],
}

impl HashPair {
    pub fn blake3_hex(&self) -> String {
        hex(&self.blake3)
    }
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

/// The chunked roots of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedDigest {
    pub chunking: Chunking,
    pub root: HashPair,
}

/// The hashes of one byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests {
    pub len: u64,
    pub chunked: Option<ChunkedDigest>,
    pub flat: Option<HashPair>,
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

/// Zeros to hash from: holes inside a chunk, and flat hashes of holes.
static ZEROS: [u8; 128 << 10] = [0; 128 << 10];

/// One hash function.
pub(super) trait Algorithm: Send + 'static {
    fn new() -> Self;
    fn update(&mut self, data: &[u8]);
    /// The digest so far; the hasher starts over.
    fn finish_reset(&mut self) -> [u8; 32];
}

impl Algorithm for blake3::Hasher {
    fn new() -> Self {
        blake3::Hasher::new()
    }
    fn update(&mut self, data: &[u8]) {
        blake3::Hasher::update(self, data);
    }
    fn finish_reset(&mut self) -> [u8; 32] {
        let digest = *self.finalize().as_bytes();
        self.reset();
        digest
    }
}

impl Algorithm for sha2::Sha256 {
    fn new() -> Self {
        Digest::new()
    }
    fn update(&mut self, data: &[u8]) {
        Digest::update(self, data);
    }
    fn finish_reset(&mut self) -> [u8; 32] {
        self.finalize_reset().into()
    }
}

/// Feeds `n` zero bytes to `hasher`, unless stopped on the way.
fn update_zeros<A: Algorithm>(hasher: &mut A, mut n: u64, stop: &AtomicBool) {
    while n > 0 && !stop.load(Ordering::Relaxed) {
        let k = n.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// H(`len` zero bytes).
pub(super) fn zero_hash<A: Algorithm>(len: u64) -> [u8; 32] {
    let mut h = A::new();
    update_zeros(&mut h, len, &AtomicBool::new(false));
    h.finish_reset()
}

/// The flat hash of a stream with one algorithm, on its own thread.
struct Flat<A> {
    hasher: A,
}

impl<A: Algorithm> Flat<A> {
    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    fn zeros(&mut self, n: u64, stop: &AtomicBool) {
        update_zeros(&mut self.hasher, n, stop);
    }
}

#[derive(Clone)]
enum Msg {
    /// Shared by both hashing threads; the last one done recycles it.
    Data(Arc<Vec<u8>>),
    Zeros(u64),
}

/// The chosen hashes of a stream with BLAKE3 and SHA-256, computed on
/// background threads: the chunked ones on one worker per CPU
/// ([`ChunkWorkers`]), the flat ones, which cannot be split, on one thread
/// per algorithm (SHA-256, ~1.8 GB/s with SHA-NI here, sets their pace;
/// BLAKE3 runs at ~7 GB/s).
pub struct StreamHasher {
    len: u64,
    chunked: Option<(Chunking, ChunkWorkers)>,
    flat: Option<FlatThreads>,
}

/// The flat hashes' two threads and the data on its way to them.
struct FlatThreads {
    senders: Vec<mpsc::Sender<Msg>>,
    free_rx: mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    max_buffers: usize,
    staging: Vec<u8>,
    pending_zeros: u64,
    stop: Arc<AtomicBool>,
    blake3: Option<JoinHandle<[u8; 32]>>,
    sha256: Option<JoinHandle<[u8; 32]>>,
}

impl StreamHasher {
    /// Starts the hashing threads.
    pub fn new(want: Want) -> StreamHasher {
        StreamHasher::with_max_pending(want, DEFAULT_MAX_PENDING)
    }

    /// At most `max_pending` bytes of data (not zeros) wait for the flat
    /// hashes' threads before [`update`](Self::update) blocks.
    fn with_max_pending(want: Want, max_pending: usize) -> StreamHasher {
        StreamHasher {
            len: 0,
            chunked: want.chunked.map(|c| (c, ChunkWorkers::new(c))),
            flat: want.flat.then(|| FlatThreads::new(max_pending)),
        }
    }

    /// Appends `data` to the stream.
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        if let Some((_, workers)) = &mut self.chunked {
            workers.update(data);
        }
        if let Some(flat) = &mut self.flat {
            flat.update(data);
        }
    }

    /// Appends `n` zero bytes to the stream (costs nothing here).
    pub fn zeros(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.len += n;
        if let Some((_, workers)) = &mut self.chunked {
            workers.zeros(n);
        }
        if let Some(flat) = &mut self.flat {
            flat.zeros(n);
        }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waits for the threads to hash everything and returns the digests.
    pub fn finish(self) -> Digests {
        Digests {
            len: self.len,
            chunked: self.chunked.map(|(chunking, workers)| ChunkedDigest {
                chunking,
                root: workers.finish(),
            }),
            flat: self.flat.map(FlatThreads::finish),
        }
    }
}

impl FlatThreads {
    fn new(max_pending: usize) -> FlatThreads {
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let stop = Arc::new(AtomicBool::new(false));
        let (blake_tx, blake_rx) = mpsc::channel::<Msg>();
        let (sha_tx, sha_rx) = mpsc::channel::<Msg>();
        let blake3 = spawn::<blake3::Hasher>("coresnap-blake3", blake_rx, &free_tx, &stop);
        let sha256 = spawn::<sha2::Sha256>("coresnap-sha256", sha_rx, &free_tx, &stop);
        FlatThreads {
            senders: vec![blake_tx, sha_tx],
            free_rx,
            allocated: 0,
            max_buffers: (max_pending / BUF_LEN).max(2),
            staging: Vec::new(),
            pending_zeros: 0,
            stop,
            blake3: Some(blake3),
            sha256: Some(sha256),
        }
    }

    fn update(&mut self, mut data: &[u8]) {
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

    fn zeros(&mut self, n: u64) {
        self.flush_staging();
        self.pending_zeros += n;
    }

    fn finish(mut self) -> HashPair {
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
        HashPair {
            blake3: join(self.blake3.take()),
            sha256: join(self.sha256.take()),
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

impl Drop for FlatThreads {
    fn drop(&mut self) {
        // Abandoned (the dump failed): stop hashing zeros nobody will use.
        // The threads exit on their own once the channels are closed.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn spawn<A: Algorithm>(
    name: &str,
    rx: mpsc::Receiver<Msg>,
    free_tx: &mpsc::Sender<Vec<u8>>,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<[u8; 32]> {
    let free_tx = free_tx.clone();
    let stop = stop.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || hash_thread(Flat { hasher: A::new() }, rx, free_tx, &stop))
        .expect("spawn hashing thread")
}

fn hash_thread<A: Algorithm>(
    mut flat: Flat<A>,
    rx: mpsc::Receiver<Msg>,
    free_tx: mpsc::Sender<Vec<u8>>,
    stop: &AtomicBool,
) -> [u8; 32] {
    for msg in rx {
        match msg {
            Msg::Data(buf) => {
                flat.update(&buf);
                // Exactly one of the two threads gets the buffer back.
                if let Some(mut buf) = Arc::into_inner(buf) {
                    buf.clear();
                    let _ = free_tx.send(buf);
                }
            }
            Msg::Zeros(n) => flat.zeros(n, stop),
        }
    }
    flat.hasher.finish_reset()
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
    /// `hash`: the hashes to compute, if any; `ranges`: the file ranges to
    /// count written bytes in, sorted.
    pub fn new(
        inner: &'a mut dyn Sink,
        hash: Option<Want>,
        ranges: Vec<(u64, u64)>,
    ) -> HashingSink<'a> {
        let written = vec![0; ranges.len()];
        HashingSink {
            inner,
            hasher: hash.map(StreamHasher::new),
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

/// A writer that hashes what passes through it (the file as written: every
/// byte is stored, so the flat hashes), or only counts it when hashing is
/// off.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Option<StreamHasher>,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, hash: bool) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: hash.then(|| StreamHasher::new(Want::FLAT)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Stream;

    /// The chunked roots straight from their definition (docs/MANIFEST.md).
    fn chunked_reference(data: &[u8], chunking: Chunking) -> HashPair {
        fn one<A: Algorithm>(data: &[u8], chunking: Chunking) -> [u8; 32] {
            let hash = |bytes: &[u8]| {
                let mut h = A::new();
                h.update(bytes);
                h.finish_reset()
            };
            let mut root = A::new();
            match chunking.leaf_size {
                Some(leaf) => {
                    root.update(b"coresnap-chunked-v2");
                    root.update(&leaf.to_le_bytes());
                }
                None => root.update(b"coresnap-chunked-v1"),
            }
            root.update(&chunking.chunk_size.to_le_bytes());
            for chunk in data.chunks(chunking.chunk_size as usize) {
                let digest = match chunking.leaf_size {
                    Some(leaf) => {
                        let leaves: Vec<u8> = chunk.chunks(leaf as usize).flat_map(hash).collect();
                        hash(&leaves)
                    }
                    None => hash(chunk),
                };
                root.update(&digest);
            }
            root.update(&(data.len() as u64).to_le_bytes());
            root.finish_reset()
        }
        HashPair {
            blake3: one::<blake3::Hasher>(data, chunking),
            sha256: one::<sha2::Sha256>(data, chunking),
        }
    }

    fn reference(data: &[u8], chunking: Option<Chunking>) -> Digests {
        Digests {
            len: data.len() as u64,
            chunked: chunking.map(|chunking| ChunkedDigest {
                chunking,
                root: chunked_reference(data, chunking),
            }),
            flat: Some(HashPair {
                blake3: *blake3::hash(data).as_bytes(),
                sha256: sha2::Sha256::digest(data).into(),
            }),
        }
    }

    #[test]
    fn gaps_are_hashed_as_zeros() {
        let mut out = Vec::new();
        let mut stream = Stream::new(&mut out);
        let mut sink = HashingSink::new(
            &mut stream,
            Some(Want::chunked(true)),
            vec![(4096, 8192), (8192, 3 << 20)],
        );
        sink.write_at(0, b"header").unwrap();
        sink.write_at(5000, &[7u8; 100]).unwrap();
        sink.write_at(8192 + 10, &vec![9u8; 2 << 20]).unwrap();
        sink.finish((3 << 20) + 17).unwrap();
        assert_eq!(sink.written(), &[100, 2 << 20]);
        let digests = sink.finish_hashing().unwrap();
        assert_eq!(digests, reference(&out, Some(Chunking::CURRENT)));
        assert_eq!(digests.len, (3 << 20) + 17);
    }

    #[test]
    fn zero_runs_give_the_hash_of_their_zeros() {
        // Runs that start and end inside leaves and chunks, on leaf and
        // chunk boundaries, span many chunks, and data that is itself all
        // zeros: the chunked roots depend on the bytes only, not on how the
        // zeros were handed over. Both schemes: leaves in chunks (v2), and chunks
        // hashed as bytes (v1, still verified).
        let runs: &[(bool, u64)] = &[
            (true, 100),
            (false, 5000),
            (true, 3092),
            (false, 3 * 4096),
            (true, 1),
            (false, 40 * 4096 + 7),
            (true, 8192),
            (false, 4095),
            (true, 4096),
            (false, 16384 + 4096),
            (true, 10),
            (false, 16384 - 10),
            (false, 3 * 16384),
            (true, 5),
            // Runs of zeros longer than a chunk, starting mid-chunk, as a
            // .zst's frames of zeros come after a frame cut at a segment.
            (false, 1 << 20),
            (false, 1 << 20),
            (false, 100),
            (true, 3),
            (false, (1 << 20) + 5),
            (false, 7),
        ];
        let schemes = [
            Chunking {
                chunk_size: 16384,
                leaf_size: Some(4096),
            },
            Chunking {
                chunk_size: 4096,
                leaf_size: Some(4096),
            },
            Chunking {
                chunk_size: 4096,
                leaf_size: None,
            },
        ];
        for chunking in schemes {
            let want = Want {
                chunked: Some(chunking),
                flat: true,
            };
            let mut hasher = StreamHasher::new(want);
            let mut same_as_data = StreamHasher::new(want);
            let mut all = Vec::new();
            for (i, &(data, len)) in runs.iter().enumerate() {
                if data {
                    let bytes: Vec<u8> =
                        (0..len).map(|j| (j as usize * 13 + i) as u8 | 1).collect();
                    hasher.update(&bytes);
                    same_as_data.update(&bytes);
                    all.extend_from_slice(&bytes);
                } else {
                    hasher.zeros(len);
                    same_as_data.update(&vec![0; len as usize]);
                    all.resize(all.len() + len as usize, 0);
                }
            }
            let digests = hasher.finish();
            assert_eq!(digests, reference(&all, Some(chunking)), "{chunking:?}");
            assert_eq!(same_as_data.finish(), digests, "{chunking:?}");
        }
    }

    #[test]
    fn the_schemes_give_different_roots() {
        let data = [3u8; 10_000];
        let v2 = reference(&data, Some(Chunking::CURRENT)).chunked.unwrap();
        let v1 = Chunking {
            chunk_size: CHUNK_SIZE,
            leaf_size: None,
        };
        assert_ne!(v2.root, reference(&data, Some(v1)).chunked.unwrap().root);
        assert!(Chunking::CURRENT.check().is_ok());
        for bad in [
            (3 << 12, Some(4096)),
            (4096, Some(8192)),
            (4096, Some(100)),
            (1 << 31, None),
        ] {
            let chunking = Chunking {
                chunk_size: bad.0,
                leaf_size: bad.1,
            };
            assert!(chunking.check().is_err(), "{chunking:?}");
        }
    }

    #[test]
    fn chunked_roots_differ_from_flat_and_by_length() {
        let five = reference(&[0; 5], Some(Chunking::CURRENT));
        let six = reference(&[0; 6], Some(Chunking::CURRENT));
        assert_ne!(five.chunked, six.chunked);
        assert_ne!(five.chunked.unwrap().root, five.flat.unwrap());
        let mut empty = StreamHasher::new(Want::chunked(false));
        empty.zeros(0);
        let empty = empty.finish();
        assert_eq!(empty.flat, None);
        assert_eq!(
            empty.chunked.unwrap().root,
            chunked_reference(&[], Chunking::CURRENT)
        );
    }

    #[test]
    fn a_terabyte_hole_costs_its_root_list() {
        // 1 TiB of zeros with one page of data in the middle: 4 Mi chunks,
        // of which one is hashed. Without the shortcut this would take
        // minutes; the flat hash is not asked for.
        let mut hasher = StreamHasher::new(Want::chunked(false));
        let started = std::time::Instant::now();
        hasher.zeros(1 << 39);
        hasher.update(&[1; 4096]);
        hasher.zeros((1 << 39) - 4096);
        let digests = hasher.finish();
        assert_eq!(digests.len, 1 << 40);
        assert!(digests.chunked.is_some() && digests.flat.is_none());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn small_pool_still_hashes_everything() {
        let mut hasher = StreamHasher::with_max_pending(Want::chunked(true), 0);
        let data: Vec<u8> = (0..(5 * BUF_LEN + 123))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for piece in data.chunks(77_777) {
            hasher.update(piece);
        }
        hasher.zeros(3);
        let mut all = data.clone();
        all.extend_from_slice(&[0, 0, 0]);
        assert_eq!(hasher.finish(), reference(&all, Some(Chunking::CURRENT)));
    }

    #[test]
    fn pool_survives_many_small_runs() {
        // One page of data between holes, over and over: every run goes
        // through the pool, which must never lose a buffer.
        let mut hasher = StreamHasher::with_max_pending(Want::chunked(true), 2 * BUF_LEN);
        let page = [7u8; 4096];
        let mut all = Vec::new();
        for _ in 0..20_000 {
            hasher.update(&page);
            hasher.zeros(100);
            all.extend_from_slice(&page);
            all.extend_from_slice(&[0; 100]);
        }
        assert_eq!(hasher.finish(), reference(&all, Some(Chunking::CURRENT)));
    }

    #[test]
    fn an_abandoned_stream_stops_quietly() {
        // A dump that fails drops its hasher mid-chunk and mid-hole: every
        // thread must end without a panic and without hashing the hole.
        let threads_before = std::fs::read_dir("/proc/self/task").unwrap().count();
        for _ in 0..20 {
            let mut hasher = StreamHasher::new(Want::chunked(true));
            hasher.update(&[5; 10_000]);
            hasher.zeros(1 << 40);
            hasher.update(&[6; 100]);
            drop(hasher);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::read_dir("/proc/self/task").unwrap().count() > threads_before + 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "hashing threads still running"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn writer_hashes_what_it_writes() {
        let mut w = HashingWriter::new(Vec::new(), true);
        w.write_all(b"abc").unwrap();
        w.write_all(&[1; 3000]).unwrap();
        assert_eq!(w.len(), 3003);
        let (out, digests) = w.into_parts();
        assert_eq!(digests, Some(reference(&out, None)));
        assert_eq!(hex(&[0, 0xab, 0x5f]), "00ab5f");
    }
}
