//! Where every byte of the core goes, decided before any memory is read:
//! ELF header, program headers (PT_NOTE first, then one PT_LOAD per
//! mapping), notes, then page-aligned segment data back to back. Knowing the
//! whole layout up front is what lets the same writer feed a file, a pipe or
//! a compressor.

use object::elf::{self, FileHeader64, ProgramHeader64, SectionHeader64};
use object::endian::{LittleEndian as LE, U16, U32, U64};
use object::pod::bytes_of;

pub const PAGE_SIZE: u64 = 4096;
const EHDR_LEN: u64 = 64;
const PHDR_LEN: u64 = 56;
const SHDR_LEN: u64 = 64;

/// One memory segment of the core, before offsets are assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpec {
    pub vaddr: u64,
    pub memsz: u64,
    /// Bytes present in the file (0 for a listed but undumped mapping).
    pub filesz: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
}

/// The planned file.
#[derive(Debug, Clone)]
pub struct CoreLayout {
    /// ELF header and program headers (and, past 65534 segments, the one
    /// section header carrying the real count), to be written at offset 0.
    pub headers: Vec<u8>,
    pub notes_offset: u64,
    /// File offset of each segment's data, in the order given.
    pub segment_offsets: Vec<u64>,
    /// Length of the whole file.
    pub total_len: u64,
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

/// Plans a core for notes of `notes_len` bytes and `segments` (already in
/// address order).
pub fn plan(machine: u16, notes_len: u64, segments: &[SegmentSpec]) -> CoreLayout {
    let phnum = segments.len() as u64 + 1;
    // PN_XNUM: the real count goes in section header 0's sh_info.
    let extended = phnum >= u64::from(elf::PN_XNUM);
    let shdr_offset = EHDR_LEN + phnum * PHDR_LEN;
    let notes_offset = shdr_offset + if extended { SHDR_LEN } else { 0 };
    let mut cursor = round_up(notes_offset + notes_len, PAGE_SIZE);
    let segment_offsets: Vec<u64> = segments
        .iter()
        .map(|s| {
            let at = cursor;
            cursor += round_up(s.filesz, PAGE_SIZE);
            at
        })
        .collect();
    let total_len = cursor.max(notes_offset + notes_len);

    let e = LE;
    let header = FileHeader64::<LE> {
        e_ident: elf::Ident {
            magic: elf::ELFMAG,
            class: elf::ELFCLASS64,
            data: elf::ELFDATA2LSB,
            version: elf::EV_CURRENT,
            os_abi: elf::ELFOSABI_NONE,
            abi_version: 0,
            padding: [0; 7],
        },
        e_type: U16::new(e, elf::ET_CORE),
        e_machine: U16::new(e, elf::Machine(machine)),
        e_version: U32::new(e, 1),
        e_entry: U64::new(e, 0),
        e_phoff: U64::new(e, EHDR_LEN),
        e_shoff: U64::new(e, if extended { shdr_offset } else { 0 }),
        e_flags: U32::new(e, elf::FileFlags(0)),
        e_ehsize: U16::new(e, EHDR_LEN as u16),
        e_phentsize: U16::new(e, PHDR_LEN as u16),
        e_phnum: U16::new(e, if extended { elf::PN_XNUM } else { phnum as u16 }),
        e_shentsize: U16::new(e, if extended { SHDR_LEN as u16 } else { 0 }),
        e_shnum: U16::new(e, u16::from(extended)),
        e_shstrndx: U16::new(e, elf::SymbolSection(0)),
    };
    let mut headers = Vec::with_capacity(notes_offset as usize);
    headers.extend_from_slice(bytes_of(&header));
    let note_phdr = ProgramHeader64::<LE> {
        p_type: U32::new(e, elf::PT_NOTE),
        p_flags: U32::new(e, elf::ProgramFlags(0)),
        p_offset: U64::new(e, notes_offset),
        p_vaddr: U64::new(e, 0),
        p_paddr: U64::new(e, 0),
        p_filesz: U64::new(e, notes_len),
        p_memsz: U64::new(e, 0),
        p_align: U64::new(e, 4),
    };
    headers.extend_from_slice(bytes_of(&note_phdr));
    for (spec, &offset) in segments.iter().zip(&segment_offsets) {
        let mut flags = 0;
        if spec.readable {
            flags |= elf::PF_R.0;
        }
        if spec.writable {
            flags |= elf::PF_W.0;
        }
        if spec.executable {
            flags |= elf::PF_X.0;
        }
        let phdr = ProgramHeader64::<LE> {
            p_type: U32::new(e, elf::PT_LOAD),
            p_flags: U32::new(e, elf::ProgramFlags(flags)),
            p_offset: U64::new(e, offset),
            p_vaddr: U64::new(e, spec.vaddr),
            p_paddr: U64::new(e, 0),
            p_filesz: U64::new(e, spec.filesz),
            p_memsz: U64::new(e, spec.memsz),
            p_align: U64::new(e, PAGE_SIZE),
        };
        headers.extend_from_slice(bytes_of(&phdr));
    }
    if extended {
        let shdr = SectionHeader64::<LE> {
            sh_name: U32::new(e, 0),
            sh_type: U32::new(e, elf::SHT_NULL),
            sh_flags: U64::new(e, elf::SectionFlags(0)),
            sh_addr: U64::new(e, 0),
            sh_offset: U64::new(e, 0),
            sh_size: U64::new(e, 0),
            sh_link: U32::new(e, 0),
            sh_info: U32::new(e, phnum as u32),
            sh_addralign: U64::new(e, 0),
            sh_entsize: U64::new(e, 0),
        };
        headers.extend_from_slice(bytes_of(&shdr));
    }
    debug_assert_eq!(headers.len() as u64, notes_offset);
    CoreLayout {
        headers,
        notes_offset,
        segment_offsets,
        total_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::read::elf::{FileHeader as _, ProgramHeader as _};

    fn segments(count: usize) -> Vec<SegmentSpec> {
        (0..count as u64)
            .map(|i| SegmentSpec {
                vaddr: 0x10000 + i * 2 * PAGE_SIZE,
                memsz: PAGE_SIZE,
                filesz: if i % 3 == 0 { 0 } else { PAGE_SIZE },
                readable: true,
                writable: i % 2 == 0,
                executable: false,
            })
            .collect()
    }

    fn build_file(specs: &[SegmentSpec], notes: &[u8]) -> Vec<u8> {
        let layout = plan(62, notes.len() as u64, specs);
        let mut file = vec![0u8; layout.total_len as usize];
        file[..layout.headers.len()].copy_from_slice(&layout.headers);
        let n = layout.notes_offset as usize;
        file[n..n + notes.len()].copy_from_slice(notes);
        for (i, (spec, &off)) in specs.iter().zip(&layout.segment_offsets).enumerate() {
            assert_eq!(off % PAGE_SIZE, 0);
            file[off as usize..(off + spec.filesz) as usize].fill((i % 251) as u8 + 1);
        }
        file
    }

    #[test]
    fn small_layout_reads_back() {
        let specs = segments(5);
        let notes = crate::elf::notes::encode_notes(&[crate::elf::notes::Note::new(
            b"CORE",
            6,
            vec![7; 16],
        )]);
        let file = build_file(&specs, &notes);
        // The header-level reader: a core has no section string table, which
        // object's whole-file reader insists on.
        let header = FileHeader64::<LE>::parse(&file[..]).unwrap();
        let phdrs = header.program_headers(LE, &file[..]).unwrap();
        assert_eq!(phdrs.len(), 6);
        assert_eq!(phdrs[0].p_type(LE), elf::PT_NOTE);
        assert_eq!(phdrs[0].data(LE, &file[..]).unwrap(), &notes[..]);
        for (i, (ph, spec)) in phdrs[1..].iter().zip(&specs).enumerate() {
            assert_eq!(ph.p_vaddr(LE), spec.vaddr);
            assert_eq!(ph.p_filesz(LE), spec.filesz);
            let data = ph.data(LE, &file[..]).unwrap();
            assert!(data.iter().all(|&b| b == (i % 251) as u8 + 1));
        }
    }

    /// Past 65534 program headers the count moves into section header 0;
    /// 70000 segments must read back with `object`'s reader.
    #[test]
    fn pn_xnum_with_70000_segments() {
        let specs: Vec<SegmentSpec> = segments(70_000)
            .into_iter()
            .map(|s| SegmentSpec { filesz: 0, ..s })
            .collect();
        let file = build_file(&specs, &[]);
        assert_eq!(u16::from_le_bytes([file[56], file[57]]), elf::PN_XNUM);
        let header = FileHeader64::<LE>::parse(&file[..]).unwrap();
        let phdrs = header.program_headers(LE, &file[..]).unwrap();
        assert_eq!(phdrs.len(), 70_001);
        assert_eq!(phdrs[70_000].p_vaddr(LE), specs[69_999].vaddr);
        assert_eq!(phdrs[0].p_type(LE), elf::PT_NOTE);
    }
}
