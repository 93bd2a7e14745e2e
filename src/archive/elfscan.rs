//! Reading a core's ELF header, program headers and notes from the first
//! bytes of a stream (the core may be coming out of a decompressor), asking
//! for more bytes until everything needed is there.

use crate::inspect::elf::{PT_LOAD, PT_NOTE};

/// Largest header block accepted (ELF header, program headers and notes,
/// from the start of the core): what verify holds in memory at most for
/// them. A core of 200,000 mappings and 10,000 threads needs about 60 MiB.
pub const MAX_HEADERS: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreHeaders {
    pub e_type: u16,
    pub program_headers: Vec<ProgramHeader>,
}

impl CoreHeaders {
    pub fn loads(&self) -> impl Iterator<Item = &ProgramHeader> {
        self.program_headers.iter().filter(|p| p.kind == PT_LOAD)
    }

    /// The bytes of the first PT_NOTE segment, from `prefix`.
    pub fn notes<'a>(&self, prefix: &'a [u8]) -> Option<&'a [u8]> {
        let note = self.program_headers.iter().find(|p| p.kind == PT_NOTE)?;
        prefix.get(note.offset as usize..(note.offset + note.filesz) as usize)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// At least this many bytes are needed.
    NeedMore(usize),
    Done(CoreHeaders),
    Invalid(String),
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Parses what `prefix` (the first bytes of the core) holds.
pub fn scan(prefix: &[u8]) -> Scan {
    if prefix.len() < 64 {
        return Scan::NeedMore(64);
    }
    if &prefix[..4] != b"\x7fELF" {
        return Scan::Invalid("no ELF magic at the start of the core".into());
    }
    if prefix[4] != 2 || prefix[5] != 1 {
        return Scan::Invalid("not a 64-bit little-endian ELF file".into());
    }
    let e_type = u16_at(prefix, 16);
    let phoff = u64_at(prefix, 32);
    let shoff = u64_at(prefix, 40);
    let phentsize = u64::from(u16_at(prefix, 54));
    let mut phnum = u64::from(u16_at(prefix, 56));
    if phentsize != 56 {
        return Scan::Invalid(format!("program header size {phentsize}, expected 56"));
    }
    if phnum == 0xffff {
        // PN_XNUM: the real count is sh_info of section header 0.
        let need = shoff.saturating_add(64);
        if need > MAX_HEADERS {
            return Scan::Invalid(format!("section header at {shoff:#x} is out of range"));
        }
        if (prefix.len() as u64) < need {
            return Scan::NeedMore(need as usize);
        }
        phnum = u64::from(u32_at(prefix, shoff as usize + 44));
    }
    let ph_end = phoff.saturating_add(phnum.saturating_mul(56));
    if ph_end > MAX_HEADERS {
        return Scan::Invalid(format!(
            "{phnum} program headers at {phoff:#x} are out of range"
        ));
    }
    if (prefix.len() as u64) < ph_end {
        return Scan::NeedMore(ph_end as usize);
    }
    let program_headers: Vec<ProgramHeader> = (0..phnum as usize)
        .map(|i| {
            let p = &prefix[phoff as usize + i * 56..];
            ProgramHeader {
                kind: u32_at(p, 0),
                flags: u32_at(p, 4),
                offset: u64_at(p, 8),
                vaddr: u64_at(p, 16),
                filesz: u64_at(p, 32),
                memsz: u64_at(p, 40),
            }
        })
        .collect();
    if let Some(note) = program_headers.iter().find(|p| p.kind == PT_NOTE) {
        let end = note.offset.saturating_add(note.filesz);
        if end > MAX_HEADERS {
            return Scan::Invalid(format!("PT_NOTE at {:#x} is out of range", note.offset));
        }
        if (prefix.len() as u64) < end {
            return Scan::NeedMore(end as usize);
        }
    }
    Scan::Done(CoreHeaders {
        e_type,
        program_headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::layout::{SegmentSpec, plan};

    #[test]
    fn reads_what_the_layout_writes() {
        let segments: Vec<SegmentSpec> = (0..3)
            .map(|i| SegmentSpec {
                vaddr: 0x10000 * (i + 1),
                memsz: 0x3000,
                filesz: 0x1000 * i,
                readable: true,
                writable: i == 1,
                executable: false,
            })
            .collect();
        let layout = plan(62, 100, &segments);
        let mut file = layout.headers.clone();
        assert_eq!(scan(&file[..10]), Scan::NeedMore(64));
        file.resize(layout.notes_offset as usize + 100, 0);
        let Scan::Done(headers) = scan(&file) else {
            panic!("not parsed")
        };
        assert_eq!(headers.e_type, 4);
        let loads: Vec<_> = headers.loads().collect();
        assert_eq!(loads.len(), 3);
        assert_eq!(loads[2].vaddr, 0x30000);
        assert_eq!(loads[2].filesz, 0x2000);
        assert_eq!(loads[2].offset, layout.segment_offsets[2]);
        assert_eq!(headers.notes(&file).map(<[u8]>::len), Some(100));
        assert_eq!(
            scan(&file[..layout.notes_offset as usize]),
            Scan::NeedMore(layout.notes_offset as usize + 100)
        );
    }
}
