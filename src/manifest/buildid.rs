//! Build ids of the ELF files a process maps, read from the files
//! themselves: through `/proc/PID/map_files/START-END` (which reaches the very
//! file that is mapped, even when it was deleted or replaced since), or by
//! path when that link cannot be opened and the file was not deleted.
//!
//! Two kinds identify a build: the GNU build-id (`NT_GNU_BUILD_ID`), and
//! the Go build id that Go's linker writes instead (`.note.go.buildid`:
//! note name "Go", type 4), as `go tool buildid` prints it.
//!
//! Only the ELF header, the program headers and the `PT_NOTE` segments are
//! read (a few KiB with positional reads), once per distinct file.

use crate::process::maps::Mapping;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

const NT_GNU_BUILD_ID: u32 = 3;
/// The type of the note in `.note.go.buildid` (Go's `ELF_NOTE_GOBUILDID_TAG`).
const NT_GO_BUILD_ID: u32 = 4;
/// Upper bound on the note bytes read from one file.
const MAX_NOTES: u64 = 64 << 10;

/// The build ids one ELF file carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BuildIds {
    /// `NT_GNU_BUILD_ID` (note "GNU", type 3): raw bytes.
    pub gnu: Option<Vec<u8>>,
    /// Go's build id (note "Go", type 4): text such as
    /// `4nW4QVxV46Fv_U87SLL5/4Roe4AkfQA_aOMIy2r3A/...`.
    pub go: Option<String>,
}

/// How a file's build ids compare with the ones recorded for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdCheck {
    /// An id of the same kind on both sides, equal.
    Same,
    /// An id of the same kind on both sides, different.
    Different,
    /// An id was recorded, the file has none of that kind: another file.
    MissingInFile,
    /// Nothing was recorded: the file cannot be checked.
    NothingRecorded,
}

impl BuildIds {
    pub fn is_empty(&self) -> bool {
        self.gnu.is_none() && self.go.is_none()
    }

    /// The id that names the file: the GNU one when it has both.
    pub fn primary(&self) -> Option<(IdKind, String)> {
        match (&self.gnu, &self.go) {
            (Some(gnu), _) => Some((IdKind::Gnu, hex(gnu))),
            (None, Some(go)) => Some((IdKind::Go, go.clone())),
            (None, None) => None,
        }
    }

    /// Checks `file`'s ids against these, recorded when the file was
    /// mapped: GNU against GNU when both have one, else Go against Go.
    pub fn check(&self, file: &BuildIds) -> IdCheck {
        let compare = |same: bool| {
            if same {
                IdCheck::Same
            } else {
                IdCheck::Different
            }
        };
        match (self, file) {
            (BuildIds { gnu: Some(a), .. }, BuildIds { gnu: Some(b), .. }) => compare(a == b),
            (BuildIds { go: Some(a), .. }, BuildIds { go: Some(b), .. }) => compare(a == b),
            _ if self.is_empty() => IdCheck::NothingRecorded,
            _ => IdCheck::MissingInFile,
        }
    }
}

/// Which kind of build id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    Gnu,
    Go,
}

impl IdKind {
    pub fn name(self) -> &'static str {
        match self {
            IdKind::Gnu => "gnu",
            IdKind::Go => "go",
        }
    }
}

/// Lower-case hex of `bytes`, as GNU build-ids are written.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string such as [`hex`] writes.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// The GNU build-id (raw bytes) of an ELF64 little-endian file, if it has
/// one.
pub fn read_build_id(file: &File) -> Option<Vec<u8>> {
    read_build_ids(file).gnu
}

/// The build ids of an ELF64 little-endian file, from its `PT_NOTE`
/// segments.
pub fn read_build_ids(file: &File) -> BuildIds {
    let mut ids = BuildIds::default();
    let mut ehdr = [0u8; 64];
    if file.read_exact_at(&mut ehdr, 0).is_err()
        || &ehdr[..4] != b"\x7fELF"
        || ehdr[4] != 2
        || ehdr[5] != 1
    {
        return ids;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u64::from(u16_at(&ehdr, 54));
    let phnum = u64::from(u16_at(&ehdr, 56));
    if phentsize < 56 || phnum == 0 || phnum > 4096 {
        return ids;
    }
    let mut phdrs = vec![0u8; (phentsize * phnum) as usize];
    if file.read_exact_at(&mut phdrs, phoff).is_err() {
        return ids;
    }
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
        let found = find_build_ids(&notes);
        ids.gnu = ids.gnu.or(found.gnu);
        ids.go = ids.go.or(found.go);
        if ids.gnu.is_some() && ids.go.is_some() {
            break;
        }
    }
    ids
}

/// Finds `NT_GNU_BUILD_ID` (name "GNU") in a run of ELF notes.
pub fn find_build_id(notes: &[u8]) -> Option<Vec<u8>> {
    find_build_ids(notes).gnu
}

