//! The ELF files a core's process had mapped (from `NT_FILE`), matched to
//! the files on disk by build-id, and what is needed from them: unwind
//! tables for [`super::unwind`] and names for addresses.
//!
//! A file on disk is used only when its build id equals the one the core
//! holds for it (read from the ELF header page that the core keeps of each
//! ELF mapping, or else from the CORESNAP note): a GNU build-id, or for a Go
//! program the Go build id. When the core holds none, the file cannot be
//! checked: it is used with a warning, or refused with
//! [`FileOptions::require_build_id`]. Separate debug files are
//! looked up by build-id under the debug directories (and by
//! `.gnu_debuglink`), and used only when their build-id matches too. The
//! vDSO is read from the core itself.

use super::dwarf::DebugInfo;
use super::elf::CoreFile;
use super::local_file;
use super::memory::Memory;
use super::notes::FileMapping;
use super::source::ByteSource;
use crate::manifest::buildid::{BuildIds, IdCheck, find_build_ids, read_build_ids};
use gimli::{EndianArcSlice, LittleEndian};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use std::collections::HashMap;
use std::fs::File;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest file read from disk for its unwind tables and symbols.
const MAX_FILE: u64 = 2 << 30;
/// Bytes of an ELF header page read from the core.
const HEADER_BYTES: usize = 64 << 10;

/// What happened when the file behind a mapping was looked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "detail")]
pub enum FileStatus {
    /// The file on disk has the build-id the core records: used.
    Used,
    /// The vDSO, read from the core's memory: used.
    FromCore,
    /// The file on disk has another build-id: not used.
    BuildIdMismatch,
    /// The core records no build id for it (its first page is not in the
    /// core, or has no build-id note): not used with `--require-build-id`.
    NoBuildIdInCore,
    /// The core records no build id for it: used all the same, unchecked.
    Unchecked,
    /// The file on disk has no build-id: not used.
    NoBuildIdOnDisk,
    /// The file cannot be read (missing, deleted, permission): not used.
    Unreadable(String),
    /// The file is not an ELF file we can use.
    Unusable(String),
    /// Files on disk were not consulted (`--no-files`).
    NotLooked,
}

impl FileStatus {
    pub fn describe(&self) -> String {
        match self {
            FileStatus::Used => "build-id matches, used".into(),
            FileStatus::FromCore => "read from the core".into(),
            FileStatus::BuildIdMismatch => {
                "NOT USED: the file on disk has a different build-id (it was replaced since the dump)".into()
            }
            FileStatus::NoBuildIdInCore => {
                "NOT USED: the core holds no build id for it, so the file on disk cannot be checked (--require-build-id)".into()
            }
            FileStatus::Unchecked => {
                "used UNCHECKED: the core holds no build id for it, so the file on disk may not be the one that was mapped".into()
            }
            FileStatus::NoBuildIdOnDisk => {
                "NOT USED: the file on disk lacks the build id the core records (it was replaced since the dump)".into()
            }
            FileStatus::Unreadable(e) => format!("NOT USED: cannot read the file on disk: {e}"),
            FileStatus::Unusable(e) => format!("NOT USED: {e}"),
            FileStatus::NotLooked => "files on disk not consulted".into(),
        }
    }
}

/// One mapped ELF object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleInfo {
    pub path: String,
    /// Lowest and highest address of its mappings.
    #[serde(serialize_with = "super::model::hex")]
    pub start: u64,
    #[serde(serialize_with = "super::model::hex")]
    pub end: u64,
    /// Load bias: run-time address minus the address in the file.
    #[serde(serialize_with = "super::model::opt_hex")]
    pub bias: Option<u64>,
    /// Build id recorded in the core: a GNU build-id in hex, or a Go build
    /// id as `go tool buildid` prints it.
    pub build_id: Option<String>,
    /// `gnu` or `go`.
    pub build_id_kind: Option<&'static str>,
    /// Where that build id came from: `elf-header-page` or `coresnap-note`.
    pub build_id_from: Option<String>,
    /// Build id of the file on disk (of the kind checked), when it was
    /// read and matches or was used unchecked; never that of a file that
    /// does not match.
    pub disk_build_id: Option<String>,
    /// Every build id the core records for the file.
    #[serde(skip)]
    pub recorded_ids: BuildIds,
    #[serde(flatten)]
    pub status: FileStatus,
    /// Separate debug file used for names and lines.
    pub debug_file: Option<String>,
    /// Whether it has CFI (`.eh_frame` or `.debug_frame`).
    pub has_cfi: bool,
}

/// The bytes of an ELF file: mapped from disk, or owned (the vDSO, copied
/// from the core).
#[derive(Clone)]
pub struct FileBytes(Arc<dyn Deref<Target = [u8]> + Send + Sync>);

impl FileBytes {
    pub fn owned(bytes: Vec<u8>) -> FileBytes {
        FileBytes(Arc::new(bytes))
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Section bytes shared with the file's bytes.
#[derive(Clone)]
pub struct Shared {
    data: FileBytes,
    range: Range<usize>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            data: FileBytes::owned(Vec::new()),
            range: 0..0,
        }
    }
}

