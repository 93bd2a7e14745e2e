//! Random access into a zstd seekable core: the seek table at the end of the
//! file says where each frame starts, compressed and uncompressed, so any
//! byte range of the core is read by decompressing only the frames that
//! hold it. Every frame carries a content checksum that zstd checks.
//!
//! The seek table is the file's own claim and is never trusted for memory:
//! a frame whose compressed or uncompressed size exceeds
//! [`WHOLE_FRAME_LIMIT`] is streamed ([`SeekableCore::stream_frame`]) in
//! pieces of [`PIECE`] bytes with a decoder window of at most
//! 2^[`WINDOW_LOG_MAX`] bytes, and decoding stops as soon as a frame yields
//! more than the table says. So one decoding thread holds at most
//! 2 x 16 MiB + 32 MiB whatever the file claims (`docs/SECURITY.md`).

use super::ArchiveError;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Frames up to this size (compressed and uncompressed) are decoded in one
/// call into one buffer: coresnap writes 4 MiB frames.
pub const WHOLE_FRAME_LIMIT: u64 = 16 << 20;
/// Bytes handed on at a time when a frame is streamed.
pub const PIECE: usize = 1 << 20;
/// Largest decoder window accepted (2^25 = 32 MiB): a frame that asks for
/// more fails to decode instead of allocating it.
pub const WINDOW_LOG_MAX: u32 = 25;

const SKIPPABLE_MAGIC: u32 = 0x184d_2a5e;
const SEEKABLE_MAGIC: u32 = 0x8f92_eab1;

/// An open `.zst` core in the seekable format.
pub struct SeekableCore {
    path: PathBuf,
    file: File,
    table: zeekstd::SeekTable,
    file_len: u64,
    /// Bytes of the skippable frame that holds the seek table.
    table_len: u64,
}

impl SeekableCore {
    /// Opens `path` and reads its seek table; fails when the file has none
    /// or when the table does not add up to the file's length.
    pub fn open(path: &Path) -> Result<SeekableCore, ArchiveError> {
        let file = File::open(path).map_err(|source| ArchiveError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        SeekableCore::from_file(file, path)
    }

    /// Reads the seek table of an open file (`path` names it in errors).
    pub fn from_file(mut file: File, path: &Path) -> Result<SeekableCore, ArchiveError> {
        let read_err = |source| ArchiveError::Read {
            path: path.to_path_buf(),
            source,
        };
        let corrupt = |what: String| ArchiveError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        let file_len = file.metadata().map_err(read_err)?.len();
        let mut head = [0u8; 4];
        if file.read_exact_at(&mut head, 0).is_err() || head != super::ZSTD_MAGIC {
            return Err(ArchiveError::NotZstd {
                path: path.to_path_buf(),
            });
        }
        let table_len = seek_table_len(&file, file_len).map_err(corrupt)?;
        file.seek(SeekFrom::Start(0)).map_err(read_err)?;
        let table = zeekstd::SeekTable::from_seekable(&mut file)
            .map_err(|e| corrupt(format!("bad seek table: {e}")))?;
        let frames_end = table.size_comp();
        if frames_end + table_len != file_len {
            return Err(corrupt(format!(
                "the seek table covers {} bytes of frames plus a {table_len}-byte table, but the file has {file_len} bytes",
                frames_end
            )));
        }
        Ok(SeekableCore {
            path: path.to_path_buf(),
            file,
            table,
            file_len,
            table_len,
        })
    }

    /// A decompressor for [`SeekableCore::decode_frame`].
    pub fn decompressor() -> Result<zstd::bulk::Decompressor<'static>, ArchiveError> {
        zstd::bulk::Decompressor::new().map_err(|source| ArchiveError::Read {
            path: PathBuf::from("(zstd)"),
            source,
        })
    }

