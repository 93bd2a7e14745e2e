//! The ELF layer of a core: header, program headers (with `PN_XNUM`) and the
//! raw notes of every `PT_NOTE` segment, read through a [`ByteSource`] with
//! every count and offset checked against the file. Problems that leave the
//! rest readable become warnings; the others are [`CoreError`]s.

use super::source::ByteSource;
use std::io;

pub use object::elf::PN_XNUM;
pub const PT_LOAD: u32 = object::elf::PT_LOAD.0;
pub const PT_NOTE: u32 = object::elf::PT_NOTE.0;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: u64 = 56;
const SHDR_SIZE: usize = 64;
/// Bytes of notes read from one PT_NOTE segment at most.
const MAX_NOTE_SEGMENT: u64 = 256 << 20;
/// Notes decoded from one core at most.
const MAX_NOTES: usize = 1 << 20;

/// Why a core cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("cannot read the core: {0}")]
    Io(#[from] io::Error),
    #[error("not an ELF file: the file is {len} bytes long, too short for an ELF header")]
    TooShort { len: u64 },
    #[error("not an ELF file (magic {magic:02x?}, expected 7f 45 4c 46)")]
    BadMagic { magic: [u8; 4] },
    #[error(
        "not a 64-bit little-endian ELF file (class {class}, data {data}); only x86-64 cores are read"
    )]
    NotElf64Le { class: u8, data: u8 },
    #[error("not a core file: the ELF type is {kind} ({name}), a core is 4 (ET_CORE)")]
    NotCore { kind: u16, name: &'static str },
    #[error("a core of machine {machine}; only x86-64 (62) cores are read")]
    Machine { machine: u16 },
    #[error("program header entries of {size} bytes; ELF64 uses 56")]
    PhentSize { size: u16 },
    #[error(
        "e_phnum is PN_XNUM but the section header holding the real count is missing or out of the file (e_shoff {shoff:#x})"
    )]
    BadXnum { shoff: u64 },
    #[error("the program headers start at {phoff:#x}, past the end of the file ({len} bytes)")]
    PhdrsOutside { phoff: u64, len: u64 },
}

/// The ELF header fields a reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub e_type: u16,
    pub e_machine: u16,
    pub phoff: u64,
    pub shoff: u64,
    /// `e_phnum` as stored.
    pub phnum_raw: u16,
    /// The real number of program headers (from `sh_info` with PN_XNUM).
    pub phnum: u64,
    pub shnum: u16,
}

/// One program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index among the program headers.
    pub index: usize,
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

impl Segment {
    /// `r`, `w`, `x` or `-` each, from `p_flags`.
    pub fn perms(&self) -> String {
        let bit = |b: u32, c: char| if self.flags & b != 0 { c } else { '-' };
        [bit(4, 'r'), bit(2, 'w'), bit(1, 'x')].iter().collect()
    }
    /// End address of the mapping.
    pub fn end(&self) -> u64 {
        self.vaddr.saturating_add(self.memsz)
    }
}

/// One note, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawNote {
    /// Name without the terminating NUL (lossy UTF-8).
    pub name: String,
    pub n_type: u32,
    pub desc: Vec<u8>,
    /// File offset of the descriptor.
    pub desc_offset: u64,
}

/// A core's ELF structure, with its bytes.
pub struct CoreFile<S> {
    source: S,
    pub header: Header,
    /// Every program header, in file order.
    pub segments: Vec<Segment>,
    /// The notes of every PT_NOTE segment, in file order.
    pub notes: Vec<RawNote>,
    /// Problems that did not stop the reading.
    pub warnings: Vec<String>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn type_name(e_type: u16) -> &'static str {
    match e_type {
        0 => "ET_NONE",
        1 => "ET_REL",
        2 => "ET_EXEC",
        3 => "ET_DYN",
        4 => "ET_CORE",
        _ => "unknown",
    }
}