impl Deref for Shared {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data[self.range.clone()]
    }
}

/// A function symbol. Its name stays in the mapped file (`name` is where):
/// node's symbol table alone has hundreds of thousands of names, and
/// copying them out and sorting them by name cost more than eu-stack's
/// whole backtrace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sym {
    addr: u64,
    size: u64,
    name: NameAt,
}

/// Where a symbol's name is: in the file or its debug file, at a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NameAt {
    in_debug_file: bool,
    start: usize,
    len: usize,
}

/// CFI of one object, for framehop and for telling how a frame was found.
pub struct Cfi {
    pub eh_frame: Option<(Shared, Range<u64>)>,
    pub eh_frame_hdr: Option<(Shared, Range<u64>)>,
    pub debug_frame: Option<Shared>,
    pub text: Option<Range<u64>>,
    pub got: Option<Range<u64>>,
}

/// What a loaded object can tell.
pub struct Image {
    data: FileBytes,
    debug: Option<FileBytes>,
    symbols: Vec<Sym>,
    /// Read lazily: most modules of a process hold no frame.
    dwarf: Option<DebugInfo>,
    pub cfi: Cfi,
}

/// A module and, when usable, its image.
pub struct Module {
    pub info: ModuleInfo,
    pub image: Option<Image>,
}

/// The name of one frame of code (innermost first when inlined).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FunctionFrame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// An inlined call (this frame has no stack frame of its own).
    pub inlined: bool,
}

/// What is known about one code address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Symbolized {
    /// Module path.
    pub module: Option<String>,
    /// From debug info, innermost first (the last is the real function).
    pub frames: Vec<FunctionFrame>,
    /// From the symbol tables: name and offset of the address in it.
    pub symbol: Option<(String, u64)>,
}

impl Symbolized {
    /// The name of the real (not inlined) function.
    pub fn function(&self) -> Option<String> {
        self.frames
            .last()
            .and_then(|f| f.function.clone())
            .or_else(|| self.symbol.as_ref().map(|s| s.0.clone()))
    }
}

/// Options for finding files.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Consult files on disk at all.
    pub use_files: bool,
    /// Where separate debug files are looked for (`/usr/lib/debug`).
    pub debug_dirs: Vec<PathBuf>,
    /// Prefix added to every path from the core (a sysroot), if any.
    pub sysroot: Option<PathBuf>,
    /// Read DWARF for inlined frames, file:line, the compiler's function
    /// names and tail calls. Off by default: a distribution's debug file
    /// compresses it, and inflating libc's takes several times longer
    /// than everything else a backtrace needs (`docs/INSPECT.md`).
    pub debug_info: bool,
    /// Refuse a file on disk that cannot be checked because the core
    /// holds no build id for it, instead of using it with a warning.
    pub require_build_id: bool,
}

impl Default for FileOptions {
    fn default() -> FileOptions {
        FileOptions {
            use_files: true,
            debug_dirs: vec![PathBuf::from("/usr/lib/debug")],
            sysroot: None,
            debug_info: false,
            require_build_id: false,
        }
    }
}

pub fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Finds the modules of a core. `manifest_build_ids`: build ids by mapping
/// start address, from the CORESNAP note.
pub fn discover<S: ByteSource>(
    core: &CoreFile<S>,
    memory: &Memory<'_, S>,
    files: &[FileMapping],
    auxv: &[(u64, u64)],
    manifest_build_ids: &HashMap<u64, BuildIds>,
    options: &FileOptions,
    warnings: &mut Vec<String>,
) -> Vec<Module> {
    let _ = core;
    // Group the NT_FILE entries by path, in order of first appearance.
    let mut order: Vec<String> = Vec::new();
    let mut by_path: HashMap<&str, Vec<&FileMapping>> = HashMap::new();
    for f in files {
        let entry = by_path.entry(&f.path).or_default();
        if entry.is_empty() {
            order.push(f.path.clone());
        }
        entry.push(f);
    }
    let mut modules = Vec::new();
    for path in &order {
        let maps = &by_path[path.as_str()];
        let start = maps.iter().map(|m| m.start).min().unwrap_or(0);
        let end = maps.iter().map(|m| m.end).max().unwrap_or(0);
        let Some(header_map) = maps
            .iter()
            .filter(|m| m.offset == 0)
            .min_by_key(|m| m.start)
        else {
            continue;
        };
        let header = memory.read_prefix(header_map.start, HEADER_BYTES);
        let parsed = if header.starts_with(b"\x7fELF") {
            ElfHeaderPage::parse(&header)
        } else {
            None
        };
        let mut info = ModuleInfo {
            path: path.clone(),
            start,
            end,
            bias: None,
            build_id: None,
            build_id_kind: None,
            build_id_from: None,
            disk_build_id: None,
            recorded_ids: BuildIds::default(),
            status: FileStatus::NotLooked,
            debug_file: None,
            has_cfi: false,
        };
        if let Some(page) = &parsed {
            info.bias = page.bias(header_map.start);
            if let Some(bias) = info.bias {
                let mut ids = BuildIds::default();
                for (vaddr, size) in &page.notes {
                    let bytes =
                        memory.read_prefix(bias.wrapping_add(*vaddr), (*size).min(4096) as usize);
                    let found = find_build_ids(&bytes);
                    ids.gnu = ids.gnu.or(found.gnu);
                    ids.go = ids.go.or(found.go);
                }
                info.set_recorded(ids, "elf-header-page");
            }
        }
        if info.build_id.is_none()
            && let Some(ids) = maps.iter().find_map(|m| manifest_build_ids.get(&m.start))
        {
            info.set_recorded(ids.clone(), "coresnap-note");
        }
        if header.is_empty() && info.build_id.is_none() && !looks_like_elf_on_disk(path, options) {
            // Not an ELF file (or nothing to go on): not a module.
            continue;
        }
        if !header.is_empty() && parsed.is_none() {
            // The first page is there and is not ELF: a data file.
            continue;
        }
        let image = if options.use_files {
            load_from_disk(&mut info, header_map.start, options, warnings)
        } else {
            None
        };
        if let Some(img) = &image {
            info.has_cfi = img.cfi.eh_frame.is_some() || img.cfi.debug_frame.is_some();
        }
        modules.push(Module { info, image });
    }
    if let Some(&(_, vdso)) = auxv
        .iter()
        .find(|(k, _)| *k == super::notes::AT_SYSINFO_EHDR)
        && let Some(m) = vdso_module(memory, vdso)
    {
        modules.push(m);
    }
    modules
}

