//! Where a core's bytes come from: a byte slice, a file read with positional
//! reads, or a `.zst` in the zstd seekable format, read frame by frame
//! through its seek table. Everything above this module asks for byte ranges
//! by offset and never reads more than it needs.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Random access to the bytes of a core.
pub trait ByteSource {
    /// Length of the (uncompressed) core.
    fn len(&self) -> u64;

    /// True for an empty core.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads at `offset`; short only at the end of the core.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self.read_at(offset, buf)?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "wanted {} bytes at offset {offset:#x}, the core ends after {n}",
                    buf.len()
                ),
            ));
        }
        Ok(())
    }

    /// Bytes of `offset..offset + len` that are holes in a sparse file
    /// (`None`: this source cannot tell).
    fn hole_bytes(&self, _offset: u64, _len: u64) -> Option<u64> {
        None
    }

    /// Decompression counters, for a compressed source.
    fn decompression(&self) -> Option<DecompressionStats> {
        None
    }
}

/// What a compressed source has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DecompressionStats {
    /// Frames in the file.
    pub frames: u32,
    /// Frame decompressions done (a frame evicted from the cache and needed
    /// again counts twice).
    pub frames_decompressed: u64,
    /// Uncompressed bytes those decompressions produced.
    pub bytes_decompressed: u64,
    /// Compressed bytes read for them.
    pub compressed_bytes_read: u64,
}

impl<S: ByteSource + ?Sized> ByteSource for &S {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
    fn hole_bytes(&self, offset: u64, len: u64) -> Option<u64> {
        (**self).hole_bytes(offset, len)
    }
    fn decompression(&self) -> Option<DecompressionStats> {
        (**self).decompression()
    }
}

impl<S: ByteSource + ?Sized> ByteSource for Box<S> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
    fn hole_bytes(&self, offset: u64, len: u64) -> Option<u64> {
        (**self).hole_bytes(offset, len)
    }
    fn decompression(&self) -> Option<DecompressionStats> {
        (**self).decompression()
    }
}

/// A core held in memory (a `Vec<u8>`, a slice, a mapped file).
pub struct Bytes<T>(pub T);

impl<T: Deref<Target = [u8]>> ByteSource for Bytes<T> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let data: &[u8] = &self.0;
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(rest) = data.get(start..) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

/// A plain core file, read with `pread`.
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    pub fn new(file: File) -> io::Result<FileSource> {
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }
}

impl ByteSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
    fn hole_bytes(&self, offset: u64, len: u64) -> Option<u64> {
        data_bytes(&self.file, offset, len).map(|data| len - data)
    }
}

/// Bytes of `offset..offset + len` of `file` that hold data, from
/// `SEEK_DATA`/`SEEK_HOLE` (`None` when the file system cannot say).
fn data_bytes(file: &File, offset: u64, len: u64) -> Option<u64> {
    use nix::unistd::{Whence, lseek};
    let end = offset.checked_add(len)?;
    let mut pos = offset;
    let mut data = 0u64;
    // Bounded: each round moves past one data run.
    for _ in 0..1_000_000 {
        if pos >= end {
            return Some(data);
        }
        let start = match lseek(file, i64::try_from(pos).ok()?, Whence::SeekData) {
            Ok(s) => s as u64,
            // ENXIO: no data after pos.
            Err(nix::errno::Errno::ENXIO) => return Some(data),
            Err(_) => return None,
        };
        if start >= end {
            return Some(data);
        }
        let hole = lseek(file, start as i64, Whence::SeekHole).ok()? as u64;
        data += hole.min(end) - start;
        pos = hole;
    }
    None
}

/// zstd frame magic, little endian.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Frames kept decompressed (4 MiB each for coresnap's files).
const CACHE_FRAMES: usize = 8;
/// Largest frame accepted, compressed or not: a frame is decoded from its
/// start into a buffer of its size, so the seek table of a hostile file
/// must not make that buffer large (coresnap writes 4 MiB frames).
pub const MAX_FRAME: u64 = crate::archive::reader::WHOLE_FRAME_LIMIT;
/// Bytes the cache of frames may hold in all, counting each frame's
/// uncompressed size and the compressed bytes read for it: with
/// [`MAX_FRAME`] (16 MiB: a frame costs at most 48 MiB while decoded), a
/// `.zst` never costs inspect or extract more than this (plus the seek
/// table, 8 to 12 bytes a frame of the file).
pub const CACHE_BYTES: u64 = 64 << 20;

