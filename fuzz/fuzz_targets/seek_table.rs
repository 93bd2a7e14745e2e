//! A `.zst` file's seek table and frames, as unpack and verify read them
//! (SeekableCore) and as inspect and extract read them (ZstdSource), on
//! arbitrary bytes: whatever the table claims, reading stays within the
//! documented limits and errors are errors, not panics.
#![no_main]

use coresnap::archive::reader::SeekableCore;
use coresnap::inspect::source::{ByteSource, ZstdSource};
use libfuzzer_sys::fuzz_target;
use std::io::{Seek, Write};
use std::path::Path;

/// Frames claiming more than this are not streamed here: a few KiB of RLE
/// blocks can honestly hold gigabytes, which only costs time.
const STREAM_AT_MOST: u64 = 64 << 20;

fn file_with(data: &[u8]) -> std::fs::File {
    let path = format!("/dev/shm/coresnap-fuzz-seek-table-{}", std::process::id());
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("scratch file in /dev/shm");
    let _ = std::fs::remove_file(&path);
    file.write_all(data).expect("write scratch file");
    file.rewind().expect("rewind");
    file
}

fuzz_target!(|data: &[u8]| {
    let file = file_with(data);
    if let Ok(core) = SeekableCore::from_file(file.try_clone().expect("dup"), Path::new("fuzz")) {
        let mut decompressor = SeekableCore::decompressor().expect("decompressor");
        let mut out = Vec::new();
        for index in 0..core.frames().min(64) {
            let (_, len) = core.frame_range(index);
            if core.frame_is_small(index) {
                if let Ok(raw) = core.raw_frame(index) {
                    let _ = coresnap::archive::reader::rle_zero_frame_len(&raw);
                    if core
                        .decode_frame(index, &raw, &mut decompressor, &mut out)
                        .is_ok()
                    {
                        assert_eq!(out.len() as u64, len);
                    }
                }
            } else if len <= STREAM_AT_MOST {
                let mut total = 0u64;
                if let Ok(input) = core.compressed_reader(index) {
                    let streamed = core.stream_frame(index, input, |at, piece| {
                        assert_eq!(at, total);
                        total += piece.len() as u64;
                        Ok(())
                    });
                    if streamed.is_ok() {
                        assert_eq!(total, len);
                    }
                }
            }
        }
    }
    if let Ok(source) = ZstdSource::open(file) {
        let len = source.len();
        let mut buf = [0u8; 4096];
        for offset in [0, len / 3, len / 2, len.saturating_sub(100)] {
            let _ = source.read_at(offset, &mut buf);
        }
    }
});
