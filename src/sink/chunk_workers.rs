//! The chunked hashes (docs/MANIFEST.md, "The chunked hash, exactly")
//! computed on every CPU: chunks are independent, so the stream is cut, at
//! chunk boundaries, into batches of about [`BATCH_BYTES`] of data, each
//! batch is hashed with both algorithms by whichever worker is free, and one
//! light thread feeds the chunk hashes to the two roots in stream order.
//!
//! One thread per algorithm, as the flat hashes need, would leave SHA-256
//! (about four times slower than BLAKE3 here) setting the pace on one CPU
//! while the other idles once BLAKE3 is done. Batches rather than single
//! chunks, because a sparse core's chunks often hold one page: handing each
//! to a thread would cost more than hashing it.
//!
//! Runs of zeros are never materialised: a batch lists them as lengths, a
//! whole leaf of them costs its known leaf hash, a whole chunk of them
//! (between batches) the known chunk hash, fed by the root thread.
//!
//! The same workers compute version 2's scheme (no page level, a chunk's
//! hash is that of its bytes) for `verify` of older manifests.

use super::hashing::{Algorithm, CHUNKED_TAG, CHUNKED_TAG_V1, Chunking, HashPair, zero_hash};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

/// Data bytes after which a batch is handed to a worker at the next chunk
/// boundary.
const BATCH_BYTES: usize = 1 << 20;

/// A run of the stream inside a batch.
#[derive(Debug, Clone, Copy)]
enum Run {
    /// This many bytes, the next ones of the batch's data.
    Data(u64),
    Zeros(u64),
}

/// Consecutive chunks on their way to a worker: the batch starts on a chunk
/// boundary and ends on one, or at the end of the stream.
struct Batch {
    data: Vec<u8>,
    runs: Vec<Run>,
    /// Where the worker puts the hashes of the batch's chunks.
    result: mpsc::SyncSender<Vec<HashPair>>,
}

impl Batch {
    fn push(&mut self, run: Run) {
        match (self.runs.last_mut(), run) {
            (Some(Run::Data(n)), Run::Data(m)) | (Some(Run::Zeros(n)), Run::Zeros(m)) => *n += m,
            _ => self.runs.push(run),
        }
    }
}

/// The root thread's input, in stream order.
enum Entry {
    /// This many whole chunks of zeros.
    ZeroChunks(u64),
    /// The hashes of the next chunks, once a worker has them.
    Batch(mpsc::Receiver<Vec<HashPair>>),
    /// The stream's length: the end.
    End(u64),
}

/// The shape of the hash and its known values for zeros.
#[derive(Clone, Copy)]
struct Scheme {
    /// Bytes per leaf, or in version 2's scheme per chunk.
    leaf_size: u64,
    /// Leaves per chunk; 1 and no chunk level in version 2's scheme.
    per_chunk: u64,
    two_level: bool,
    zero_leaf: HashPair,
    zero_chunk: HashPair,
}

pub(super) struct ChunkWorkers {
    chunk_size: u64,
    /// Bytes of the stream handed over so far.
    len: u64,
    current: Option<Batch>,
    /// Whole chunks of zeros not yet announced to the root thread.
    zero_chunks: u64,
    /// Zeros after the last whole chunk of zeros, between batches: fewer
    /// than a chunk, from a chunk boundary.
    loose_zeros: u64,
    jobs: Option<mpsc::SyncSender<Batch>>,
    order: Option<mpsc::Sender<Entry>>,
    free_rx: mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    max_buffers: usize,
    stop: Arc<AtomicBool>,
    root: Option<JoinHandle<HashPair>>,
}

