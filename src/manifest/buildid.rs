//! GNU build-ids of the ELF files a process maps, read from the files
//! themselves: through `/proc/PID/map_files/START-END` (which reaches the very
//! file that is mapped, even when it was deleted or replaced since), or by
//! path when that link cannot be opened and the file was not deleted.
//!
//! Only the ELF header, the program headers and the `PT_NOTE` segments are
//! read (a few KiB with positional reads), once per distinct file.

use crate::process::maps::Mapping;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

const NT_GNU_BUILD_ID: u32 = 3;
/// Upper bound on the note bytes read from one file.
const MAX_NOTES: u64 = 64 << 10;

/// The build-id (raw bytes) of an ELF64 little-endian file, if it has one.
pub fn read_build_id(file: &File) -> Option<Vec<u8>> {
    let mut ehdr = [0u8; 64];
    file.read_exact_at(&mut ehdr, 0).ok()?;
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u64::from(u16_at(&ehdr, 54));
    let phnum = u64::from(u16_at(&ehdr, 56));
    if phentsize < 56 || phnum == 0 || phnum > 4096 {
        return None;
    }
    let mut phdrs = vec![0u8; (phentsize * phnum) as usize];
    file.read_exact_at(&mut phdrs, phoff).ok()?;
    for ph in phdrs.chunks_exact(phentsize as usize) {
        // PT_NOTE
        if u32_at(ph, 0) != 4 {
            continue;
        }
        let (offset, size) = (u64_at(ph, 8), u64_at(ph, 32).min(MAX_NOTES));
        let mut notes = vec![0u8; size as usize];
        if file.read_exact_at(&mut notes, offset).is_err() {
            continue;
        }
        if let Some(id) = find_build_id(&notes) {
            return Some(id);
        }
    }
    None
}

/// Finds `NT_GNU_BUILD_ID` (name "GNU") in a run of ELF notes.
pub fn find_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    let pad4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let namesz = u32::from_le_bytes(notes[0..4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(notes[4..8].try_into().ok()?) as usize;
        let kind = u32::from_le_bytes(notes[8..12].try_into().ok()?);
        let name_end = 12usize.checked_add(pad4(namesz))?;
        let desc_end = name_end.checked_add(pad4(descsz))?;
        if name_end.checked_add(descsz)? > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && namesz == 4 && &notes[12..16] == b"GNU\0" {
            return Some(notes[name_end..name_end + descsz].to_vec());
        }
        notes = notes.get(desc_end..).unwrap_or(&[]);
    }
    None
}

/// Build-ids of the files behind `mappings` of process `pid`, keyed by
/// mapping start address; files are read once per (device, inode).
pub fn mapped_build_ids(pid: i32, mappings: &[&Mapping]) -> HashMap<u64, Vec<u8>> {
    // (device, inode) -> build-id, so each file is read once.
    type FileKey = ((u32, u32), u64);
    let mut by_file: HashMap<FileKey, Option<Vec<u8>>> = HashMap::new();
    let mut out = HashMap::new();
    for m in mappings {
        if !m.is_file() || m.inode == 0 {
            continue;
        }
        let id = by_file
            .entry((m.device, m.inode))
            .or_insert_with(|| open_mapped(pid, m).and_then(|f| read_build_id(&f)))
            .clone();
        if let Some(id) = id {
            out.insert(m.start, id);
        }
    }
    out
}

fn open_mapped(pid: i32, m: &Mapping) -> Option<File> {
    let link = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    if let Ok(f) = File::open(&link) {
        return Some(f);
    }
    if m.is_deleted_file() {
        return None;
    }
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::OsStr::from_bytes(&m.name);
    let file = File::open(path).ok()?;
    // Only trust the path if it is still the mapped file.
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    (meta.ino() == m.inode).then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_build_id_of_this_test_binary() {
        let exe = File::open("/proc/self/exe").unwrap();
        let id = read_build_id(&exe);
        // rustc passes --build-id to the linker on Linux.
        assert!(id.as_ref().is_some_and(|id| id.len() >= 8), "{id:?}");
    }

    #[test]
    fn parses_notes() {
        let mut notes = Vec::new();
        for (name, kind, desc) in [
            (&b"CORE\0"[..], 1u32, &[1u8, 2, 3][..]),
            (b"GNU\0", 3, &[0xab; 20]),
        ] {
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&kind.to_le_bytes());
            notes.extend_from_slice(name);
            notes.resize((notes.len() + 3) & !3, 0);
            notes.extend_from_slice(desc);
            notes.resize((notes.len() + 3) & !3, 0);
        }
        assert_eq!(find_build_id(&notes), Some(vec![0xab; 20]));
        assert_eq!(find_build_id(&notes[..20]), None);
    }
}
