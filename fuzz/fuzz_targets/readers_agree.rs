//! object and goblin, two independent ELF readers, on mutated cores: where
//! both read the program headers and notes, they must read the same ones,
//! and goblin's whole-file `Elf::parse`, where it accepts the input, must
//! list the same program headers. The comparison is the one every
//! integration test runs on every core it writes
//! (`tests/common/elf_readers.rs`, compiled in here unchanged).
//!
//! Where only one reader accepts the input, or both accept it and differ,
//! the input must show one of the differences named below, each a
//! documented behaviour of one reader; anything else panics.
//!
//! Only object reads it:
//! - `goblin-utf8`: a note name (its `n_namesz - 1` bytes) that is not UTF-8;
//!   goblin's `Note::name` is a `&str`.
//! - `phoff-0`: `e_phoff` is 0 with a non-zero count; object takes that as
//!   "no program headers", goblin reads a table at offset 0 (and may run off
//!   the end).
//!
//! Only goblin reads it:
//! - `class-32`: an ELFCLASS32 file; the harness reads cores as ELF64 with
//!   object (`FileHeader64`), goblin reads either class.
//! - `ei-version`: `EI_VERSION` is not 1; object checks it, goblin does not.
//! - `phentsize`: `e_phentsize` is not 56; object checks it, goblin assumes
//!   the size of its own type.
//! - `misaligned`: a program header table not on 8 bytes, a PN_XNUM section
//!   header 0 not on 8 bytes or not 64 bytes long (`e_shentsize`), or a note
//!   segment with notes not on 4 bytes; object, built without its
//!   `unaligned` feature as in the tests, reads its ELF structures in place
//!   and refuses misaligned ones, and checks `e_shentsize`; goblin copies
//!   fields out and checks neither.
//! - `empty-note-segment`: a PT_NOTE with `p_filesz` 0 whose `p_align` is
//!   not 0-4 or 8, or whose `p_offset` lies past the end of the file;
//!   object checks both before it looks for notes, goblin looks at nothing
//!   in an empty segment.
//! - `note-past-segment`: a note that ends past its segment's
//!   `p_offset + p_filesz`; goblin bounds only where each note starts by the
//!   segment's end and reads the rest from whatever follows in the file,
//!   object refuses the note.
//!
//! Both read it and differ: only `phoff-0`.
#![no_main]

#[path = "../../tests/common/elf_readers.rs"]
mod elf_readers;

use elf_readers::{
    ElfParse, PN_XNUM, Reading, first_disagreement, goblin_elf_parse_agrees, read_with_goblin,
    read_with_object,
};
use libfuzzer_sys::fuzz_target;

const PT_NOTE: u32 = 4;
const PHDR64_SIZE: u16 = 56;
const SHDR64_SIZE: u16 = 64;

/// The raw ELF64 header fields the named cases depend on, read without
/// either reader.
struct Raw {
    class: u8,
    version: u8,
    phoff: u64,
    shoff: u64,
    phentsize: u16,
    phnum: u16,
    shentsize: u16,
}

impl Raw {
    fn read(data: &[u8]) -> Option<Raw> {
        let ident = data.get(..64)?;
        let big_endian = ident[5] == 2;
        let u16_at = |at: usize| {
            let bytes = [ident[at], ident[at + 1]];
            if big_endian {
                u16::from_be_bytes(bytes)
            } else {
                u16::from_le_bytes(bytes)
            }
        };
        let u64_at = |at: usize| {
            let bytes: [u8; 8] = ident[at..at + 8].try_into().unwrap();
            if big_endian {
                u64::from_be_bytes(bytes)
            } else {
                u64::from_le_bytes(bytes)
            }
        };
        Some(Raw {
            class: ident[4],
            version: ident[6],
            phoff: u64_at(32),
            shoff: u64_at(40),
            phentsize: u16_at(54),
            phnum: u16_at(56),
            shentsize: u16_at(58),
        })
    }
}

/// Why object may refuse what goblin read, if the input shows a named case.
fn only_goblin_reads(data: &[u8], raw: &Raw, goblin: &Reading) -> Option<&'static str> {
    let has_table = !goblin.segments.is_empty();
    if raw.class != 2 {
        return Some("class-32");
    }
    if raw.version != 1 {
        return Some("ei-version");
    }
    if has_table && raw.phoff != 0 && raw.phentsize != PHDR64_SIZE {
        return Some("phentsize");
    }
    let misaligned_table = has_table && !raw.phoff.is_multiple_of(8);
    let bad_section_0 =
        raw.phnum == PN_XNUM && (!raw.shoff.is_multiple_of(8) || raw.shentsize != SHDR64_SIZE);
    let misaligned_notes = goblin
        .segments
        .iter()
        .any(|s| s.p_type == PT_NOTE && s.p_filesz != 0 && !s.p_offset.is_multiple_of(4));
    if misaligned_table || bad_section_0 || misaligned_notes {
        return Some("misaligned");
    }
    let empty_note_segment = goblin.segments.iter().any(|s| {
        s.p_type == PT_NOTE
            && s.p_filesz == 0
            && (!matches!(s.p_align, 0..=4 | 8) || s.p_offset > data.len() as u64)
    });
    if empty_note_segment {
        return Some("empty-note-segment");
    }
    let past_segment = goblin.notes.iter().any(|note| {
        let segment = &goblin.segments[note.segment];
        note.desc_end() > segment.p_offset.saturating_add(segment.p_filesz)
    });
    if past_segment {
        return Some("note-past-segment");
    }
    None
}

/// Why goblin may refuse what object read, if the input shows a named case.
fn only_object_reads(raw: &Raw, object: &Reading) -> Option<&'static str> {
    if object
        .notes
        .iter()
        .any(|n| std::str::from_utf8(n.name).is_err())
    {
        return Some("goblin-utf8");
    }
    if raw.phoff == 0 && raw.phnum != 0 && object.segments.is_empty() {
        return Some("phoff-0");
    }
    None
}

fuzz_target!(|input: &[u8]| {
    // object reads ELF structures in place: give it the 8-byte alignment a
    // mapped file has, so that only offsets inside the file can misalign.
    let mut words = vec![0u64; input.len().div_ceil(8)];
    let data = &mut object::pod::bytes_of_slice_mut(&mut words)[..input.len()];
    data.copy_from_slice(input);
    let data = &*data;

    let Some(raw) = Raw::read(data) else {
        // Shorter than an ELF64 header: neither may read it as one.
        assert!(read_with_object(data).is_err());
        return;
    };
    match (read_with_object(data), read_with_goblin(data)) {
        (Ok(object), Ok(goblin)) => {
            if let Some(difference) = first_disagreement(&object, &goblin) {
                assert!(
                    raw.phoff == 0 && object.segments.is_empty(),
                    "object and goblin disagree: {difference}"
                );
            }
            if let ElfParse::Differs(difference) = goblin_elf_parse_agrees(data, &goblin) {
                panic!("goblin's Elf::parse and its table disagree: {difference}");
            }
        }
        (Err(_), Err(_)) => {}
        (Err(refusal), Ok(goblin)) => {
            assert!(
                only_goblin_reads(data, &raw, &goblin).is_some(),
                "only goblin reads this input ({} program headers, {} notes); object: {refusal}",
                goblin.segments.len(),
                goblin.notes.len()
            );
        }
        (Ok(object), Err(refusal)) => {
            assert!(
                only_object_reads(&raw, &object).is_some(),
                "only object reads this input ({} program headers, {} notes); goblin: {refusal}",
                object.segments.len(),
                object.notes.len()
            );
        }
    }
});
