//! A second, independent ELF reader for every core the tests write: `goblin`
//! must read the same program headers and notes as `object`, field for
//! field and byte for byte, in the same order.
//!
//! Only the headers and the PT_NOTE contents are looked at. The file is
//! mapped, not read, so a core of a terabyte of sparse address space costs
//! the pages the readers touch and nothing more.
//!
//! Each reader is used at the level where the two are comparable: object's
//! header-level API (`FileHeader64`, `ProgramHeader::notes`; its whole-file
//! reader insists on a section string table that cores do not have) and
//! goblin's `Header`, `ProgramHeader::parse`, `SectionHeader::parse` and
//! `Elf::iter_note_headers`. Goblin's whole-file `Elf::parse`, what most of
//! its users call, must also accept a real core and list the same program
//! headers ([`goblin_elf_parse_agrees`]).
//!
//! PN_XNUM (more than 0xfffe program headers: `e_phnum` is 0xffff and the
//! real count is section header 0's `sh_info`): object honours it, goblin
//! does not. Rather than compare only what goblin reads by itself (the first
//! 65535 headers, which would leave every later mapping of such a core
//! unchecked), the goblin side reads section header 0 and then all the
//! program headers through goblin's own types, so the whole table is
//! compared; and goblin's `Elf::parse` is held to what it documents doing:
//! exactly the first 65535 of those headers.
//!
//! This file is also compiled into the fuzz target `readers_agree`
//! (`fuzz/fuzz_targets/readers_agree.rs`), which compares the two readers on
//! mutated cores and names the inputs on which they may legitimately differ.

#![allow(dead_code)]

use goblin::container::Ctx;
use goblin::elf::program_header::PT_NOTE;
use goblin::elf::{
    Elf, ProgramHeader as GoblinProgramHeader, SectionHeader as GoblinSectionHeader,
};
use object::read::elf::{FileHeader as _, ProgramHeader as _};

/// `e_phnum` when the real count is in section header 0 (goblin has no name
/// for it).
pub const PN_XNUM: u16 = object::elf::PN_XNUM;

/// One program header, as either reader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_paddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}

/// One note, as either reader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note<'data> {
    /// Index of the PT_NOTE program header the note is in.
    pub segment: usize,
    /// The `n_namesz - 1` bytes before the name's terminator (goblin's view
    /// of a name; object keeps all `n_namesz` bytes).
    pub name: &'data [u8],
    pub n_type: u32,
    pub desc: &'data [u8],
    /// File offset of the descriptor: both readers must take it from the
    /// same place, not just find equal bytes.
    pub desc_offset: u64,
}

impl Note<'_> {
    /// File offset just past the descriptor.
    pub fn desc_end(&self) -> u64 {
        self.desc_offset + self.desc.len() as u64
    }
}

/// What one reader found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading<'data> {
    pub segments: Vec<Segment>,
    pub notes: Vec<Note<'data>>,
}

/// Where `part` starts inside `whole` (both readers hand out subslices of
/// the bytes they were given).
fn offset_in(whole: &[u8], part: &[u8]) -> u64 {
    let offset = part.as_ptr() as usize - whole.as_ptr() as usize;
    debug_assert!(offset + part.len() <= whole.len());
    offset as u64
}

/// The program headers (all of them, PN_XNUM honoured) and notes, by object.
pub fn read_with_object(data: &[u8]) -> Result<Reading<'_>, String> {
    type Header = object::elf::FileHeader64<object::Endianness>;
    let header = Header::parse(data).map_err(|e| format!("ELF header: {e}"))?;
    let endian = header.endian().map_err(|e| format!("ELF header: {e}"))?;
    let headers = header
        .program_headers(endian, data)
        .map_err(|e| format!("program headers: {e}"))?;
    let mut reading = Reading {
        segments: Vec::with_capacity(headers.len()),
        notes: Vec::new(),
    };
    for (index, ph) in headers.iter().enumerate() {
        reading.segments.push(Segment {
            p_type: ph.p_type(endian).0,
            p_flags: ph.p_flags(endian).0,
            p_offset: ph.p_offset(endian),
            p_vaddr: ph.p_vaddr(endian),
            p_paddr: ph.p_paddr(endian),
            p_filesz: ph.p_filesz(endian),
            p_memsz: ph.p_memsz(endian),
            p_align: ph.p_align(endian),
        });
        let Some(mut notes) = ph
            .notes(endian, data)
            .map_err(|e| format!("PT_NOTE (program header {index}): {e}"))?
        else {
            continue;
        };
        while let Some(note) = notes.next().map_err(|e| {
            format!(
                "note {} in program header {index}: {e}",
                reading.notes.len()
            )
        })? {
            let name = note.name_bytes();
            reading.notes.push(Note {
                segment: index,
                name: &name[..name.len().saturating_sub(1)],
                n_type: note.n_type(endian).0,
                desc: note.desc(),
                desc_offset: offset_in(data, note.desc()),
            });
        }
    }
    Ok(reading)
}