fn looks_like_elf_on_disk(path: &str, options: &FileOptions) -> bool {
    if !options.use_files {
        return false;
    }
    let mut magic = [0u8; 4];
    open_named_file(path, options)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0))
        .is_ok()
        && &magic == b"\x7fELF"
}

/// The file at a path the core names, opened only if it is a regular file
/// that may be read ([`local_file`]): inside the sysroot when there is
/// one, where symbolic links are followed but stay inside it; otherwise on
/// this machine, as an absolute path whose last component is not a
/// symbolic link (the kernel writes `NT_FILE` paths with every link
/// resolved).
fn open_named_file(path: &str, options: &FileOptions) -> std::io::Result<File> {
    let p = path.strip_suffix(" (deleted)").unwrap_or(path);
    if !p.starts_with('/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not an absolute path: not looked up",
        ));
    }
    let root = options.sysroot.as_deref();
    local_file::open_regular(root, Path::new(p), root.is_some())
}

fn disk_path(path: &str, options: &FileOptions) -> PathBuf {
    let p = path.strip_suffix(" (deleted)").unwrap_or(path);
    match &options.sysroot {
        Some(root) => root.join(p.trim_start_matches('/')),
        None => PathBuf::from(p),
    }
}

/// Program headers from an ELF header page.
struct ElfHeaderPage {
    /// (p_vaddr - p_offset) of the PT_LOAD that maps file offset 0.
    first_load_base: Option<u64>,
    /// (p_vaddr, p_filesz) of each PT_NOTE.
    notes: Vec<(u64, u64)>,
}