/// A `.zst` core in the seekable format: only the frames that hold the
/// bytes asked for are decompressed, each only as far as the bytes asked
/// for (a thread's stack often sits at the start of a frame of heap), and
/// the last few are kept to continue from.
pub struct ZstdSource {
    file: File,
    table: zeekstd::SeekTable,
    file_len: u64,
    /// Uncompressed start of each frame, ascending.
    starts: Vec<u64>,
    cache: Mutex<Vec<PartialFrame>>,
    frames_decompressed: AtomicU64,
    bytes_decompressed: AtomicU64,
    compressed_read: AtomicU64,
}

/// Compressed bytes read from the file at a time.
const READ_STEP: usize = 64 << 10;
/// Bytes decompressed at least per step, so that a walk up a stack does
/// not resume the decoder for every few bytes.
const DECODE_STEP: usize = 64 << 10;

/// A frame decompressed from its start up to `decoded`.
struct PartialFrame {
    index: u32,
    /// The frame's uncompressed length; only `decoded` bytes are valid.
    bytes: Vec<u8>,
    decoded: usize,
    /// Compressed bytes read so far, and how many the decoder consumed.
    compressed: Vec<u8>,
    consumed: usize,
    compressed_start: u64,
    compressed_len: usize,
    /// `None` once the whole frame is decoded (and its checksum, if it has
    /// one, checked by zstd).
    decoder: Option<zstd::stream::raw::Decoder<'static>>,
}

use crate::archive::reader::seek_table_len;

/// A decoder that refuses frames asking for a window above
/// 2^[`crate::archive::reader::WINDOW_LOG_MAX`] bytes.
fn bounded_decoder() -> io::Result<zstd::stream::raw::Decoder<'static>> {
    let mut decoder = zstd::stream::raw::Decoder::new()?;
    decoder.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
        crate::archive::reader::WINDOW_LOG_MAX,
    ))?;
    Ok(decoder)
}

impl PartialFrame {
    /// What the frame may come to hold: its buffer, its compressed bytes,
    /// and while it is being decoded the decoder's window (at most the
    /// frame's size again).
    fn cost(&self) -> u64 {
        let window = if self.decoder.is_some() {
            self.bytes.len() as u64
        } else {
            0
        };
        self.bytes.len() as u64 + window + self.compressed_len as u64
    }
}

impl ZstdSource {
    /// Opens a seekable `.zst`; fails when it has no valid seek table or the
    /// table does not add up to the file's length.
    pub fn open(mut file: File) -> Result<ZstdSource, String> {
        let file_len = file.metadata().map_err(|e| e.to_string())?.len();
        let table_len = seek_table_len(&file, file_len)?;
        let table = zeekstd::SeekTable::from_seekable(&mut file)
            .map_err(|e| format!("bad seek table: {e}"))?;
        if table.size_comp().checked_add(table_len) != Some(file_len) {
            return Err(format!(
                "the seek table covers {} bytes of frames plus a {table_len}-byte table, but the file has {file_len} bytes",
                table.size_comp()
            ));
        }
        let mut starts = Vec::with_capacity(table.num_frames() as usize);
        for index in 0..table.num_frames() {
            let start = table.frame_start_decomp(index).map_err(|e| e.to_string())?;
            let len = table.frame_size_decomp(index).map_err(|e| e.to_string())?;
            let compressed = table.frame_size_comp(index).map_err(|e| e.to_string())?;
            if len > MAX_FRAME || compressed > MAX_FRAME {
                return Err(format!(
                    "the seek table's frame {index} claims {len} bytes ({compressed} compressed), more than the {} MiB coresnap decodes in one frame",
                    MAX_FRAME >> 20
                ));
            }
            starts.push(start);
        }
        Ok(ZstdSource {
            file,
            table,
            file_len,
            starts,
            cache: Mutex::new(Vec::new()),
            frames_decompressed: AtomicU64::new(0),
            bytes_decompressed: AtomicU64::new(0),
            compressed_read: AtomicU64::new(0),
        })
    }