/// goblin's header and the parsing context (class, byte order) it implies.
fn goblin_header(data: &[u8]) -> Result<(goblin::elf::Header, Ctx), String> {
    let header = Elf::parse_header(data).map_err(|e| format!("ELF header: {e}"))?;
    let container = header.container().map_err(|e| format!("ELF header: {e}"))?;
    let byte_order = header
        .endianness()
        .map_err(|e| format!("ELF header: {e}"))?;
    Ok((header, Ctx::new(container, byte_order)))
}

/// The program headers (all of them: PN_XNUM read by hand through goblin's
/// types, see the module comment) and notes, by goblin.
pub fn read_with_goblin(data: &[u8]) -> Result<Reading<'_>, String> {
    let (header, ctx) = goblin_header(data)?;
    let count = if header.e_phnum == PN_XNUM {
        let section_0 = GoblinSectionHeader::parse(data, header.e_shoff as usize, 1, ctx)
            .map_err(|e| format!("section header 0 (e_phnum is PN_XNUM): {e}"))?;
        let section_0 = section_0
            .first()
            .ok_or("e_phnum is PN_XNUM but there is no section header 0 to hold the real count")?;
        section_0.sh_info as usize
    } else {
        usize::from(header.e_phnum)
    };
    let headers = GoblinProgramHeader::parse(data, header.e_phoff as usize, count, ctx)
        .map_err(|e| format!("program headers: {e}"))?;
    let mut reading = Reading {
        segments: headers
            .iter()
            .map(|ph| Segment {
                p_type: ph.p_type,
                p_flags: ph.p_flags,
                p_offset: ph.p_offset,
                p_vaddr: ph.p_vaddr,
                p_paddr: ph.p_paddr,
                p_filesz: ph.p_filesz,
                p_memsz: ph.p_memsz,
                p_align: ph.p_align,
            })
            .collect(),
        notes: Vec::new(),
    };
    // goblin's own note iterator, over the complete table.
    let mut elf = Elf::lazy_parse(header).map_err(|e| format!("ELF header: {e}"))?;
    elf.program_headers = headers;
    let note_segments = elf
        .program_headers
        .iter()
        .enumerate()
        .filter(|(_, ph)| ph.p_type == PT_NOTE)
        .map(|(index, _)| index);
    let per_segment = elf
        .iter_note_headers(data)
        .map(|notes| notes.iters)
        .unwrap_or_default();
    for (index, notes) in note_segments.zip(per_segment) {
        for note in notes {
            let note = note.map_err(|e| {
                format!(
                    "note {} in program header {index}: {e}",
                    reading.notes.len()
                )
            })?;
            reading.notes.push(Note {
                segment: index,
                name: note.name.as_bytes(),
                n_type: note.n_type,
                desc: note.desc,
                desc_offset: offset_in(data, note.desc),
            });
        }
    }
    Ok(reading)
}

/// The first difference between two readings, described for a person, or
/// `None` when they agree.
pub fn first_disagreement(object: &Reading, goblin: &Reading) -> Option<String> {
    for (index, (a, b)) in object.segments.iter().zip(&goblin.segments).enumerate() {
        if a != b {
            return Some(format!(
                "program header {index}: object reads {a:x?}, goblin reads {b:x?}"
            ));
        }
    }
    if object.segments.len() != goblin.segments.len() {
        return Some(format!(
            "object reads {} program headers, goblin {}",
            object.segments.len(),
            goblin.segments.len()
        ));
    }
    for (index, (a, b)) in object.notes.iter().zip(&goblin.notes).enumerate() {
        if a == b {
            continue;
        }
        let field = if a.segment != b.segment {
            format!("in program header {} vs {}", a.segment, b.segment)
        } else if a.name != b.name {
            format!(
                "name {:?} vs {:?}",
                String::from_utf8_lossy(a.name),
                String::from_utf8_lossy(b.name)
            )
        } else if a.n_type != b.n_type {
            format!("type {:#x} vs {:#x}", a.n_type, b.n_type)
        } else if a.desc_offset != b.desc_offset {
            format!(
                "descriptor at file offset {:#x} vs {:#x}",
                a.desc_offset, b.desc_offset
            )
        } else if a.desc.len() != b.desc.len() {
            format!("descriptor of {} vs {} bytes", a.desc.len(), b.desc.len())
        } else {
            let at = a.desc.iter().zip(b.desc).position(|(x, y)| x != y);
            format!("descriptor bytes differ first at byte {at:?}")
        };
        return Some(format!(
            "note {index} ({:?}, type {:#x}, in program header {}): object and goblin differ: {field}",
            String::from_utf8_lossy(a.name),
            a.n_type,
            a.segment
        ));
    }
    if object.notes.len() != goblin.notes.len() {
        return Some(format!(
            "object reads {} notes, goblin {}",
            object.notes.len(),
            goblin.notes.len()
        ));
    }
    None
}