impl ElfHeaderPage {
    fn parse(b: &[u8]) -> Option<ElfHeaderPage> {
        if b.len() < 64 || b[4] != 2 || b[5] != 1 {
            return None;
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u64_at =
            |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let phoff = usize::try_from(u64_at(b, 32)).ok()?;
        let phentsize = usize::from(u16_at(54));
        let phnum = usize::from(u16_at(56));
        if phentsize < 56 {
            return None;
        }
        let mut page = ElfHeaderPage {
            first_load_base: None,
            notes: Vec::new(),
        };
        for i in 0..phnum.min(512) {
            let Some(ph) = phoff
                .checked_add(i * phentsize)
                .and_then(|at| b.get(at..at.checked_add(56)?))
            else {
                break;
            };
            let p_type = u32::from_le_bytes(ph[0..4].try_into().expect("4 bytes"));
            let offset = u64_at(ph, 8);
            let vaddr = u64_at(ph, 16);
            let filesz = u64_at(ph, 32);
            match p_type {
                1 if page.first_load_base.is_none() && offset < 4096 => {
                    page.first_load_base = Some(vaddr.wrapping_sub(offset) & !0xfff);
                }
                4 => page.notes.push((vaddr, filesz)),
                _ => {}
            }
        }
        Some(page)
    }

    fn bias(&self, mapped_at: u64) -> Option<u64> {
        self.first_load_base
            .map(|base| mapped_at.wrapping_sub(base))
    }
}

impl ModuleInfo {
    /// Records `ids`, read from `from`, as what the core holds.
    fn set_recorded(&mut self, ids: BuildIds, from: &str) {
        if let Some((kind, id)) = ids.primary() {
            self.build_id = Some(id);
            self.build_id_kind = Some(kind.name());
            self.build_id_from = Some(from.into());
            self.recorded_ids = ids;
        }
    }
}

fn load_from_disk(
    info: &mut ModuleInfo,
    header_start: u64,
    options: &FileOptions,
    warnings: &mut Vec<String>,
) -> Option<Image> {
    let path = disk_path(&info.path, options);
    let file = match open_named_file(&info.path, options) {
        Ok(f) => f,
        Err(e) => {
            info.status = FileStatus::Unreadable(format!("{}: {e}", path.display()));
            return None;
        }
    };
    let disk_ids = read_build_ids(&file);
    // The disk's id of the kind the core records (any, if it records none).
    info.disk_build_id = match info.build_id_kind {
        Some("go") => disk_ids.go.clone(),
        Some(_) => disk_ids.gnu.as_deref().map(hex_bytes),
        None => disk_ids.primary().map(|(_, id)| id),
    };
    let core_id = info.build_id.clone().unwrap_or_default();
    match info.recorded_ids.check(&disk_ids) {
        IdCheck::Same => {}
        IdCheck::Different => {
            info.status = FileStatus::BuildIdMismatch;
            // Asked whether this is the file that was mapped, the answer is
            // no; what the file is instead is not reported: a forged core
            // could name any ELF file of this machine to learn its build-id
            // from a report that is shared (docs/SECURITY.md).
            info.disk_build_id = None;
            warnings.push(format!(
                "{}: the file on disk has another build-id than the one the core records ({core_id}): not used for unwinding or names",
                info.path
            ));
            return None;
        }
        IdCheck::MissingInFile => {
            info.status = FileStatus::NoBuildIdOnDisk;
            warnings.push(format!(
                "{}: the core records build id {core_id}, the file on disk has none of that kind: not used for unwinding or names",
                info.path
            ));
            return None;
        }
        IdCheck::NothingRecorded if options.require_build_id => {
            info.status = FileStatus::NoBuildIdInCore;
            return None;
        }
        IdCheck::NothingRecorded => {
            warnings.push(format!(
                "{}: the core holds no build id for it, so the file on disk could not be checked; used unchecked (names and frames may be wrong if it was replaced since the dump; --require-build-id refuses it)",
                info.path
            ));
        }
    }
    let data = match read_limited(&file) {
        Ok(d) => d,
        Err(e) => {
            info.status = FileStatus::Unreadable(format!("{}: {e}", path.display()));
            return None;
        }
    };
    if info.bias.is_none() {
        // The core lacks the header page; the file (same build-id) has it.
        info.bias = ElfHeaderPage::parse(&data).and_then(|p| p.bias(header_start));
    }
    // Debug files are found by GNU build-id; a Go program has its DWARF
    // in the file itself.
    let debug = disk_ids
        .gnu
        .as_deref()
        .and_then(|id| find_debug_file(&data, &path, &hex_bytes(id), options));
    let checked = info.recorded_ids.check(&disk_ids) == IdCheck::Same;
    match Image::new(
        data,
        debug.as_ref().map(|(_, d)| d.clone()),
        options.debug_info,
    ) {
        Ok(image) => {
            info.status = if checked {
                FileStatus::Used
            } else {
                FileStatus::Unchecked
            };
            info.debug_file = debug.map(|(p, _)| p.display().to_string());
            Some(image)
        }
        Err(e) => {
            info.status = FileStatus::Unusable(e);
            None
        }
    }
}

/// The file's bytes, mapped: only the pages the headers, symbol tables,
/// CFI and debug info looked at are read, where reading a libc and its
/// debug file whole cost more than the rest of a backtrace.
fn read_limited(file: &File) -> std::io::Result<FileBytes> {
    let len = file.metadata()?.len();
    if len > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "{len} bytes is too large to read"
        )));
    }
    if len == 0 {
        return Ok(FileBytes::owned(Vec::new()));
    }
    // SAFETY: a private read-only mapping; its bytes are only read through
    // bounds-checked parsers (object, gimli, framehop), so a file changed
    // while mapped gives wrong names at worst. Truncating it meanwhile
    // would raise SIGBUS on a page past the new end, as with the mmap
    // readers of gdb and elfutils; libraries and debug files are replaced
    // by renaming a new file over them, which leaves this one intact.
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(FileBytes(Arc::new(map)))
}

/// A separate debug file with the same build-id: under each debug dir as
/// `.build-id/ab/cdef....debug`, or by `.gnu_debuglink`.
fn find_debug_file(
    data: &[u8],
    path: &Path,
    build_id: &str,
    options: &FileOptions,
) -> Option<(PathBuf, FileBytes)> {
    // (directory that confines the lookup, if any; the path in it). The
    // build-id may come from the CORESNAP note and the debuglink from a
    // file of the sysroot: neither may step out of where it is looked up.
    let mut candidates: Vec<(Option<&Path>, PathBuf)> = Vec::new();
    if build_id.len() > 2 && build_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        for dir in &options.debug_dirs {
            candidates.push((
                None,
                dir.join(".build-id")
                    .join(&build_id[..2])
                    .join(format!("{}.debug", &build_id[2..])),
            ));
        }
    }
    let sysroot = options.sysroot.as_deref();
    // The mapped file's path as the core names it (inside the sysroot).
    let named = match sysroot {
        Some(root) => Path::new("/").join(path.strip_prefix(root).unwrap_or(path)),
        None => path.to_path_buf(),
    };
    if let Ok(obj) = object::File::parse(data)
        && let Ok(Some((link, _crc))) = obj.gnu_debuglink()
        && let Ok(link) = std::str::from_utf8(link)
        && !link.is_empty()
        && !link.contains('/')
        && link != ".."
        && link != "."
        && let Some(dir) = named.parent()
    {
        candidates.push((sysroot, dir.join(link)));
        candidates.push((sysroot, dir.join(".debug").join(link)));
        for d in &options.debug_dirs {
            candidates.push((Some(d.as_path()), dir.join(link)));
        }
    }
    for (root, c) in candidates {
        let shown = match root {
            Some(r) => r.join(c.strip_prefix("/").unwrap_or(&c)),
            None => c.clone(),
        };
        if shown == path {
            continue;
        }
        let Ok(file) = local_file::open_regular(root, &c, true) else {
            continue;
        };
        let c = shown;
        let id = crate::manifest::buildid::read_build_id(&file).map(|id| hex_bytes(&id));
        if id.as_deref() != Some(build_id) {
            continue;
        }
        if let Ok(d) = read_limited(&file) {
            return Some((c, d));
        }
    }
    None
}