/// Finds the GNU and Go build ids in a run of ELF notes.
pub fn find_build_ids(mut notes: &[u8]) -> BuildIds {
    let mut ids = BuildIds::default();
    let pad4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let word = |at: usize| u32::from_le_bytes(notes[at..at + 4].try_into().expect("4 bytes"));
        let (namesz, descsz, kind) = (word(0) as usize, word(4) as usize, word(8));
        let Some(name_end) = 12usize.checked_add(pad4(namesz)) else {
            break;
        };
        let Some(desc) = name_end
            .checked_add(descsz)
            .and_then(|end| notes.get(name_end..end))
        else {
            break;
        };
        // Go pads its name with NULs to 4 bytes ("Go\0\0").
        let raw_name = &notes[12..12 + namesz.min(notes.len() - 12)];
        let name = &raw_name[..raw_name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)];
        match (name, kind) {
            (b"GNU", NT_GNU_BUILD_ID) if !desc.is_empty() => {
                ids.gnu.get_or_insert_with(|| desc.to_vec());
            }
            (b"Go", NT_GO_BUILD_ID) if !desc.is_empty() => {
                ids.go
                    .get_or_insert_with(|| String::from_utf8_lossy(desc).into_owned());
            }
            _ => {}
        }
        let desc_end = name_end.saturating_add(pad4(descsz));
        notes = notes.get(desc_end..).unwrap_or(&[]);
    }
    ids
}

/// Build ids of the files behind `mappings` of process `pid`, keyed by
/// mapping start address (files with none are left out); files are read
/// once per (device, inode).
pub fn mapped_ids(pid: i32, mappings: &[&Mapping]) -> HashMap<u64, BuildIds> {
    // (device, inode) -> build ids, so each file is read once.
    type FileKey = ((u32, u32), u64);
    let mut by_file: HashMap<FileKey, BuildIds> = HashMap::new();
    let mut out = HashMap::new();
    for m in mappings {
        if !m.is_file() || m.inode == 0 {
            continue;
        }
        let ids = by_file
            .entry((m.device, m.inode))
            .or_insert_with(|| {
                open_mapped(pid, m)
                    .map(|f| read_build_ids(&f))
                    .unwrap_or_default()
            })
            .clone();
        if !ids.is_empty() {
            out.insert(m.start, ids);
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

    fn notes(list: &[(&[u8], u32, &[u8])]) -> Vec<u8> {
        let mut notes = Vec::new();
        for (name, kind, desc) in list {
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&kind.to_le_bytes());
            notes.extend_from_slice(name);
            notes.resize((notes.len() + 3) & !3, 0);
            notes.extend_from_slice(desc);
            notes.resize((notes.len() + 3) & !3, 0);
        }
        notes
    }

    #[test]
    fn parses_notes() {
        let notes = notes(&[(b"CORE\0", 1, &[1, 2, 3]), (b"GNU\0", 3, &[0xab; 20])]);
        assert_eq!(find_build_id(&notes), Some(vec![0xab; 20]));
        assert_eq!(find_build_id(&notes[..20]), None);
    }

    /// The note Go's linker writes: name "Go" (namesz 4 with the padding
    /// NUL), type 4, the id as text; a "Go" note of another type is not it.
    #[test]
    fn parses_a_go_build_id() {
        let id =
            b"4nW4QVxV46Fv_U87SLL5/4Roe4AkfQA_aOMIy2r3A/ifZutOjrfNxd0_1v_YUn/1381izSLMz-RauDqx78x";
        let notes = notes(&[(b"Go\0\0", 1, b"abc"), (b"Go\0\0", 4, id)]);
        let ids = find_build_ids(&notes);
        assert_eq!(ids.gnu, None);
        assert_eq!(ids.go.as_deref().map(str::as_bytes), Some(&id[..]));
        assert_eq!(ids.primary().map(|(kind, _)| kind), Some(IdKind::Go));
    }

    #[test]
    fn checks_ids_of_the_same_kind() {
        let gnu = |b: u8| BuildIds {
            gnu: Some(vec![b; 20]),
            go: None,
        };
        let go = |s: &str| BuildIds {
            gnu: None,
            go: Some(s.into()),
        };
        assert_eq!(gnu(1).check(&gnu(1)), IdCheck::Same);
        assert_eq!(gnu(1).check(&gnu(2)), IdCheck::Different);
        assert_eq!(go("a/b").check(&go("a/b")), IdCheck::Same);
        assert_eq!(go("a/b").check(&go("a/c")), IdCheck::Different);
        assert_eq!(go("a/b").check(&gnu(1)), IdCheck::MissingInFile);
        assert_eq!(gnu(1).check(&BuildIds::default()), IdCheck::MissingInFile);
        assert_eq!(BuildIds::default().check(&gnu(1)), IdCheck::NothingRecorded);
        assert_eq!(
            BuildIds::default().check(&BuildIds::default()),
            IdCheck::NothingRecorded
        );
    }
}
