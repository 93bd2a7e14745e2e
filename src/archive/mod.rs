//! Working with cores after the dump: reading a compressed core
//! ([`reader`]: any byte range, frame by frame), restoring it as a sparse
//! file ([`unpack`]), and checking a core or its `.zst` against its
//! manifest ([`verify`]).
//!
//! Writing the compressed core is a sink ([`crate::sink::zstd_seekable`]);
//! the manifest's model is [`crate::manifest`].

pub mod elfscan;
pub mod reader;
pub mod scan;
pub mod unpack;
pub mod verify;

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; remove it or pass --force to replace it")]
    OutputExists { path: PathBuf },
    #[error("{path} is not a zstd file")]
    NotZstd { path: PathBuf },
    #[error("{path}: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("interrupted by signal {signal}")]
    Interrupted { signal: i32 },
}

/// What a file starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// An ELF file (a plain core).
    Elf,
    /// A zstd frame (a compressed core).
    Zstd,
    Other,
}

/// zstd frame magic, little endian.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl FileKind {
    pub fn of(head: &[u8]) -> FileKind {
        if head.starts_with(b"\x7fELF") {
            FileKind::Elf
        } else if head.starts_with(&ZSTD_MAGIC) {
            FileKind::Zstd
        } else {
            FileKind::Other
        }
    }
}