fn shared_section(
    data: &FileBytes,
    obj: &object::File<'_>,
    name: &str,
) -> Option<(Shared, Range<u64>)> {
    let section = obj.section_by_name(name)?;
    let (offset, size) = section.file_range()?;
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    if end > data.len() {
        return None;
    }
    Some((
        Shared {
            data: data.clone(),
            range: start..end,
        },
        section.address()..section.address().saturating_add(section.size()),
    ))
}

/// `.debug_frame`, for a file without `.eh_frame` (a Go program: its
/// linker writes only `.debug_frame`, compressed); inflated when
/// compressed.
fn debug_frame(data: &FileBytes, obj: &object::File<'_>) -> Option<Shared> {
    if obj.section_by_name(".eh_frame").is_some() {
        return shared_section(data, obj, ".debug_frame").map(|s| s.0);
    }
    let section = obj.section_by_name(".debug_frame")?;
    let stored = section.compressed_file_range().ok()?;
    if stored.format == object::CompressionFormat::None {
        return shared_section(data, obj, ".debug_frame").map(|s| s.0);
    }
    // The header's size is the file's word: a file on disk or in a sysroot
    // may claim gigabytes. Go's frame tables are a few MiB.
    if stored.uncompressed_size > MAX_INFLATED_DEBUG_FRAME {
        return None;
    }
    let inflated = section.uncompressed_data().ok()?.into_owned();
    let len = inflated.len();
    Some(Shared {
        data: FileBytes::owned(inflated),
        range: 0..len,
    })
}

/// Largest compressed `.debug_frame` inflated for unwinding.
const MAX_INFLATED_DEBUG_FRAME: u64 = 256 << 20;

fn section_range(obj: &object::File<'_>, name: &str) -> Option<Range<u64>> {
    let s = obj.section_by_name(name)?;
    Some(s.address()..s.address().saturating_add(s.size()))
}