impl<S: ByteSource> CoreFile<S> {
    /// Reads the header, the program headers and the notes.
    pub fn parse(source: S) -> Result<CoreFile<S>, CoreError> {
        let len = source.len();
        let mut warnings = Vec::new();
        if len < EHDR_SIZE as u64 {
            // Say "wrong magic" before "too short" when the magic is wrong.
            let mut magic = [0u8; 4];
            if source.read_at(0, &mut magic)? == 4 && &magic != b"\x7fELF" {
                return Err(CoreError::BadMagic { magic });
            }
            return Err(CoreError::TooShort { len });
        }
        let mut ehdr = [0u8; EHDR_SIZE];
        source.read_exact_at(0, &mut ehdr)?;
        if &ehdr[0..4] != b"\x7fELF" {
            return Err(CoreError::BadMagic {
                magic: [ehdr[0], ehdr[1], ehdr[2], ehdr[3]],
            });
        }
        if ehdr[4] != 2 || ehdr[5] != 1 {
            return Err(CoreError::NotElf64Le {
                class: ehdr[4],
                data: ehdr[5],
            });
        }
        let e_type = u16_at(&ehdr, 16);
        if e_type != 4 {
            return Err(CoreError::NotCore {
                kind: e_type,
                name: type_name(e_type),
            });
        }
        let e_machine = u16_at(&ehdr, 18);
        if e_machine != 62 {
            return Err(CoreError::Machine { machine: e_machine });
        }
        let phoff = u64_at(&ehdr, 32);
        let shoff = u64_at(&ehdr, 40);
        let phentsize = u16_at(&ehdr, 54);
        let phnum_raw = u16_at(&ehdr, 56);
        let shnum = u16_at(&ehdr, 60);
        if phnum_raw != 0 && phentsize as u64 != PHDR_SIZE {
            return Err(CoreError::PhentSize { size: phentsize });
        }
        let phnum = if phnum_raw == PN_XNUM {
            let mut shdr = [0u8; SHDR_SIZE];
            if shoff == 0
                || shoff
                    .checked_add(SHDR_SIZE as u64)
                    .is_none_or(|end| end > len)
            {
                return Err(CoreError::BadXnum { shoff });
            }
            source.read_exact_at(shoff, &mut shdr)?;
            u64::from(u32_at(&shdr, 44))
        } else {
            u64::from(phnum_raw)
        };
        if phnum > 0 && phoff >= len {
            return Err(CoreError::PhdrsOutside { phoff, len });
        }
        let room = (len - phoff.min(len)) / PHDR_SIZE;
        let readable = phnum.min(room);
        if readable < phnum {
            warnings.push(format!(
                "the file ends after {readable} of its {phnum} program headers (truncated core); the rest are ignored"
            ));
        }
        let mut table = vec![0u8; (readable * PHDR_SIZE) as usize];
        source.read_exact_at(phoff, &mut table)?;
        let mut segments = Vec::with_capacity(readable as usize);
        for (index, ph) in table.chunks_exact(PHDR_SIZE as usize).enumerate() {
            segments.push(Segment {
                index,
                p_type: u32_at(ph, 0),
                flags: u32_at(ph, 4),
                offset: u64_at(ph, 8),
                vaddr: u64_at(ph, 16),
                filesz: u64_at(ph, 32),
                memsz: u64_at(ph, 40),
            });
        }
        drop(table);
        let mut core = CoreFile {
            source,
            header: Header {
                e_type,
                e_machine,
                phoff,
                shoff,
                phnum_raw,
                phnum,
                shnum,
            },
            segments,
            notes: Vec::new(),
            warnings,
        };
        core.check_segments();
        core.read_notes()?;
        Ok(core)
    }