impl ChunkWorkers {
    /// Starts the workers (one per CPU, at most 8) and the root thread.
    pub(super) fn new(chunking: Chunking) -> ChunkWorkers {
        let scheme = Scheme::new(chunking);
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        let queued = 2 * workers;
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Batch>(queued);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        for i in 0..workers {
            let jobs_rx = jobs_rx.clone();
            let free_tx = free_tx.clone();
            std::thread::Builder::new()
                .name(format!("coresnap-hash-{i}"))
                .spawn(move || worker(&jobs_rx, &free_tx, scheme))
                .expect("spawn hashing worker");
        }
        let (order_tx, order_rx) = mpsc::channel::<Entry>();
        let stop = Arc::new(AtomicBool::new(false));
        let root = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("coresnap-hash-root".into())
                .spawn(move || root_thread(chunking, scheme.zero_chunk, &order_rx, &stop))
                .expect("spawn hashing root thread")
        };
        ChunkWorkers {
            chunk_size: chunking.chunk_size,
            len: 0,
            current: None,
            zero_chunks: 0,
            loose_zeros: 0,
            jobs: Some(jobs_tx),
            order: Some(order_tx),
            free_rx,
            allocated: 0,
            // Queued batches, one in each worker's hands, one being filled.
            max_buffers: queued + workers + 1,
            stop,
            root: Some(root),
        }
    }

    /// Bytes from here to the next chunk boundary (a whole chunk on one).
    fn to_boundary(&self) -> u64 {
        self.chunk_size - self.len % self.chunk_size
    }

    pub(super) fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.to_boundary().min(data.len() as u64) as usize;
            let batch = self.current_batch();
            batch.data.extend_from_slice(&data[..n]);
            batch.push(Run::Data(n as u64));
            data = &data[n..];
            self.len += n as u64;
            self.dispatch_if_full();
        }
    }

    pub(super) fn zeros(&mut self, mut n: u64) {
        // The rest of a chunk that holds data.
        if self.current.is_some() && !self.len.is_multiple_of(self.chunk_size) {
            let k = n.min(self.to_boundary());
            self.push_zeros(k);
            n -= k;
        }
        if n == 0 {
            return;
        }
        if self.current.is_some() {
            if n < self.chunk_size {
                // Data may follow in this chunk: it stays in the batch.
                self.push_zeros(n);
                return;
            }
            self.dispatch();
        }
        // Between batches zeros are only counted: whole chunks of them, and
        // the start of a chunk, which goes into a batch only if data follows.
        self.len += n;
        self.loose_zeros += n;
        self.zero_chunks += self.loose_zeros / self.chunk_size;
        self.loose_zeros %= self.chunk_size;
    }

    fn push_zeros(&mut self, n: u64) {
        self.current_batch().push(Run::Zeros(n));
        self.len += n;
        self.dispatch_if_full();
    }

    /// The batch being filled, started if there is none.
    fn current_batch(&mut self) -> &mut Batch {
        if self.current.is_none() {
            if self.zero_chunks > 0 {
                let k = std::mem::take(&mut self.zero_chunks);
                self.announce(Entry::ZeroChunks(k));
            }
            let mut data = self.take_buffer();
            data.clear();
            let (result, receiver) = mpsc::sync_channel(1);
            self.announce(Entry::Batch(receiver));
            // Zeros counted since the last chunk boundary open the batch.
            let runs = match std::mem::take(&mut self.loose_zeros) {
                0 => Vec::new(),
                n => vec![Run::Zeros(n)],
            };
            self.current = Some(Batch { data, runs, result });
        }
        self.current.as_mut().expect("just started")
    }

    /// Hands the batch over once it holds enough data and ends a chunk.
    fn dispatch_if_full(&mut self) {
        let full = self
            .current
            .as_ref()
            .is_some_and(|b| b.data.len() >= BATCH_BYTES);
        if full && self.len.is_multiple_of(self.chunk_size) {
            self.dispatch();
        }
    }

    fn dispatch(&mut self) {
        if let (Some(batch), Some(jobs)) = (self.current.take(), &self.jobs) {
            // Fails only if every worker is gone (one panicked): the root
            // thread then finds the batch's result missing and says so.
            let _ = jobs.send(batch);
        }
    }

    fn announce(&mut self, entry: Entry) {
        if let Some(order) = &self.order {
            let _ = order.send(entry);
        }
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        let capacity = BATCH_BYTES + self.chunk_size as usize;
        if let Ok(buf) = self.free_rx.try_recv() {
            return buf;
        }
        if self.allocated < self.max_buffers {
            self.allocated += 1;
            return Vec::with_capacity(capacity);
        }
        self.free_rx
            .recv()
            .unwrap_or_else(|_| Vec::with_capacity(capacity))
    }

    /// Waits for every chunk and returns the two roots.
    pub(super) fn finish(mut self) -> HashPair {
        // A stream that ends in a short chunk of zeros: hashed as a chunk.
        if self.current.is_none() && self.loose_zeros > 0 {
            self.current_batch();
        }
        self.dispatch();
        if self.zero_chunks > 0 {
            let k = std::mem::take(&mut self.zero_chunks);
            self.announce(Entry::ZeroChunks(k));
        }
        let len = self.len;
        self.announce(Entry::End(len));
        self.jobs = None;
        self.order = None;
        match self.root.take().expect("finished once").join() {
            Ok(roots) => roots,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for ChunkWorkers {
    fn drop(&mut self) {
        // Abandoned (the dump failed): stop feeding zero chunks nobody will
        // use. Every thread exits once its channel is closed.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Scheme {
    fn new(chunking: Chunking) -> Scheme {
        match chunking.leaf_size {
            Some(leaf) => {
                let per_chunk = chunking.chunk_size / leaf;
                let zero_leaf = HashPair {
                    blake3: zero_hash::<blake3::Hasher>(leaf),
                    sha256: zero_hash::<sha2::Sha256>(leaf),
                };
                Scheme {
                    leaf_size: leaf,
                    per_chunk,
                    two_level: true,
                    zero_leaf,
                    zero_chunk: HashPair {
                        blake3: repeated_hash::<blake3::Hasher>(&zero_leaf.blake3, per_chunk),
                        sha256: repeated_hash::<sha2::Sha256>(&zero_leaf.sha256, per_chunk),
                    },
                }
            }
            None => {
                let zero = HashPair {
                    blake3: zero_hash::<blake3::Hasher>(chunking.chunk_size),
                    sha256: zero_hash::<sha2::Sha256>(chunking.chunk_size),
                };
                Scheme {
                    leaf_size: chunking.chunk_size,
                    per_chunk: 1,
                    two_level: false,
                    zero_leaf: zero,
                    zero_chunk: zero,
                }
            }
        }
    }
}

fn worker(jobs: &Mutex<mpsc::Receiver<Batch>>, free: &mpsc::Sender<Vec<u8>>, scheme: Scheme) {
    loop {
        // The lock is held only while waiting for the next batch.
        let batch = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(batch) = batch else { return };
        let blake3 = chunk_hashes::<blake3::Hasher>(&batch, &scheme, |p| p.blake3);
        let sha256 = chunk_hashes::<sha2::Sha256>(&batch, &scheme, |p| p.sha256);
        let pairs = blake3
            .into_iter()
            .zip(sha256)
            .map(|(blake3, sha256)| HashPair { blake3, sha256 })
            .collect();
        let _ = batch.result.send(pairs);
        let _ = free.send(batch.data);
    }
}

/// The hashes of the chunks of `batch`, with one algorithm.
fn chunk_hashes<A: Algorithm>(
    batch: &Batch,
    scheme: &Scheme,
    pick: impl Fn(&HashPair) -> [u8; 32],
) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    let mut state = ChunkState::<A> {
        scheme,
        zero_leaf: pick(&scheme.zero_leaf),
        leaf: A::new(),
        leaf_filled: 0,
        chunk: A::new(),
        leaves: 0,
        out: &mut out,
    };
    let mut data = batch.data.as_slice();
    for run in &batch.runs {
        match *run {
            Run::Data(n) => {
                let (bytes, rest) = data.split_at(n as usize);
                state.data(bytes);
                data = rest;
            }
            Run::Zeros(n) => state.zeros(n),
        }
    }
    state.close();
    out
}

/// Hashing one batch, leaf by leaf, chunk by chunk.
struct ChunkState<'a, A> {
    scheme: &'a Scheme,
    zero_leaf: [u8; 32],
    leaf: A,
    /// Bytes of the current leaf hashed so far.
    leaf_filled: u64,
    /// The hash over the current chunk's leaf hashes (scheme v2).
    chunk: A,
    /// Leaves of the current chunk closed so far.
    leaves: u64,
    out: &'a mut Vec<[u8; 32]>,
}

impl<A: Algorithm> ChunkState<'_, A> {
    fn data(&mut self, mut bytes: &[u8]) {
        let leaf_size = self.scheme.leaf_size;
        while !bytes.is_empty() {
            // A stored leaf of zeros (a .zst's, another tool's core) costs
            // a scan, not a hash; a leaf of data, a look at its first bytes.
            if self.scheme.two_level && self.leaf_filled == 0 && bytes.len() as u64 >= leaf_size {
                let (leaf, rest) = bytes.split_at(leaf_size as usize);
                if super::is_zero(&leaf[..64.min(leaf.len())]) && super::is_zero(leaf) {
                    self.leaf_done(self.zero_leaf);
                    bytes = rest;
                    continue;
                }
            }
            let n = (leaf_size - self.leaf_filled).min(bytes.len() as u64) as usize;
            self.leaf.update(&bytes[..n]);
            self.leaf_filled += n as u64;
            bytes = &bytes[n..];
            if self.leaf_filled == leaf_size {
                self.close_leaf();
            }
        }
    }

    fn zeros(&mut self, mut n: u64) {
        let leaf_size = self.scheme.leaf_size;
        // Zeros that share a leaf with data are hashed as bytes.
        if self.leaf_filled > 0 {
            let k = n.min(leaf_size - self.leaf_filled);
            self.zero_bytes(k);
            n -= k;
        }
        while n >= leaf_size {
            self.leaf_done(self.zero_leaf);
            n -= leaf_size;
        }
        self.zero_bytes(n);
    }

    fn zero_bytes(&mut self, mut n: u64) {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.data(&ZEROS[..k]);
            n -= k as u64;
        }
    }

    fn close_leaf(&mut self) {
        let digest = self.leaf.finish_reset();
        self.leaf_filled = 0;
        self.leaf_done(digest);
    }

    fn leaf_done(&mut self, digest: [u8; 32]) {
        if !self.scheme.two_level {
            self.out.push(digest);
            return;
        }
        self.chunk.update(&digest);
        self.leaves += 1;
        if self.leaves == self.scheme.per_chunk {
            self.close_chunk();
        }
    }

    fn close_chunk(&mut self) {
        self.out.push(self.chunk.finish_reset());
        self.leaves = 0;
    }

    /// The end of the batch: a short last leaf and chunk (end of stream).
    fn close(&mut self) {
        if self.leaf_filled > 0 {
            self.close_leaf();
        }
        if self.leaves > 0 {
            self.close_chunk();
        }
    }
}