    /// Length of the compressed file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Copies frame `index`'s bytes from `from` into `buf`, decompressing
    /// the frame as far as needed; returns how many were copied (fewer only
    /// at the frame's end).
    fn read_frame(&self, index: u32, from: usize, buf: &mut [u8]) -> io::Result<usize> {
        let corrupt = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let pos = match cache.iter().position(|f| f.index == index) {
            Some(pos) => pos,
            None => {
                let frame = self.start_frame(index)?;
                // Least recently used first.
                while !cache.is_empty()
                    && (cache.len() >= CACHE_FRAMES
                        || cache.iter().map(PartialFrame::cost).sum::<u64>() + frame.cost()
                            > CACHE_BYTES)
                {
                    cache.remove(0);
                }
                cache.push(frame);
                cache.len() - 1
            }
        };
        // Most recently used last.
        let entry = cache.remove(pos);
        cache.push(entry);
        let frame = cache.last_mut().expect("just pushed");
        let len = frame.bytes.len();
        let end = from.saturating_add(buf.len()).min(len);
        if end > frame.decoded {
            let want = end.max(frame.decoded.saturating_add(DECODE_STEP)).min(len);
            let before = frame.decoded;
            let result = self.decode_to(frame, want);
            self.bytes_decompressed
                .fetch_add((frame.decoded - before) as u64, Ordering::Relaxed);
            if let Err(e) = result {
                cache.pop();
                return Err(corrupt(format!("frame {index} does not decompress: {e}")));
            }
        }
        let Some(available) = frame.bytes.get(from..end) else {
            return Ok(0);
        };
        buf[..available.len()].copy_from_slice(available);
        Ok(available.len())
    }

    fn start_frame(&self, index: u32) -> io::Result<PartialFrame> {
        let corrupt = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let c_start = self
            .table
            .frame_start_comp(index)
            .map_err(|e| corrupt(e.to_string()))?;
        let c_len = self
            .table
            .frame_size_comp(index)
            .map_err(|e| corrupt(e.to_string()))?;
        let d_len = self
            .table
            .frame_size_decomp(index)
            .map_err(|e| corrupt(e.to_string()))?;
        if c_len > MAX_FRAME || d_len > MAX_FRAME {
            return Err(corrupt(format!(
                "frame {index} claims {c_len} compressed bytes"
            )));
        }
        self.frames_decompressed.fetch_add(1, Ordering::Relaxed);
        Ok(PartialFrame {
            index,
            // Zeroed by the allocator (calloc): pages not decoded into are
            // never touched.
            bytes: vec![0; d_len as usize],
            decoded: 0,
            compressed: Vec::new(),
            consumed: 0,
            compressed_start: c_start,
            compressed_len: c_len as usize,
            decoder: Some(bounded_decoder()?),
        })
    }

    /// Decodes `frame` until at least `want` bytes are there.
    fn decode_to(&self, frame: &mut PartialFrame, want: usize) -> io::Result<()> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let len = frame.bytes.len();
        while frame.decoded < want {
            let Some(decoder) = frame.decoder.as_mut() else {
                break;
            };
            if frame.consumed == frame.compressed.len() {
                let have = frame.compressed.len();
                let more = (frame.compressed_len - have).min(have.max(READ_STEP));
                if more == 0 {
                    return Err(io::Error::other(format!(
                        "its compressed bytes end after {} of {len} bytes",
                        frame.decoded
                    )));
                }
                frame.compressed.resize(have + more, 0);
                self.file.read_exact_at(
                    &mut frame.compressed[have..],
                    frame.compressed_start + have as u64,
                )?;
                self.compressed_read
                    .fetch_add(more as u64, Ordering::Relaxed);
            }
            let mut input = InBuffer::around(&frame.compressed[frame.consumed..]);
            let mut output = OutBuffer::around_pos(&mut frame.bytes[..want], frame.decoded);
            let remaining = decoder.run(&mut input, &mut output)?;
            let progressed = input.pos() > 0 || output.pos() > frame.decoded;
            frame.consumed += input.pos();
            frame.decoded = output.pos();
            if remaining == 0 {
                // The frame is complete.
                frame.decoder = None;
                if frame.decoded != len {
                    return Err(io::Error::other(format!(
                        "it holds {} bytes, the seek table says {len}",
                        frame.decoded
                    )));
                }
            } else if !progressed && frame.consumed < frame.compressed.len() {
                return Err(io::Error::other("the decoder made no progress"));
            }
        }
        Ok(())
    }
}

