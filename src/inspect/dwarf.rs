//! DWARF for names, lines and call sites, read no further than the
//! addresses asked about need.
//!
//! A distribution's debug file compresses each section (libc's
//! `.debug_info` is 2.3 MB on disk, 5.8 MB inflated), and an
//! [`addr2line::Context`] over the whole of it inflates every section and
//! parses every unit before answering anything: most of a triage's time.
//! Here `.debug_aranges` says which compilation unit holds an address;
//! `.debug_info` is inflated only up to the end of that unit (a zlib stream
//! cannot be entered in the middle, but it can stop early) and a context is
//! built over that one unit. The other sections a lookup reads are inflated
//! whole on first use; location lists and macros, which say nothing about
//! names or lines, never are.
//!
//! The whole-file context (today's behaviour of addr2line) is still used
//! when the file has no `.debug_aranges` (clang and rustc do not write it
//! by default), and for a unit that refers into other units
//! (`DW_FORM_ref_addr`: LTO, dwz), whose references only hold against the
//! whole `.debug_info`. An address that `.debug_aranges` does not cover has
//! no debug info: GCC lists every unit with code there.

use super::modules::FileBytes;
use gimli::{EndianArcSlice, LittleEndian, SectionId};
use object::{CompressionFormat, Object, ObjectSection};
use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

pub type Reader = EndianArcSlice<LittleEndian>;
pub type Context = addr2line::Context<Reader>;

/// The sections a name or line lookup reads besides `.debug_info` and
/// `.debug_aranges`. Location lists, macros, type units and the name index
/// are left empty.
const LOOKUP_SECTIONS: [SectionId; 8] = [
    SectionId::DebugAbbrev,
    SectionId::DebugAddr,
    SectionId::DebugLine,
    SectionId::DebugLineStr,
    SectionId::DebugStr,
    SectionId::DebugStrOffsets,
    SectionId::DebugRanges,
    SectionId::DebugRngLists,
];

/// Where a section's bytes are in the file.
#[derive(Debug, Clone, Copy)]
struct Placement {
    format: CompressionFormat,
    offset: usize,
    stored_len: usize,
    len: usize,
}

/// `.debug_info` as far as it has been inflated.
enum Prefix {
    /// Stored uncompressed: every byte is there.
    Stored,
    /// A zlib stream (`SHF_COMPRESSED` or `.zdebug_`), inflated up to
    /// `out.len()`.
    Zlib {
        state: flate2::Decompress,
        out: Vec<u8>,
    },
    /// Another format, inflated whole at once.
    Whole(Arc<[u8]>),
}

/// The debug info of one ELF file.
pub struct DebugInfo {
    data: FileBytes,
    placements: HashMap<SectionId, Placement>,
    whole: RefCell<HashMap<SectionId, Reader>>,
    info: RefCell<Option<Prefix>>,
    /// (start, end, unit offset), sorted by start.
    aranges: OnceCell<Vec<(u64, u64, usize)>>,
    units: RefCell<HashMap<usize, Option<Rc<Context>>>>,
    full: OnceCell<Option<Rc<Context>>>,
}

impl DebugInfo {
    /// The debug info of the ELF file `data`, or `None` when it has no
    /// `.debug_info`. Reads only the section headers.
    pub fn new(data: FileBytes) -> Option<DebugInfo> {
        let obj = object::File::parse(&*data).ok()?;
        let mut placements = HashMap::new();
        let ids = LOOKUP_SECTIONS
            .iter()
            .chain(&[SectionId::DebugInfo, SectionId::DebugAranges]);
        for &id in ids {
            let Some(section) = obj.section_by_name(id.name()) else {
                continue;
            };
            let Ok(range) = section.compressed_file_range() else {
                continue;
            };
            let (Ok(offset), Ok(stored_len), Ok(len)) = (
                usize::try_from(range.offset),
                usize::try_from(range.compressed_size),
                usize::try_from(range.uncompressed_size),
            ) else {
                continue;
            };
            if offset
                .checked_add(stored_len)
                .is_none_or(|end| end > data.len())
            {
                continue;
            }
            placements.insert(
                id,
                Placement {
                    format: range.format,
                    offset,
                    stored_len,
                    len,
                },
            );
        }
        placements.get(&SectionId::DebugInfo)?;
        Some(DebugInfo {
            data,
            placements,
            whole: RefCell::default(),
            info: RefCell::default(),
            aranges: OnceCell::new(),
            units: RefCell::default(),
            full: OnceCell::new(),
        })
    }