/// The function symbols of `obj`, parsed from `bytes`.
fn function_symbols(obj: &object::File<'_>, bytes: &[u8], in_debug_file: bool, out: &mut Vec<Sym>) {
    let base = bytes.as_ptr() as usize;
    let exec_sections: Vec<object::SectionIndex> = obj
        .sections()
        // By SHF_EXECINSTR: a debug file's .text is SHT_NOBITS.
        .filter(|s| match s.flags() {
            object::SectionFlags::Elf { sh_flags, .. } => {
                sh_flags.contains(object::elf::SHF_EXECINSTR)
            }
            _ => s.kind() == object::SectionKind::Text,
        })
        .map(|s| s.index())
        .collect();
    // .dynsym repeats (part of) .symtab: read it only when there is no
    // .symtab (a stripped file).
    let has_symtab = obj.symbols().next().is_some();
    let dynamic = obj.dynamic_symbols().filter(|_| !has_symtab);
    for sym in obj.symbols().chain(dynamic) {
        if sym.is_undefined() || !matches!(sym.kind(), SymbolKind::Text | SymbolKind::Unknown) {
            continue;
        }
        if !sym
            .section_index()
            .is_some_and(|i| exec_sections.contains(&i))
        {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() {
            continue;
        }
        // Versioned dynamic names (`pthread_cond_wait@@GLIBC_2.3.2`) are
        // shown without the version, as gdb does.
        let name = name.split('@').next().unwrap_or(name);
        // Names are slices of the file's bytes (the string table).
        let Some(start) = (name.as_ptr() as usize)
            .checked_sub(base)
            .filter(|start| start + name.len() <= bytes.len())
        else {
            continue;
        };
        out.push(Sym {
            addr: sym.address(),
            size: sym.size(),
            name: NameAt {
                in_debug_file,
                start,
                len: name.len(),
            },
        });
    }
}

fn name_bytes<'a>(data: &'a FileBytes, debug: Option<&'a FileBytes>, at: NameAt) -> &'a [u8] {
    let file: &[u8] = match (at.in_debug_file, debug) {
        (true, Some(d)) => d,
        (true, None) => &[],
        (false, _) => data,
    };
    file.get(at.start..at.start + at.len).unwrap_or(&[])
}

impl Image {
    /// An image from the bytes of an ELF file, and optionally of its
    /// separate debug file (its symbol table, and its DWARF when
    /// `read_dwarf`).
    pub fn new(
        data: FileBytes,
        debug: Option<FileBytes>,
        read_dwarf: bool,
    ) -> Result<Image, String> {
        let obj =
            object::File::parse(&*data).map_err(|e| format!("not a readable ELF file: {e}"))?;
        let mut symbols = Vec::new();
        function_symbols(&obj, &data, false, &mut symbols);
        let mut dwarf = None;
        if let Some(debug) = &debug
            && let Ok(dobj) = object::File::parse(&**debug)
        {
            function_symbols(&dobj, debug, true, &mut symbols);
            if read_dwarf {
                dwarf = DebugInfo::new(debug.clone());
            }
        }
        if read_dwarf && dwarf.is_none() {
            dwarf = DebugInfo::new(data.clone());
        }
        let name = |s: &Sym| name_bytes(&data, debug.as_ref(), s.name);
        // Names are compared only between symbols at the same address.
        symbols.sort_unstable_by(|a, b| {
            a.addr
                .cmp(&b.addr)
                .then_with(|| name(a).cmp(name(b)))
                .then(a.size.cmp(&b.size))
        });
        symbols.dedup_by(|a, b| a.addr == b.addr && a.size == b.size && name(a) == name(b));
        let cfi = Cfi {
            eh_frame: shared_section(&data, &obj, ".eh_frame"),
            eh_frame_hdr: shared_section(&data, &obj, ".eh_frame_hdr"),
            debug_frame: debug_frame(&data, &obj),
            text: section_range(&obj, ".text"),
            got: section_range(&obj, ".got"),
        };
        Ok(Image {
            data,
            debug,
            symbols,
            dwarf,
            cfi,
        })
    }

    /// gdb's choice of minimal symbol for `addr` (an address in the file):
    /// the last symbol at or before it, preferring sized symbols and
    /// refusing a sized symbol that ends before `addr`.
    fn symbol(&self, addr: u64) -> Option<(String, u64)> {
        let end = self.symbols.partition_point(|s| s.addr <= addr);
        let mut hi = end.checked_sub(1)?;
        let mut best_zero: Option<usize> = None;
        let found = loop {
            let s = &self.symbols[hi];
            if s.size == 0 {
                best_zero.get_or_insert(hi);
                if hi == 0 {
                    break None;
                }
                hi -= 1;
                continue;
            }
            break Some(hi);
        };
        let chosen = match found {
            Some(i) if addr < self.symbols[i].addr.saturating_add(self.symbols[i].size) => Some(i),
            _ => best_zero,
        }?;
        let s = &self.symbols[chosen];
        Some((demangle(self.name(s)), addr - s.addr))
    }

    fn name(&self, s: &Sym) -> &str {
        // Checked as UTF-8 when the symbol was read.
        std::str::from_utf8(name_bytes(&self.data, self.debug.as_ref(), s.name)).unwrap_or("")
    }

    fn dwarf_frames(&self, addr: u64) -> Vec<FunctionFrame> {
        let Some(ctx) = self.dwarf.as_ref().and_then(|d| d.context(addr)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Ok(mut iter) = ctx.find_frames(addr).skip_all_loads() else {
            return out;
        };
        while let Ok(Some(frame)) = iter.next() {
            let function = frame
                .function
                .as_ref()
                .and_then(|f| f.raw_name().ok())
                .map(|n| demangle(n.as_ref()));
            out.push(FunctionFrame {
                function,
                file: frame
                    .location
                    .as_ref()
                    .and_then(|l| l.file.map(str::to_string)),
                line: frame.location.as_ref().and_then(|l| l.line),
                inlined: true,
            });
            if out.len() > 64 {
                break;
            }
        }
        if let Some(last) = out.last_mut() {
            last.inlined = false;
        }
        // A location with no function at all says nothing about names.
        if out.len() == 1 && out[0].function.is_none() && out[0].file.is_none() {
            out.clear();
        }
        out
    }
}

/// A call site in a function's debug info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSite {
    /// Address after the call (or jump) instruction, in the file.
    pub return_pc: u64,
    /// A tail call (`jmp`): the callee returns to this function's caller.
    pub tail: bool,
    /// Entry address of the function called, when the debug info names it.
    pub target: Option<u64>,
}

type Unit<'a> = gimli::UnitRef<'a, EndianArcSlice<LittleEndian>>;
type Entry = gimli::DebuggingInformationEntry<EndianArcSlice<LittleEndian>>;

impl Image {
    /// The entry address of the function (DWARF subprogram) holding `addr`
    /// and the call sites inside it (inlined code included).
    pub fn call_sites(&self, addr: u64) -> Option<(u64, Vec<CallSite>)> {
        let ctx = self.dwarf.as_ref()?.context(addr)?;
        let unit = ctx.find_dwarf_and_unit(addr).skip_all_loads()?;
        let mut cursor = unit.entries();
        let mut inside: Option<(isize, u64)> = None;
        let mut sites = Vec::new();
        let mut visited = 0usize;
        while let Ok(Some(entry)) = cursor.next_dfs() {
            visited += 1;
            if visited > 5_000_000 {
                break;
            }
            let depth = entry.depth();
            if let Some((d, _)) = inside
                && depth <= d
            {
                break;
            }
            let tag = entry.tag();
            if inside.is_none() {
                if tag == gimli::DW_TAG_subprogram
                    && let Some(entry_pc) = subprogram_holding(&unit, entry, addr)
                {
                    inside = Some((depth, entry_pc));
                }
                continue;
            }
            if tag == gimli::DW_TAG_call_site || tag == gimli::DW_TAG_GNU_call_site {
                let pc_attr = entry
                    .attr_value(gimli::DW_AT_call_return_pc)
                    .or_else(|| entry.attr_value(gimli::DW_AT_low_pc));
                let Some(return_pc) = pc_attr.and_then(|v| unit.attr_address(v).ok().flatten())
                else {
                    continue;
                };
                let tail = entry.attr(gimli::DW_AT_call_tail_call).is_some()
                    || entry.attr(gimli::DW_AT_GNU_tail_call).is_some();
                let origin = entry
                    .attr_value(gimli::DW_AT_call_origin)
                    .or_else(|| entry.attr_value(gimli::DW_AT_abstract_origin));
                let target = match origin {
                    Some(gimli::AttributeValue::UnitRef(off)) => self.function_address(&unit, off),
                    _ => None,
                };
                sites.push(CallSite {
                    return_pc,
                    tail,
                    target,
                });
            }
        }
        inside.map(|(_, entry_pc)| (entry_pc, sites))
    }

    /// The entry address of the function a DIE names: its `low_pc`, or the
    /// address of the only function symbol with its name.
    fn function_address(&self, unit: &Unit<'_>, off: gimli::UnitOffset<usize>) -> Option<u64> {
        let die = unit.entry(off).ok()?;
        if let Some(v) = die.attr_value(gimli::DW_AT_low_pc)
            && let Ok(Some(a)) = unit.attr_address(v)
        {
            return Some(a);
        }
        let name = die_name(unit, &die, 0)?;
        let mut found = self
            .symbols
            .iter()
            .filter(|s| self.name(s) == name)
            .map(|s| s.addr);
        let first = found.next()?;
        found.all(|a| a == first).then_some(first)
    }
}

/// Entry pc of a subprogram DIE whose ranges hold `addr`.
fn subprogram_holding(unit: &Unit<'_>, entry: &Entry, addr: u64) -> Option<u64> {
    let mut ranges = unit.die_ranges(entry).ok()?;
    let mut holds = false;
    let mut low = u64::MAX;
    while let Ok(Some(r)) = ranges.next() {
        low = low.min(r.begin);
        if r.begin <= addr && addr < r.end {
            holds = true;
        }
    }
    if !holds {
        return None;
    }
    if let Some(v) = entry.attr_value(gimli::DW_AT_entry_pc)
        && let Ok(Some(a)) = unit.attr_address(v)
    {
        return Some(a);
    }
    Some(low)
}

/// Depth-first search for chains of tail calls from `func` to `target`;
/// each chain is the return pcs of its tail call sites, outermost first.
fn tail_chains(
    image: &Image,
    func: u64,
    target: u64,
    funcs: &mut Vec<u64>,
    pcs: &mut Vec<u64>,
    out: &mut Vec<Vec<u64>>,
    budget: &mut usize,
) {
    if *budget == 0 || funcs.len() > 5 || out.len() > 4 {
        return;
    }
    *budget -= 1;
    let Some((_, sites)) = image.call_sites(func) else {
        return;
    };
    for site in sites.iter().filter(|s| s.tail) {
        let Some(next) = site.target else { continue };
        pcs.push(site.return_pc);
        if next == target {
            out.push(pcs.clone());
        } else if !funcs.contains(&next) {
            funcs.push(next);
            tail_chains(image, next, target, funcs, pcs, out, budget);
            funcs.pop();
        }
        pcs.pop();
    }
}

/// Linkage name, else name, following `abstract_origin`/`specification`.
fn die_name(unit: &Unit<'_>, die: &Entry, depth: u32) -> Option<String> {
    for at in [
        gimli::DW_AT_linkage_name,
        gimli::DW_AT_MIPS_linkage_name,
        gimli::DW_AT_name,
    ] {
        if let Some(v) = die.attr_value(at)
            && let Ok(s) = unit.attr_string(v)
        {
            return Some(String::from_utf8_lossy(&gimli::Reader::to_slice(&s).ok()?).into_owned());
        }
    }
    if depth > 3 {
        return None;
    }
    for at in [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification] {
        if let Some(gimli::AttributeValue::UnitRef(off)) = die.attr_value(at)
            && let Ok(next) = unit.entry(off)
        {
            return die_name(unit, &next, depth + 1);
        }
    }
    None
}

/// Demangles Rust and C++ names; others are returned as they are.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z")
        && let Ok(sym) = cpp_demangle::Symbol::new(name)
        && let Ok(d) = sym.demangle()
    {
        return d;
    }
    // Go's linker marks functions of its stack-based ABI (assembly such as
    // runtime.futex) with a suffix that its DWARF, and so gdb, leaves out.
    if let Some(go) = name.strip_suffix(".abi0") {
        return go.to_string();
    }
    name.to_string()
}

