//! The `CORESNAP` note: the part of the manifest known before any memory is
//! copied, as compact UTF-8 JSON, in the core's PT_NOTE segment (last, after
//! the kernel-style notes).
//!
//! Name `"CORESNAP"`, type [`NT_CORESNAP_MANIFEST`] (`0x4a534f4e`, "JSON" in
//! ASCII). Debuggers skip it: lldb and elfutils read only the notes named
//! `CORE` and `LINUX`; BFD (gdb) sends names starting with `CORE` through its
//! Solaris/Linux note parsers, which ignore a type they do not know, which is
//! why the type is far from every `NT_*` value in use.

use super::Manifest;
use crate::elf::notes::Note;

pub const NOTE_NAME: &[u8] = b"CORESNAP";
pub const NT_CORESNAP_MANIFEST: u32 = 0x4a53_4f4e;

/// The note for `manifest` (which should hold only pre-copy facts).
pub fn encode(manifest: &Manifest) -> Note {
    let desc = serde_json::to_vec(manifest).expect("manifest serializes");
    Note::new(NOTE_NAME, NT_CORESNAP_MANIFEST, desc)
}

/// Finds the CORESNAP note in the bytes of a PT_NOTE segment and returns
/// its JSON text (`None`: no such note).
pub fn find(notes: &[u8]) -> Option<&[u8]> {
    let pad4 = |n: usize| (n + 3) & !3;
    let mut rest = notes;
    while rest.len() >= 12 {
        let namesz = u32::from_le_bytes(rest[0..4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(rest[4..8].try_into().ok()?) as usize;
        let kind = u32::from_le_bytes(rest[8..12].try_into().ok()?);
        let name_end = 12usize.checked_add(pad4(namesz))?;
        let desc_end = name_end.checked_add(descsz)?;
        if desc_end > rest.len() || 12 + namesz > rest.len() {
            return None;
        }
        let name = &rest[12..12 + namesz];
        if kind == NT_CORESNAP_MANIFEST && name.strip_suffix(b"\0") == Some(NOTE_NAME) {
            return Some(&rest[name_end..desc_end]);
        }
        rest = rest.get(pad4(desc_end)..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::notes::encode_notes;

    #[test]
    fn found_among_other_notes() {
        let manifest = super::super::tests::sample();
        let notes = encode_notes(&[
            Note::new(b"CORE", 1, vec![1; 5]),
            encode(&manifest),
            Note::new(b"LINUX", 0x202, vec![2; 8]),
        ]);
        let json = find(&notes).expect("note present");
        let back: Manifest = serde_json::from_slice(json).unwrap();
        assert_eq!(back, manifest);
        assert_eq!(
            find(&encode_notes(&[Note::new(
                b"CORE",
                NT_CORESNAP_MANIFEST,
                vec![0; 4]
            )])),
            None
        );
    }
}