impl ByteSource for ZstdSource {
    fn len(&self) -> u64 {
        self.table.size_decomp()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset.saturating_add(done as u64);
            if at >= self.len() {
                break;
            }
            let index = self.starts.partition_point(|&s| s <= at).saturating_sub(1);
            let from = (at - self.starts[index]) as usize;
            let n = self.read_frame(index as u32, from, &mut buf[done..])?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
    fn decompression(&self) -> Option<DecompressionStats> {
        Some(DecompressionStats {
            frames: self.table.num_frames(),
            frames_decompressed: self.frames_decompressed.load(Ordering::Relaxed),
            bytes_decompressed: self.bytes_decompressed.load(Ordering::Relaxed),
            compressed_bytes_read: self.compressed_read.load(Ordering::Relaxed),
        })
    }
}

/// The format of a file, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileFormat {
    ElfCore,
    ZstdSeekable,
}

/// An opened core file: its bytes and what the file itself is.
pub struct OpenedFile {
    pub path: PathBuf,
    pub format: FileFormat,
    /// Length of the file (compressed, for a `.zst`).
    pub file_len: u64,
    /// Bytes the file takes on disk (`st_blocks` x 512).
    pub disk_usage: u64,
    pub source: Box<dyn ByteSource + Send + Sync>,
}

/// Errors opening a file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
}

/// Opens `path`, a plain core or a seekable `.zst` (recognised by its
/// magic, whatever its name).
pub fn open(path: &Path) -> Result<OpenedFile, OpenError> {
    let io_err = |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if meta.is_dir() {
        return Err(OpenError::Format {
            path: path.to_path_buf(),
            what: "is a directory".into(),
        });
    }
    let mut head = [0u8; 4];
    let n = FileExt::read_at(&file, &mut head, 0).map_err(io_err)?;
    let disk_usage = meta.blocks() * 512;
    if n == 4 && head == ZSTD_MAGIC {
        let source = ZstdSource::open(file).map_err(|what| OpenError::Format {
            path: path.to_path_buf(),
            what: format!(
                "a zstd file that cannot be read by offset ({what}); decompress it with `zstd -d` first"
            ),
        })?;
        return Ok(OpenedFile {
            path: path.to_path_buf(),
            format: FileFormat::ZstdSeekable,
            file_len: meta.len(),
            disk_usage,
            source: Box::new(source),
        });
    }
    Ok(OpenedFile {
        path: path.to_path_buf(),
        format: FileFormat::ElfCore,
        file_len: meta.len(),
        disk_usage,
        source: Box::new(FileSource::new(file).map_err(io_err)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A seekable file written by zeekstd itself (not by coresnap's sink):
    /// the reader follows the format, not one writer.
    #[test]
    fn reads_a_zeekstd_file_frame_by_frame() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i * 7).to_le_bytes())
            .collect();
        let mut out = Vec::new();
        let opts = zeekstd::EncodeOptions::new()
            .frame_size_policy(zeekstd::FrameSizePolicy::Uncompressed(100_000));
        let mut enc = zeekstd::Encoder::with_opts(&mut out, opts).unwrap();
        enc.write_all(&data).unwrap();
        enc.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.zst");
        std::fs::write(&path, &out).unwrap();
        let opened = open(&path).unwrap();
        assert_eq!(opened.format, FileFormat::ZstdSeekable);
        let src = &opened.source;
        assert_eq!(src.len(), data.len() as u64);
        let mut buf = vec![0u8; 50];
        src.read_exact_at(250_000, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[250_000..250_050]);
        let stats = src.decompression().unwrap();
        assert_eq!(stats.frames, 12);
        assert_eq!(stats.frames_decompressed, 1);
        // Across a frame boundary, and past the end.
        src.read_exact_at(199_990, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[199_990..200_040]);
        assert_eq!(src.read_at(data.len() as u64 - 10, &mut buf).unwrap(), 10);
        assert!(src.decompression().unwrap().frames_decompressed <= 4);

        // Cut: no seek table, a clear error.
        std::fs::write(&path, &out[..out.len() - 5]).unwrap();
        let err = open(&path).err().expect("truncated .zst must fail");
        assert!(err.to_string().contains("zstd -d"), "{err}");
    }

    #[test]
    fn byte_slices_read_short_at_the_end() {
        let b = Bytes(vec![1u8, 2, 3]);
        let mut buf = [0u8; 5];
        assert_eq!(b.read_at(1, &mut buf).unwrap(), 2);
        assert_eq!(b.read_at(u64::MAX, &mut buf).unwrap(), 0);
        assert!(b.read_exact_at(2, &mut buf).is_err());
    }
}