fn vdso_module<S: ByteSource>(memory: &Memory<'_, S>, addr: u64) -> Option<Module> {
    let region = memory.region(addr)?;
    let bytes = memory.read_prefix(addr, (region.end - addr).min(1 << 20) as usize);
    if !bytes.starts_with(b"\x7fELF") {
        return None;
    }
    let page = ElfHeaderPage::parse(&bytes)?;
    let bias = page.bias(addr)?;
    let data = FileBytes::owned(bytes);
    let build_id = object::File::parse(&*data)
        .ok()
        .and_then(|o| o.build_id().ok().flatten().map(hex_bytes));
    let image = Image::new(data, None, false).ok();
    let has_cfi = image
        .as_ref()
        .is_some_and(|i| i.cfi.eh_frame.is_some() || i.cfi.debug_frame.is_some());
    Some(Module {
        info: ModuleInfo {
            path: "[vdso]".into(),
            start: region.start,
            end: region.end,
            bias: Some(bias),
            build_id_kind: build_id.is_some().then_some("gnu"),
            build_id,
            build_id_from: Some("core".into()),
            disk_build_id: None,
            recorded_ids: BuildIds::default(),
            status: if image.is_some() {
                FileStatus::FromCore
            } else {
                FileStatus::Unusable("the vDSO in the core is not a readable ELF image".into())
            },
            debug_file: None,
            has_cfi,
        },
        image,
    })
}

