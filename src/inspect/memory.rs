//! The target's memory as the core holds it: reads by address through the
//! PT_LOAD segments. Bytes past a segment's `p_filesz` (or past the end of a
//! truncated file) are not present, and a read of them fails naming the
//! first such address; nothing is made up.

use super::elf::{CoreFile, PT_LOAD};
use super::source::ByteSource;
use std::io;

/// One PT_LOAD, for lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// Bytes from `start` that the file holds.
    pub present: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Index of the program header.
    pub segment: usize,
}

/// Why memory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("{addr:#x} is not in the core: no PT_LOAD segment covers it")]
    Unmapped { addr: u64 },
    #[error(
        "{addr:#x} is not in the core: its mapping {start:#x}-{end:#x} is there, but the core holds only its first {present:#x} bytes"
    )]
    NotDumped {
        addr: u64,
        start: u64,
        end: u64,
        present: u64,
    },
    #[error("reading the core at {addr:#x}: {source}")]
    Io { addr: u64, source: io::Error },
}

impl MemError {
    /// The first address that could not be read.
    pub fn addr(&self) -> u64 {
        match self {
            MemError::Unmapped { addr }
            | MemError::NotDumped { addr, .. }
            | MemError::Io { addr, .. } => *addr,
        }
    }
}

/// Memory by address.
pub struct Memory<'c, S> {
    core: &'c CoreFile<S>,
    /// Sorted by start.
    regions: Vec<Region>,
}

impl<'c, S: ByteSource> Memory<'c, S> {
    pub fn new(core: &'c CoreFile<S>) -> Memory<'c, S> {
        let mut regions: Vec<Region> = core
            .segments
            .iter()
            .filter(|s| s.p_type == PT_LOAD && s.memsz > 0)
            .map(|s| Region {
                start: s.vaddr,
                end: s.end(),
                present: core.present(s).min(s.memsz),
                offset: s.offset,
                segment: s.index,
            })
            .collect();
        regions.sort_by_key(|r| (r.start, r.segment));
        Memory { core, regions }
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The region holding `addr`.
    pub fn region(&self, addr: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.start <= addr);
        // With overlapping segments, look back a little for one that holds it.
        self.regions[..i]
            .iter()
            .rev()
            .take(4)
            .find(|r| addr < r.end)
    }

    /// The region holding `at` and where its bytes present in the core end,
    /// or why `at` is not in the core.
    fn present_at(&self, at: u64) -> Result<(&Region, u64), MemError> {
        let r = self.region(at).ok_or(MemError::Unmapped { addr: at })?;
        let present_end = r.start.saturating_add(r.present);
        if at >= present_end {
            return Err(MemError::NotDumped {
                addr: at,
                start: r.start,
                end: r.end,
                present: r.present,
            });
        }
        Ok((r, present_end))
    }

    /// Checks that `len` bytes at `addr` are all present, without reading.
    pub fn check(&self, addr: u64, len: u64) -> Result<(), MemError> {
        let mut at = addr;
        let end = addr.saturating_add(len);
        while at < end {
            let (_, present_end) = self.present_at(at)?;
            at = present_end.min(end);
        }
        Ok(())
    }

    /// Fills `buf` from `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr.saturating_add(done as u64);
            let (r, present_end) = self.present_at(at)?;
            let n = ((present_end - at) as usize).min(buf.len() - done);
            let offset = r.offset + (at - r.start);
            self.core
                .source()
                .read_exact_at(offset, &mut buf[done..done + n])
                .map_err(|source| MemError::Io { addr: at, source })?;
            done += n;
        }
        Ok(())
    }

    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// Up to `max` bytes from `addr`, stopping at the first byte not present.
    pub fn read_prefix(&self, addr: u64, max: usize) -> Vec<u8> {
        let Some(r) = self.region(addr) else {
            return Vec::new();
        };
        let present_end = r.start.saturating_add(r.present);
        if addr >= present_end {
            return Vec::new();
        }
        let n = ((present_end - addr).min(max as u64)) as usize;
        let mut buf = vec![0u8; n];
        match self.read(addr, &mut buf) {
            Ok(()) => buf,
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::elf::tests::tiny_core;
    use crate::inspect::source::Bytes;

    #[test]
    fn reads_by_address_and_names_the_first_absent_byte() {
        let data: Vec<u8> = (0..64u8).collect();
        let core = CoreFile::parse(Bytes(tiny_core(&[], &data))).unwrap();
        let mem = Memory::new(&core);
        let mut buf = [0u8; 4];
        mem.read(0x1010, &mut buf).unwrap();
        assert_eq!(buf, [16, 17, 18, 19]);
        // The mapping is 0x2000 bytes, the core holds 64.
        let err = mem.read(0x103e, &mut buf).unwrap_err();
        assert_eq!(err.addr(), 0x1040);
        assert!(matches!(err, MemError::NotDumped { .. }), "{err}");
        assert!(matches!(
            mem.check(0x5000, 1),
            Err(MemError::Unmapped { addr: 0x5000 })
        ));
        assert_eq!(mem.read_prefix(0x1030, 100).len(), 16);
        assert_eq!(
            mem.read_u64(0x1000),
            Some(u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]))
        );
    }
}