/// What goblin's whole-file parser made of the bytes.
#[derive(Debug)]
pub enum ElfParse {
    /// `Elf::parse` read the file and its program headers are the ones
    /// expected.
    Agrees,
    /// `Elf::parse` refused the file.
    Refused(String),
    /// `Elf::parse` read the file but its program headers differ.
    Differs(String),
}

/// Runs goblin's `Elf::parse` and compares its program headers with
/// `goblin`'s complete table. With PN_XNUM it reads `e_phnum` literally:
/// 65535 headers at `e_phoff`, so those must be the first 65535 of the
/// complete table (where the table has that many).
pub fn goblin_elf_parse_agrees(data: &[u8], goblin: &Reading) -> ElfParse {
    let elf = match Elf::parse(data) {
        Ok(elf) => elf,
        Err(e) => return ElfParse::Refused(e.to_string()),
    };
    let literal = usize::from(elf.header.e_phnum);
    if elf.program_headers.len() != literal {
        return ElfParse::Differs(format!(
            "Elf::parse lists {} program headers for e_phnum {literal}",
            elf.program_headers.len()
        ));
    }
    for (index, (ph, expected)) in elf.program_headers.iter().zip(&goblin.segments).enumerate() {
        let seen = (
            ph.p_type,
            ph.p_flags,
            ph.p_offset,
            ph.p_vaddr,
            ph.p_paddr,
            ph.p_filesz,
            ph.p_memsz,
            ph.p_align,
        );
        let wanted = (
            expected.p_type,
            expected.p_flags,
            expected.p_offset,
            expected.p_vaddr,
            expected.p_paddr,
            expected.p_filesz,
            expected.p_memsz,
            expected.p_align,
        );
        if seen != wanted {
            return ElfParse::Differs(format!(
                "Elf::parse's program header {index} is {seen:x?}, the table holds {wanted:x?}"
            ));
        }
    }
    ElfParse::Agrees
}

/// A read-only private mapping of a whole file, unmapped on drop.
struct Mapped {
    start: std::ptr::NonNull<std::ffi::c_void>,
    len: std::num::NonZeroUsize,
}

impl Mapped {
    fn new(path: &std::path::Path) -> Mapped {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        let file = std::fs::File::open(path)
            .unwrap_or_else(|e| panic!("opening {} to read it back: {e}", path.display()));
        let len = file
            .metadata()
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .len();
        let len = std::num::NonZeroUsize::new(len as usize)
            .unwrap_or_else(|| panic!("{} is empty", path.display()));
        // SAFETY: a new read-only private mapping at an address the kernel
        // picks, so no existing memory is affected; the fd may be closed
        // afterwards (the mapping keeps the file).
        let start = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE,
                &file,
                0,
            )
        }
        .unwrap_or_else(|e| panic!("mapping {}: {e}", path.display()));
        Mapped { start, len }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as
        // `self`. The tests map a core only after the tool that wrote it has
        // exited and nothing writes or truncates it while it is mapped, so
        // the bytes do not change under the slice.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr().cast::<u8>(), self.len.get()) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no slice of it
        // outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.start, self.len.get()) };
    }
}

/// Reads `core` with object and with goblin and panics, naming the first
/// difference, unless both read it and agree on every program header and
/// every note, and goblin's `Elf::parse` accepts it with the same program
/// headers (the first 65535 under PN_XNUM).
#[track_caller]
pub fn assert_readers_agree(core: &std::path::Path) {
    let mapped = Mapped::new(core);
    let data = mapped.bytes();
    let shown = core.display();
    let object =
        read_with_object(data).unwrap_or_else(|e| panic!("object cannot read {shown}: {e}"));
    let goblin =
        read_with_goblin(data).unwrap_or_else(|e| panic!("goblin cannot read {shown}: {e}"));
    if let Some(difference) = first_disagreement(&object, &goblin) {
        panic!("object and goblin disagree on {shown}: {difference}");
    }
    assert!(
        object.segments.iter().any(|s| s.p_type == PT_NOTE) && !object.notes.is_empty(),
        "{shown} has no notes for the readers to compare"
    );
    match goblin_elf_parse_agrees(data, &goblin) {
        ElfParse::Agrees => {}
        ElfParse::Refused(e) => panic!("goblin's Elf::parse refuses {shown}: {e}"),
        ElfParse::Differs(e) => panic!("goblin's Elf::parse on {shown}: {e}"),
    }
}