    /// The context that can answer for `addr` (an address in the file),
    /// built on first use.
    pub fn context(&self, addr: u64) -> Option<Rc<Context>> {
        let aranges = self.aranges.get_or_init(|| self.read_aranges());
        if aranges.is_empty() {
            return self.full();
        }
        let i = aranges.partition_point(|r| r.0 <= addr);
        let unit = aranges[..i]
            .iter()
            .rev()
            .take(64)
            .find(|r| addr < r.1)
            .map(|r| r.2)?;
        if let Some(known) = self.units.borrow().get(&unit) {
            return known.clone().or_else(|| self.full());
        }
        let built = self.unit_context(unit).map(Rc::new);
        self.units.borrow_mut().insert(unit, built.clone());
        built.or_else(|| self.full())
    }

    fn full(&self) -> Option<Rc<Context>> {
        self.full
            .get_or_init(|| {
                let info = self.whole_info()?;
                let dwarf = self.dwarf_with(info);
                Context::from_dwarf(dwarf).ok().map(Rc::new)
            })
            .clone()
    }

    /// A context over the one unit at `offset` of `.debug_info`; `None`
    /// when it cannot be read or refers into other units.
    fn unit_context(&self, offset: usize) -> Option<Context> {
        let (header_len, length) = self.with_info(offset.checked_add(12)?, |head| {
            let word = u32::from_le_bytes(head.get(offset..offset + 4)?.try_into().ok()?);
            match word {
                0xffff_ffff => Some((
                    12,
                    usize::try_from(u64::from_le_bytes(
                        head.get(offset + 4..offset + 12)?.try_into().ok()?,
                    ))
                    .ok()?,
                )),
                // Reserved initial-length values.
                0xffff_fff0.. => None,
                n => Some((4, usize::try_from(n).ok()?)),
            }
        })?;
        let end = offset.checked_add(header_len)?.checked_add(length)?;
        let unit: Arc<[u8]> =
            self.with_info(end, |bytes| Some(Arc::from(bytes.get(offset..end)?)))?;
        let dwarf = self.dwarf_with(Reader::new(unit, LittleEndian));
        let header = dwarf.units().next().ok()??;
        if refers_outside_unit(
            self.whole(SectionId::DebugAbbrev),
            header.debug_abbrev_offset().0,
        ) {
            return None;
        }
        Context::from_dwarf(dwarf).ok()
    }

    /// A `Dwarf` with `info` as its `.debug_info` and the lookup sections.
    fn dwarf_with(&self, info: Reader) -> gimli::Dwarf<Reader> {
        let empty = || Reader::new(Arc::from(&[][..]), LittleEndian);
        let loaded: Result<gimli::Dwarf<Reader>, ()> = gimli::Dwarf::load(|id| {
            Ok(match id {
                SectionId::DebugInfo => info.clone(),
                id if LOOKUP_SECTIONS.contains(&id) => self.whole(id).unwrap_or_else(empty),
                _ => empty(),
            })
        });
        loaded.unwrap_or_else(|()| unreachable!("the loader never fails"))
    }

    /// A section inflated whole (kept for the next use).
    fn whole(&self, id: SectionId) -> Option<Reader> {
        if let Some(r) = self.whole.borrow().get(&id) {
            return Some(r.clone());
        }
        let p = *self.placements.get(&id)?;
        let stored = &self.data[p.offset..p.offset + p.stored_len];
        let bytes: Arc<[u8]> = match p.format {
            CompressionFormat::None => Arc::from(stored),
            _ => {
                let range = object::CompressedFileRange {
                    format: p.format,
                    offset: p.offset as u64,
                    compressed_size: p.stored_len as u64,
                    uncompressed_size: p.len as u64,
                };
                Arc::from(&*range.data(&*self.data).ok()?.decompress().ok()?)
            }
        };
        let reader = Reader::new(bytes, LittleEndian);
        self.whole.borrow_mut().insert(id, reader.clone());
        Some(reader)
    }