    /// The bytes behind the core.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The PT_LOAD segments, in file order.
    pub fn loads(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.p_type == PT_LOAD)
    }

    /// Bytes of `segment` the file actually holds (its `p_filesz`, less what
    /// a truncated file lacks).
    pub fn present(&self, segment: &Segment) -> u64 {
        let len = self.source.len();
        if segment.offset >= len {
            return 0;
        }
        segment.filesz.min(len - segment.offset)
    }

    fn check_segments(&mut self) {
        let len = self.source.len();
        let mut truncated = 0usize;
        let mut first_truncated = None;
        for s in &self.segments {
            if s.p_type == PT_LOAD && s.filesz > s.memsz {
                self.warnings.push(format!(
                    "PT_LOAD {} at {:#x} has p_filesz {:#x} larger than p_memsz {:#x}; only p_memsz bytes are used",
                    s.index, s.vaddr, s.filesz, s.memsz
                ));
            }
            if s.filesz > 0 && s.offset.checked_add(s.filesz).is_none_or(|end| end > len) {
                truncated += 1;
                first_truncated.get_or_insert(*s);
            }
            if s.p_type == PT_LOAD && s.vaddr.checked_add(s.memsz).is_none() {
                self.warnings.push(format!(
                    "PT_LOAD {} at {:#x} of {:#x} bytes wraps around the address space",
                    s.index, s.vaddr, s.memsz
                ));
            }
        }
        if let Some(s) = first_truncated {
            self.warnings.push(format!(
                "{truncated} segment(s) extend past the end of the file ({len} bytes; the first is segment {} at file offset {:#x}, {:#x} bytes): the core is truncated, the missing bytes are reported as not present",
                s.index, s.offset, s.filesz
            ));
        }
        let mut loads: Vec<&Segment> = self
            .segments
            .iter()
            .filter(|s| s.p_type == PT_LOAD && s.memsz > 0)
            .collect();
        loads.sort_by_key(|s| (s.vaddr, s.index));
        let mut overlaps = 0usize;
        let mut first = None;
        for pair in loads.windows(2) {
            if pair[0].end() > pair[1].vaddr {
                overlaps += 1;
                first.get_or_insert((pair[0].index, pair[1].index, pair[1].vaddr));
            }
        }
        if let Some((a, b, at)) = first {
            self.warnings.push(format!(
                "{overlaps} overlapping PT_LOAD segment pair(s) (the first: segments {a} and {b} at {at:#x}); memory there is read from the earlier segment"
            ));
        }
    }

    fn read_notes(&mut self) -> Result<(), CoreError> {
        let len = self.source.len();
        let note_segments: Vec<Segment> = self
            .segments
            .iter()
            .filter(|s| s.p_type == PT_NOTE)
            .copied()
            .collect();
        if note_segments.is_empty() {
            self.warnings.push(
                "the core has no PT_NOTE segment: no threads, registers or process facts".into(),
            );
        }
        for seg in note_segments {
            let mut size = self.present(&seg);
            if size < seg.filesz {
                self.warnings.push(format!(
                    "the PT_NOTE segment {} is cut short by the end of the file: {size} of {} bytes",
                    seg.index, seg.filesz
                ));
            }
            if size > MAX_NOTE_SEGMENT {
                self.warnings.push(format!(
                    "the PT_NOTE segment {} claims {size} bytes; only the first {MAX_NOTE_SEGMENT} are read",
                    seg.index
                ));
                size = MAX_NOTE_SEGMENT;
            }
            if seg.offset >= len {
                continue;
            }
            let mut bytes = vec![0u8; size as usize];
            let n = self.source.read_at(seg.offset, &mut bytes)?;
            bytes.truncate(n);
            let (notes, problem) = split_notes(
                &bytes,
                seg.offset,
                MAX_NOTES - self.notes.len().min(MAX_NOTES),
            );
            self.notes.extend(notes);
            if let Some(problem) = problem {
                self.warnings
                    .push(format!("PT_NOTE segment {}: {problem}", seg.index));
            }
        }
        Ok(())
    }
}