    /// Uncompressed length (the core's length).
    pub fn len(&self) -> u64 {
        self.table.size_decomp()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn frames(&self) -> u32 {
        self.table.num_frames()
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    pub fn seek_table_len(&self) -> u64 {
        self.table_len
    }

    /// Uncompressed (start, length) of frame `index`.
    pub fn frame_range(&self, index: u32) -> (u64, u64) {
        let start = self.table.frame_start_decomp(index).unwrap_or(0);
        let len = self.table.frame_size_decomp(index).unwrap_or(0);
        (start, len)
    }

    /// File (start, length) of frame `index`'s compressed bytes.
    pub fn compressed_range(&self, index: u32) -> Result<(u64, u64), ArchiveError> {
        let corrupt = |what: String| ArchiveError::Corrupt {
            path: self.path.clone(),
            what,
        };
        let start = self
            .table
            .frame_start_comp(index)
            .map_err(|e| corrupt(e.to_string()))?;
        let len = self
            .table
            .frame_size_comp(index)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok((start, len))
    }

    /// Whether frame `index` is small enough, compressed and uncompressed,
    /// to be read and decoded whole ([`WHOLE_FRAME_LIMIT`]); else it must be
    /// streamed.
    pub fn frame_is_small(&self, index: u32) -> bool {
        let (_, d_len) = self.frame_range(index);
        let c_len = self
            .compressed_range(index)
            .map_or(u64::MAX, |(_, len)| len);
        d_len <= WHOLE_FRAME_LIMIT && c_len <= WHOLE_FRAME_LIMIT
    }

    /// The compressed bytes of frame `index` (a small one:
    /// [`SeekableCore::frame_is_small`]).
    pub fn raw_frame(&self, index: u32) -> Result<Vec<u8>, ArchiveError> {
        let (start, len) = self.compressed_range(index)?;
        if len > WHOLE_FRAME_LIMIT {
            return Err(self.too_large(index));
        }
        let mut compressed = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut compressed, start)
            .map_err(|source| ArchiveError::Read {
                path: self.path.clone(),
                source,
            })?;
        Ok(compressed)
    }

    /// Decompresses `compressed`, the bytes of frame `index`, into `out`
    /// (reused from frame to frame: a fresh 4 MiB buffer per frame costs
    /// a thousand page faults).
    pub fn decode_frame(
        &self,
        index: u32,
        compressed: &[u8],
        decompressor: &mut zstd::bulk::Decompressor<'static>,
        out: &mut Vec<u8>,
    ) -> Result<(), ArchiveError> {
        let corrupt = |what: String| ArchiveError::Corrupt {
            path: self.path.clone(),
            what,
        };
        let (d_start, d_len) = self.frame_range(index);
        if d_len > WHOLE_FRAME_LIMIT {
            return Err(self.too_large(index));
        }
        out.clear();
        out.reserve(d_len as usize);
        decompressor
            .decompress_to_buffer(compressed, out)
            .map_err(|e| {
                corrupt(format!(
                    "frame {index} (core bytes {d_start:#x}..{:#x}) does not decompress: {e}",
                    d_start + d_len
                ))
            })?;
        if out.len() as u64 != d_len {
            return Err(corrupt(format!(
                "frame {index} holds {} bytes, the seek table says {d_len}",
                out.len()
            )));
        }
        Ok(())
    }

    fn too_large(&self, index: u32) -> ArchiveError {
        ArchiveError::Corrupt {
            path: self.path.clone(),
            what: format!(
                "frame {index} is larger than {} MiB and must be streamed",
                WHOLE_FRAME_LIMIT >> 20
            ),
        }
    }

    /// Decompresses frame `index`, whose compressed bytes `input` yields
    /// (exactly those: a reader over the frame's range of the file), and
    /// hands its bytes to `each` with their offset in the frame, in pieces
    /// of [`PIECE`] bytes (the last one shorter). Stops with an error as
    /// soon as the frame holds more than the seek table says, or needs a
    /// window above 2^[`WINDOW_LOG_MAX`]. Returns `input`, for the caller to
    /// read what the decoder left.
    pub fn stream_frame<R: Read>(
        &self,
        index: u32,
        input: R,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), ArchiveError>,
    ) -> Result<R, ArchiveError> {
        let (d_start, d_len) = self.frame_range(index);
        let corrupt = |what: String| ArchiveError::Corrupt {
            path: self.path.clone(),
            what: format!(
                "frame {index} (core bytes {d_start:#x}..{:#x}) {what}",
                d_start + d_len
            ),
        };
        let read_err = |source| ArchiveError::Read {
            path: self.path.clone(),
            source,
        };
        let mut decoder = zstd::stream::read::Decoder::new(input)
            .map_err(read_err)?
            .single_frame();
        decoder.window_log_max(WINDOW_LOG_MAX).map_err(read_err)?;
        let mut piece = vec![0u8; PIECE];
        let mut done = 0u64;
        loop {
            let mut filled = 0;
            while filled < piece.len() {
                match decoder.read(&mut piece[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(corrupt(format!("does not decompress: {e}"))),
                }
            }
            if filled == 0 {
                break;
            }
            if done + filled as u64 > d_len {
                return Err(corrupt(format!(
                    "holds more than the {d_len} bytes the seek table says"
                )));
            }
            each(done, &piece[..filled])?;
            done += filled as u64;
        }
        if done != d_len {
            return Err(corrupt(format!(
                "holds {done} bytes, the seek table says {d_len}"
            )));
        }
        Ok(decoder.finish().into_inner())
    }

    /// A reader of frame `index`'s compressed bytes, straight from the file.
    pub fn compressed_reader(&self, index: u32) -> Result<impl Read + '_, ArchiveError> {
        let (start, len) = self.compressed_range(index)?;
        Ok(FileRange {
            file: &self.file,
            pos: start,
            end: start.saturating_add(len),
        })
    }

    /// The uncompressed bytes of frame `index`.
    pub fn frame(
        &self,
        index: u32,
        decompressor: &mut zstd::bulk::Decompressor<'static>,
    ) -> Result<Vec<u8>, ArchiveError> {
        let compressed = self.raw_frame(index)?;
        let mut data = Vec::new();
        self.decode_frame(index, &compressed, decompressor, &mut data)?;
        Ok(data)
    }