/// Zeros hashed as bytes: only those sharing a leaf with data.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// H(`leaf` repeated `count` times): the hash of a chunk of zeros.
fn repeated_hash<A: Algorithm>(leaf: &[u8; 32], count: u64) -> [u8; 32] {
    let mut h = A::new();
    for _ in 0..count {
        h.update(leaf);
    }
    h.finish_reset()
}

fn root_thread(
    chunking: Chunking,
    zero_chunk: HashPair,
    order: &mpsc::Receiver<Entry>,
    stop: &AtomicBool,
) -> HashPair {
    let start = |root: &mut dyn FnMut(&[u8])| match chunking.leaf_size {
        Some(leaf) => {
            root(CHUNKED_TAG);
            root(&leaf.to_le_bytes());
            root(&chunking.chunk_size.to_le_bytes());
        }
        None => {
            root(CHUNKED_TAG_V1);
            root(&chunking.chunk_size.to_le_bytes());
        }
    };
    let mut blake = blake3::Hasher::new();
    let mut sha = <sha2::Sha256 as Algorithm>::new();
    start(&mut |b| Algorithm::update(&mut blake, b));
    start(&mut |b| Algorithm::update(&mut sha, b));
    let blake_zeros = zero_chunk.blake3.repeat(1024);
    let sha_zeros = zero_chunk.sha256.repeat(1024);
    for entry in order {
        match entry {
            Entry::ZeroChunks(mut k) => {
                while k > 0 && !stop.load(Ordering::Relaxed) {
                    let n = k.min(1024) as usize;
                    Algorithm::update(&mut blake, &blake_zeros[..32 * n]);
                    Algorithm::update(&mut sha, &sha_zeros[..32 * n]);
                    k -= n as u64;
                }
            }
            Entry::Batch(result) => {
                let Ok(pairs) = result.recv() else {
                    // Abandoned with a batch half filled, or a worker died.
                    assert!(
                        stop.load(Ordering::Relaxed),
                        "a hashing worker died before hashing its batch"
                    );
                    break;
                };
                for pair in pairs {
                    Algorithm::update(&mut blake, &pair.blake3);
                    Algorithm::update(&mut sha, &pair.sha256);
                }
            }
            Entry::End(len) => {
                Algorithm::update(&mut blake, &len.to_le_bytes());
                Algorithm::update(&mut sha, &len.to_le_bytes());
                return HashPair {
                    blake3: blake.finish_reset(),
                    sha256: sha.finish_reset(),
                };
            }
        }
    }
    // The stream was abandoned: nobody waits for this.
    HashPair {
        blake3: [0; 32],
        sha256: [0; 32],
    }
}