/// Names for code addresses, over a set of modules.
pub struct Symbolizer<'m> {
    modules: &'m [Module],
}

impl<'m> Symbolizer<'m> {
    pub fn new(modules: &'m [Module]) -> Symbolizer<'m> {
        Symbolizer { modules }
    }

    /// The module holding `addr`.
    pub fn module(&self, addr: u64) -> Option<&'m Module> {
        // The vDSO is last; prefer the narrowest range that holds it.
        self.modules
            .iter()
            .filter(|m| m.info.start <= addr && addr < m.info.end)
            .min_by_key(|m| m.info.end - m.info.start)
    }

    /// Return addresses of the tail-call frames between a callee frame (pc
    /// or return address `callee`) and its caller's return address
    /// `caller_ra`, innermost first, found as gdb does: the caller's call
    /// site at `caller_ra` names a function other than the callee's, and a
    /// unique chain of tail calls (`DW_AT_call_tail_call` call sites) leads
    /// from it to the callee. Empty when the debug info does not say.
    pub fn tail_calls(&self, callee: u64, callee_is_return: bool, caller_ra: u64) -> Vec<u64> {
        let lookup = if callee_is_return {
            callee.saturating_sub(1)
        } else {
            callee
        };
        let Some(m) = self.module(lookup) else {
            return Vec::new();
        };
        let (Some(image), Some(bias)) = (&m.image, m.info.bias) else {
            return Vec::new();
        };
        if image.dwarf.is_none()
            || self
                .module(caller_ra.saturating_sub(1))
                .map(|c| &c.info.path)
                != Some(&m.info.path)
        {
            return Vec::new();
        }
        let svma = |a: u64| a.wrapping_sub(bias);
        let Some((callee_entry, _)) = image.call_sites(svma(lookup)) else {
            return Vec::new();
        };

        let Some((_, sites)) = image.call_sites(svma(caller_ra.saturating_sub(1))) else {
            return Vec::new();
        };
        let Some(first) = sites
            .iter()
            .find(|s| s.return_pc == svma(caller_ra))
            .and_then(|s| s.target)
        else {
            return Vec::new();
        };
        if first == callee_entry {
            return Vec::new();
        }
        let mut paths: Vec<Vec<u64>> = Vec::new();
        let mut budget = 64usize;
        let mut path_funcs = vec![first];
        let mut path_pcs = Vec::new();
        tail_chains(
            image,
            first,
            callee_entry,
            &mut path_funcs,
            &mut path_pcs,
            &mut paths,
            &mut budget,
        );
        if paths.len() != 1 {
            return Vec::new();
        }
        paths[0]
            .iter()
            .rev()
            .map(|pc| pc.wrapping_add(bias))
            .collect()
    }

    /// Names for the code at `addr`. For a return address (`caller`), the
    /// call instruction before it is looked up, as debuggers do; offsets
    /// stay relative to `addr`.
    pub fn symbolize(&self, addr: u64, caller: bool) -> Symbolized {
        let lookup = if caller { addr.saturating_sub(1) } else { addr };
        let Some(m) = self.module(lookup) else {
            return Symbolized::default();
        };
        let mut out = Symbolized {
            module: Some(m.info.path.clone()),
            ..Symbolized::default()
        };
        let (Some(image), Some(bias)) = (&m.image, m.info.bias) else {
            return out;
        };
        let svma = lookup.wrapping_sub(bias);
        out.frames = image.dwarf_frames(svma);
        out.symbol = image
            .symbol(svma)
            .map(|(name, offset)| (name, offset.saturating_add(u64::from(caller))));
        out
    }
}