    /// Reads core bytes at `offset` into `buf` (short only at the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        let mut decompressor =
            zstd::bulk::Decompressor::new().map_err(|source| ArchiveError::Read {
                path: self.path.clone(),
                source,
            })?;
        let mut done = 0;
        while done < buf.len() && offset + (done as u64) < self.len() {
            let at = offset + done as u64;
            let index = self.table.frame_index_decomp(at);
            let (start, _) = self.frame_range(index);
            let data = self.frame(index, &mut decompressor)?;
            let from = (at - start) as usize;
            let n = (data.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
            done += n;
        }
        Ok(done)
    }
}

/// A range of a file read in order with positional reads.
struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// If `frame` is exactly a frame of zeros made of RLE blocks (as the
/// compressing sink writes for holes), its length.
pub fn rle_zero_frame_len(frame: &[u8]) -> Option<u64> {
    if frame.len() < 9 || frame[..4] != super::ZSTD_MAGIC || frame[4] != 0b1010_0000 {
        return None;
    }
    let content = u64::from(u32::from_le_bytes(frame[5..9].try_into().ok()?));
    let mut total = 0u64;
    let mut rest = &frame[9..];
    loop {
        if rest.len() < 4 {
            return None;
        }
        let header = u32::from_le_bytes([rest[0], rest[1], rest[2], 0]);
        let (last, kind, size) = (header & 1, (header >> 1) & 3, u64::from(header >> 3));
        if kind != 1 || rest[3] != 0 || size > 128 << 10 {
            return None;
        }
        total += size;
        rest = &rest[4..];
        if last == 1 {
            break;
        }
    }
    (rest.is_empty() && total == content).then_some(content)
}

/// Length of the seek table's skippable frame, from the footer at the end of
/// the file (the format of zstd's `contrib/seekable_format`, which zeekstd
/// writes). Shared with `inspect`, which reads the same files.
pub fn seek_table_len(file: &File, file_len: u64) -> Result<u64, String> {
    if file_len < 17 {
        return Err("too short for a seek table".into());
    }
    let mut footer = [0u8; 9];
    file.read_exact_at(&mut footer, file_len - 9)
        .map_err(|e| e.to_string())?;
    let frames = u64::from(u32::from_le_bytes(
        footer[0..4].try_into().expect("4 bytes"),
    ));
    let descriptor = footer[4];
    let magic = u32::from_le_bytes(footer[5..9].try_into().expect("4 bytes"));
    if magic != SEEKABLE_MAGIC {
        return Err("no seek table at the end of the file (truncated, or not written by a seekable compressor)".into());
    }
    let per_frame = if descriptor & 0x80 != 0 { 12 } else { 8 };
    let len = 8 + frames * per_frame + 9;
    if len > file_len {
        return Err(format!(
            "the seek table claims {frames} frames, more than the file can hold"
        ));
    }
    let mut header = [0u8; 8];
    file.read_exact_at(&mut header, file_len - len)
        .map_err(|e| e.to_string())?;
    let magic = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let size = u64::from(u32::from_le_bytes(
        header[4..8].try_into().expect("4 bytes"),
    ));
    if magic != SKIPPABLE_MAGIC || size + 8 != len {
        return Err("the seek table's skippable frame header is damaged".into());
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Sink;
    use crate::sink::zstd_seekable::{CompressOptions, FRAME_LEN, ZstdSeekableSink};

    #[test]
    fn recognises_only_exact_zero_frames() {
        use crate::sink::zstd_seekable::zero_frame;
        assert_eq!(rle_zero_frame_len(&zero_frame(300_000)), Some(300_000));
        let mut bad = zero_frame(300_000);
        let last = bad.len() - 1;
        bad[last] = 1;
        assert_eq!(rle_zero_frame_len(&bad), None);
        assert_eq!(
            rle_zero_frame_len(&zstd::encode_all(&[0u8; 5000][..], 1).unwrap()),
            None
        );
    }

    #[test]
    fn reads_any_range() {
        let data: Vec<u8> = (0..(2 * FRAME_LEN + 777))
            .map(|i| (i % 253) as u8)
            .collect();
        let mut sink =
            ZstdSeekableSink::new(Vec::new(), CompressOptions { level: 1, jobs: 2 }).unwrap();
        sink.write_at(0, &data).unwrap();
        sink.finish(data.len() as u64).unwrap();
        let (out, _) = sink.complete().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.zst");
        std::fs::write(&path, &out).unwrap();
        let core = SeekableCore::open(&path).unwrap();
        assert_eq!(core.len(), data.len() as u64);
        assert_eq!(core.frames(), 3);
        let mut buf = vec![0u8; 10_000];
        let at = FRAME_LEN as u64 - 5000;
        assert_eq!(core.read_at(at, &mut buf).unwrap(), 10_000);
        assert_eq!(&buf[..], &data[at as usize..at as usize + 10_000]);
        assert_eq!(core.read_at(data.len() as u64 - 7, &mut buf).unwrap(), 7);

        std::fs::write(&path, &out[..out.len() - 3]).unwrap();
        assert!(matches!(
            SeekableCore::open(&path),
            Err(ArchiveError::Corrupt { .. })
        ));
    }
}