    fn whole_info(&self) -> Option<Reader> {
        let len = self.placements.get(&SectionId::DebugInfo)?.len;
        self.with_info(len, |bytes| {
            Some(Reader::new(Arc::from(bytes), LittleEndian))
        })
    }

    /// `.debug_info` from its start to at least `len` bytes (less when the
    /// section is shorter), inflating only what was not yet.
    fn with_info<T>(&self, len: usize, f: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
        let p = *self.placements.get(&SectionId::DebugInfo)?;
        let mut slot = self.info.borrow_mut();
        let prefix = slot.get_or_insert_with(|| match p.format {
            CompressionFormat::None => Prefix::Stored,
            CompressionFormat::Zlib => Prefix::Zlib {
                state: flate2::Decompress::new(true),
                out: Vec::new(),
            },
            _ => Prefix::Whole(self.whole(SectionId::DebugInfo).map_or_else(
                || Arc::from(&[][..]),
                |r| {
                    gimli::Reader::to_slice(&r)
                        .map_or_else(|_| Arc::from(&[][..]), |s| Arc::from(&*s))
                },
            )),
        });
        if let Prefix::Zlib { state, out } = prefix {
            let input = &self.data[p.offset..p.offset + p.stored_len];
            let want = len.min(p.len);
            while out.len() < want {
                // Inflate in steps of at least 256 KiB: each call resumes
                // where the last one stopped.
                let step = (want - out.len()).max(256 << 10).min(p.len - out.len());
                out.reserve_exact(step);
                let consumed = usize::try_from(state.total_in()).ok()?;
                let before = out.len();
                let status = state
                    .decompress_vec(input.get(consumed..)?, out, flate2::FlushDecompress::None)
                    .ok()?;
                if status == flate2::Status::StreamEnd || out.len() == before {
                    break;
                }
            }
        }
        f(match prefix {
            Prefix::Stored => &self.data[p.offset..p.offset + p.stored_len],
            Prefix::Zlib { out, .. } => out.as_slice(),
            Prefix::Whole(bytes) => bytes,
        })
    }

    fn read_aranges(&self) -> Vec<(u64, u64, usize)> {
        let Some(section) = self.whole(SectionId::DebugAranges) else {
            return Vec::new();
        };
        let aranges = gimli::DebugAranges::from(section);
        let mut out = Vec::new();
        let mut headers = aranges.headers();
        while let Ok(Some(header)) = headers.next() {
            let unit = header.debug_info_offset().0;
            let mut entries = header.entries();
            while let Ok(Some(entry)) = entries.next() {
                let range = entry.range();
                if range.begin < range.end {
                    out.push((range.begin, range.end, unit));
                }
            }
        }
        out.sort_unstable();
        out
    }
}

/// Whether the abbreviation table at `table` (of `.debug_abbrev`) allows
/// references into other units of `.debug_info` or into a supplementary
/// file; an unreadable table counts as yes. Read raw because gimli's parsed
/// table cannot be iterated: code, tag, children flag, then (attribute,
/// form[, implicit constant]) pairs up to (0, 0); a code of 0 ends it.
fn refers_outside_unit(abbrev: Option<Reader>, table: usize) -> bool {
    use gimli::Reader as _;
    let Some(mut r) = abbrev else { return true };
    if r.skip(table).is_err() {
        return true;
    }
    let scan = |r: &mut Reader| -> gimli::Result<bool> {
        loop {
            if r.read_uleb128()? == 0 {
                return Ok(false);
            }
            r.read_uleb128()?;
            r.read_u8()?;
            loop {
                let attribute = r.read_uleb128()?;
                let form = gimli::DwForm(r.read_uleb128_u16()?);
                if attribute == 0 && form.0 == 0 {
                    break;
                }
                match form {
                    gimli::DW_FORM_ref_addr
                    | gimli::DW_FORM_GNU_ref_alt
                    | gimli::DW_FORM_ref_sup4
                    | gimli::DW_FORM_ref_sup8
                    | gimli::DW_FORM_indirect => return Ok(true),
                    gimli::DW_FORM_implicit_const => {
                        r.read_sleb128()?;
                    }
                    _ => {}
                }
            }
        }
    };
    scan(&mut r).unwrap_or(true)
}