/// Splits a run of ELF notes. Returns the notes read and, if the run does
/// not end cleanly, what is wrong at that point.
pub fn split_notes(bytes: &[u8], base: u64, limit: usize) -> (Vec<RawNote>, Option<String>) {
    let pad4 = |n: u64| n.checked_add(3).map(|n| n & !3);
    let mut notes = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        if notes.len() >= limit {
            return (
                notes,
                Some(format!("more than {limit} notes; the rest are ignored")),
            );
        }
        let rest = &bytes[at..];
        if rest.len() < 12 {
            if rest.iter().all(|&b| b == 0) {
                break;
            }
            return (
                notes,
                Some(format!(
                    "{} stray bytes at offset {:#x}, too few for a note header",
                    rest.len(),
                    base + at as u64
                )),
            );
        }
        let namesz = u64::from(u32_at(rest, 0));
        let descsz = u64::from(u32_at(rest, 4));
        let n_type = u32_at(rest, 8);
        let name_end = pad4(namesz).and_then(|n| n.checked_add(12));
        let desc_end = name_end.and_then(|n| n.checked_add(descsz));
        let (Some(name_end), Some(desc_end)) = (name_end, desc_end) else {
            return (
                notes,
                Some(format!(
                    "note at offset {:#x} has absurd sizes",
                    base + at as u64
                )),
            );
        };
        if desc_end > rest.len() as u64 {
            let index = notes.len();
            return (
                notes,
                Some(format!(
                    "note {} (type {n_type:#x}) at offset {:#x} runs past the end of its segment (name {namesz} bytes, descriptor {descsz} bytes, {} bytes left); it and anything after it are ignored",
                    index,
                    base + at as u64,
                    rest.len()
                )),
            );
        }
        let name_bytes = &rest[12..12 + namesz as usize];
        let name_bytes = name_bytes.strip_suffix(b"\0").unwrap_or(name_bytes);
        let desc = rest[name_end as usize..desc_end as usize].to_vec();
        notes.push(RawNote {
            name: String::from_utf8_lossy(name_bytes).into_owned(),
            n_type,
            desc,
            desc_offset: base + at as u64 + name_end,
        });
        let next = pad4(desc_end).unwrap_or(u64::MAX);
        at = at.saturating_add(usize::try_from(next).unwrap_or(usize::MAX));
    }
    (notes, None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::inspect::source::Bytes;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((name.len() as u32 + 1).to_le_bytes());
        v.extend((desc.len() as u32).to_le_bytes());
        v.extend(kind.to_le_bytes());
        v.extend(name);
        v.push(0);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v.extend(desc);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    /// A core with a PT_NOTE and one PT_LOAD of `data` at 0x1000.
    pub(crate) fn tiny_core(notes: &[u8], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2;
        v[5] = 1;
        v[6] = 1;
        v[16..18].copy_from_slice(&4u16.to_le_bytes());
        v[18..20].copy_from_slice(&62u16.to_le_bytes());
        v[32..40].copy_from_slice(&64u64.to_le_bytes());
        v[52..54].copy_from_slice(&64u16.to_le_bytes());
        v[54..56].copy_from_slice(&56u16.to_le_bytes());
        v[56..58].copy_from_slice(&2u16.to_le_bytes());
        let notes_off = 64 + 2 * 56;
        let data_off = (notes_off + notes.len() as u64).div_ceil(16) * 16;
        let ph = |t: u32, f: u32, off: u64, va: u64, fsz: u64, msz: u64| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&t.to_le_bytes());
            p[4..8].copy_from_slice(&f.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&va.to_le_bytes());
            p[32..40].copy_from_slice(&fsz.to_le_bytes());
            p[40..48].copy_from_slice(&msz.to_le_bytes());
            p
        };
        v.extend(ph(PT_NOTE, 0, notes_off, 0, notes.len() as u64, 0));
        v.extend(ph(PT_LOAD, 6, data_off, 0x1000, data.len() as u64, 0x2000));
        v.extend(notes);
        v.resize(data_off as usize, 0);
        v.extend(data);
        v
    }

    #[test]
    fn parses_a_tiny_core() {
        let notes = [note(b"CORE", 1, &[1, 2, 3]), note(b"LINUX", 0x202, &[9; 8])].concat();
        let core = CoreFile::parse(Bytes(tiny_core(&notes, &[7; 32]))).unwrap();
        assert_eq!(core.segments.len(), 2);
        assert_eq!(core.notes.len(), 2);
        assert_eq!(core.notes[0].name, "CORE");
        assert_eq!(core.notes[0].desc, vec![1, 2, 3]);
        assert_eq!(core.notes[1].n_type, 0x202);
        assert!(core.warnings.is_empty(), "{:?}", core.warnings);
        assert_eq!(core.loads().next().unwrap().perms(), "rw-");
    }

    #[test]
    fn pn_xnum_count_comes_from_the_section_header() {
        let notes = note(b"CORE", 1, &[1, 2, 3]);
        let mut bytes = tiny_core(&notes, &[7; 32]);
        let shoff = bytes.len() as u64;
        let mut shdr = vec![0u8; 64];
        shdr[44..48].copy_from_slice(&2u32.to_le_bytes());
        bytes.extend(shdr);
        bytes[40..48].copy_from_slice(&shoff.to_le_bytes());
        bytes[56..58].copy_from_slice(&PN_XNUM.to_le_bytes());
        bytes[60..62].copy_from_slice(&1u16.to_le_bytes());
        let core = CoreFile::parse(Bytes(bytes)).unwrap();
        assert_eq!(core.header.phnum, 2);
        assert_eq!(core.header.phnum_raw, PN_XNUM);
        assert_eq!(core.loads().count(), 1);
        assert_eq!(core.notes.len(), 1);
        assert!(core.warnings.is_empty(), "{:?}", core.warnings);
    }

    #[test]
    fn damage_is_an_error_or_a_warning() {
        assert!(matches!(
            CoreFile::parse(Bytes(b"hello".to_vec())),
            Err(CoreError::BadMagic { .. })
        ));
        assert!(matches!(
            CoreFile::parse(Bytes(b"\x7fELF".to_vec())),
            Err(CoreError::TooShort { .. })
        ));
        let notes = note(b"CORE", 1, &[1; 40]);
        let mut bytes = tiny_core(&notes, &[7; 32]);
        // Descriptor size far past the segment.
        let at = 64 + 2 * 56 + 4;
        bytes[at..at + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        let core = CoreFile::parse(Bytes(bytes.clone())).unwrap();
        assert!(core.notes.is_empty());
        assert!(
            core.warnings.iter().any(|w| w.contains("runs past")),
            "{:?}",
            core.warnings
        );
        // Absurd program header count.
        bytes[56..58].copy_from_slice(&0xfffeu16.to_le_bytes());
        let core = CoreFile::parse(Bytes(bytes.clone())).unwrap();
        assert!(
            core.warnings.iter().any(|w| w.contains("program headers")),
            "{:?}",
            core.warnings
        );
        // PN_XNUM without a section header.
        bytes[56..58].copy_from_slice(&PN_XNUM.to_le_bytes());
        assert!(matches!(
            CoreFile::parse(Bytes(bytes.clone())),
            Err(CoreError::BadXnum { .. })
        ));
        // Not a core.
        bytes[16] = 2;
        assert!(matches!(
            CoreFile::parse(Bytes(bytes)),
            Err(CoreError::NotCore { .. })
        ));
    }
}
