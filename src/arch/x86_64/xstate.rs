//! XSAVE areas (`NT_X86_XSTATE`) rewritten into the layout gdb expects.
//!
//! `PTRACE_GETREGSET(NT_X86_XSTATE)` hands back the kernel's user-ABI XSAVE
//! image in the CPU's *standard* (non-compacted) format, so where each state
//! component sits is whatever CPUID leaf 0xD says on the machine that ran the
//! process. gdb up to and including 13 ignores that: it derives the section
//! size from XCR0 alone and reads every component at Intel's offsets. AMD
//! parts place PKRU (and, on Zen 4 and 5, AVX-512) elsewhere and have no MPX
//! hole, so a kernel-format area from them is "too small" for gdb 13 and its
//! registers are dropped. gdb 14 and later guess the layout from
//! (XCR0, section size), and those guesses include the Intel sizes, so an
//! area in the Intel layout is read correctly by every gdb version.
//!
//! We therefore write what gcore writes: the Intel layout, trimmed to the
//! size gdb computes for the XCR0 stored in the area.
//!
//! Byte positions inside an XSAVE image that matter here:
//! * 0..512: legacy FXSAVE region; bytes 464..472 are the first word of the
//!   software-reserved area, where Linux stores XCR0 for ptrace and core
//!   dumps (`USER_XSTATE_XCR0_WORD` in the kernel's `asm/user.h`; gdb's
//!   `I386_LINUX_XSAVE_XCR0_OFFSET`).
//! * 512..576: XSAVE header; XSTATE_BV at 512, XCOMP_BV at 520.
//! * 576..: extended components at per-CPU offsets.

use std::fmt;

/// Note type of the XSAVE image in Linux core files.
pub const NT_X86_XSTATE: u32 = 0x202;
/// Note type describing where each XSAVE component of `NT_X86_XSTATE` lives
/// (written by kernels since 2024, e.g. 6.18; see [`xsave_layout_note`]).
pub const NT_X86_XSAVE_LAYOUT: u32 = 0x205;
/// Owner name the kernel uses for both notes above.
pub const LINUX_NOTE_NAME: &str = "LINUX";

/// Where Linux stores XCR0 inside the software-reserved bytes of the image.
pub const XCR0_OFFSET: usize = 464;
/// XSAVE header field saying which components hold non-init state.
pub const XSTATE_BV_OFFSET: usize = 512;
const XCOMP_BV_OFFSET: usize = 520;
/// Legacy region plus XSAVE header: the smallest image that can exist.
const HEADER_END: usize = 576;
const FIRST_EXTENDED: u32 = 2;
const MAX_COMPONENTS: usize = 64;
/// Bit 63 of XCOMP_BV flags the compacted format, whose offsets depend on the
/// saved feature set rather than on CPUID, so none of the tables here apply.
const XCOMP_BV_COMPACTED: u64 = 1 << 63;

const X87: u64 = 1 << 0;
const SSE: u64 = 1 << 1;
const AVX: u64 = 1 << 2;
const BNDREGS: u64 = 1 << 3;
const BNDCSR: u64 = 1 << 4;
const OPMASK: u64 = 1 << 5;
const ZMM_HI256: u64 = 1 << 6;
const HI16_ZMM: u64 = 1 << 7;
const PKRU: u64 = 1 << 9;

/// XCR0 bits gdb 13 models (`X86_XSTATE_ALL_MASK`): x87, SSE, AVX, both MPX
/// components, the three AVX-512 components and PKRU.
pub const GDB_KNOWN_FEATURES: u64 =
    X87 | SSE | AVX | BNDREGS | BNDCSR | OPMASK | ZMM_HI256 | HI16_ZMM | PKRU;

/// Where each XSAVE state component lives in an XSAVE image:
/// component index (0..63) -> (offset, size) in bytes.
///
/// Components 0 (x87) and 1 (SSE) are always reported at their fixed places
/// inside the legacy region, as the kernel describes them: (0, 160) and
/// (160, 256).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct XsaveLayout {
    /// (offset, size); a size of 0 marks a component the layout lacks, which
    /// is unambiguous because every real component has a non-zero size.
    slots: [(u32, u32); MAX_COMPONENTS],
}

impl Default for XsaveLayout {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for XsaveLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.components().map(|(i, off, size)| (i, (off, size))))
            .finish()
    }
}

impl XsaveLayout {
    /// A layout holding only the legacy x87 and SSE components.
    pub const fn new() -> XsaveLayout {
        let mut slots = [(0, 0); MAX_COMPONENTS];
        slots[0] = (0, 160);
        slots[1] = (160, 256);
        XsaveLayout { slots }
    }

    /// Returns the layout with extended component `index` placed at
    /// `offset` with `size` bytes, replacing any previous placement.
    ///
    /// # Panics
    /// If `index` is not an extended component (2..=63) or `size` is 0:
    /// both would describe something no CPU can produce.
    pub fn with_component(mut self, index: u32, offset: u32, size: u32) -> XsaveLayout {
        assert!(
            (FIRST_EXTENDED..MAX_COMPONENTS as u32).contains(&index),
            "XSAVE component {index} is not an extended component"
        );
        assert!(size != 0, "XSAVE component {index} cannot be empty");
        self.slots[index as usize] = (offset, size);
        self
    }

    /// The running CPU's standard-format layout, from CPUID leaf 0xD
    /// (sub-leaf i: EAX = size, EBX = offset, ECX bit 0 = supervisor state).
    ///
    /// Lists every user component the CPU supports, whether or not the OS
    /// enabled it in XCR0; callers select with the XCR0 from the image.
    #[cfg(target_arch = "x86_64")]
    pub fn from_cpuid() -> XsaveLayout {
        let mut layout = XsaveLayout::new();
        if cpuid(0, 0).eax < 0xd {
            return layout;
        }
        let top = cpuid(0xd, 0);
        // Sub-leaf 0 EDX:EAX are the components XCR0 may enable, i.e. the
        // user components; supervisor ones (sub-leaf 1 ECX:EDX) never appear
        // in a ptrace image.
        let user = (u64::from(top.edx) << 32) | u64::from(top.eax);
        for index in FIRST_EXTENDED..MAX_COMPONENTS as u32 {
            if user & (1 << index) == 0 {
                continue;
            }
            let leaf = cpuid(0xd, index);
            // EBX has no meaning for a supervisor component; trusting it
            // would place bytes at offset 0.
            if leaf.ecx & 1 != 0 || leaf.eax == 0 {
                continue;
            }
            layout.slots[index as usize] = (leaf.ebx, leaf.eax);
        }
        layout
    }

    /// gdb's fixed layout: Intel's standard-format offsets, the only ones
    /// gdb 13 knows (`i387-tdep.c` offset tables, `x86-xstate.h` sizes).
    pub fn gdb_standard() -> XsaveLayout {
        XsaveLayout::new()
            .with_component(2, 576, 256) // AVX: upper halves of ymm0-15
            .with_component(3, 960, 64) // MPX bnd0-3
            .with_component(4, 1024, 64) // MPX bndcfgu/bndstatus
            .with_component(5, 1088, 64) // AVX-512 k0-7
            .with_component(6, 1152, 512) // AVX-512 upper halves of zmm0-15
            .with_component(7, 1664, 1024) // AVX-512 zmm16-31
            .with_component(9, 2688, 8) // PKRU
    }

    /// Offset and size of component `index`, if this layout places it.
    pub fn component(&self, index: u32) -> Option<(u32, u32)> {
        let &(offset, size) = self.slots.get(index as usize)?;
        (size != 0).then_some((offset, size))
    }

    /// Every placed component as (index, offset, size), by ascending index.
    pub fn components(&self) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        (0..MAX_COMPONENTS as u32)
            .filter_map(|i| self.component(i).map(|(off, size)| (i, off, size)))
    }

    /// Parses an `NT_X86_XSAVE_LAYOUT` descriptor (as the kernel or
    /// [`xsave_layout_note`] writes it) back into a layout.
    ///
    /// Returns `None` for a descriptor that is not a whole number of records
    /// or that names a component outside 2..=63 or with size 0, since such a
    /// note cannot have come from a well-behaved writer.
    pub fn from_layout_note(desc: &[u8]) -> Option<XsaveLayout> {
        if !desc.len().is_multiple_of(NOTE_RECORD_LEN) {
            return None;
        }
        let mut layout = XsaveLayout::new();
        for record in desc.chunks_exact(NOTE_RECORD_LEN) {
            let word = |n: usize| {
                u32::from_le_bytes(record[n * 4..n * 4 + 4].try_into().expect("4-byte slice"))
            };
            let (index, size, offset) = (word(0), word(1), word(2));
            if !(FIRST_EXTENDED..MAX_COMPONENTS as u32).contains(&index) || size == 0 {
                return None;
            }
            layout.slots[index as usize] = (offset, size);
        }
        Some(layout)
    }
}

/// CPUID, callable both on toolchains that still declare the intrinsic
/// `unsafe` and on newer ones (1.95 here) where it is a safe function.
#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn cpuid(leaf: u32, sub_leaf: u32) -> core::arch::x86_64::CpuidResult {
    // SAFETY: every x86_64 CPU implements CPUID, and the instruction only
    // writes the four registers the intrinsic returns.
    unsafe { core::arch::x86_64::__cpuid_count(leaf, sub_leaf) }
}

/// Why an XSAVE image could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XstateError {
    /// The image ends before data it declares (through XCR0) it contains.
    TooShort {
        /// Length of the image given.
        len: usize,
        /// Length needed to read everything declared.
        needed: usize,
        /// The component that did not fit; `None` for the legacy region and
        /// header.
        component: Option<u32>,
    },
    /// XCR0 enables a component gdb reads, but the native layout does not
    /// say where it is.
    UnplacedComponent {
        /// Component index.
        index: u32,
    },
    /// The native layout gives a component a size different from the one gdb
    /// assumes; component sizes are architectural, so the layout is wrong.
    SizeMismatch {
        /// Component index.
        index: u32,
        /// Size in the native layout.
        native: u32,
        /// Size gdb assumes.
        gdb: u32,
    },
    /// The image is in compacted format (XCOMP_BV bit 63), which ptrace and
    /// core files never use and whose offsets no table here describes.
    Compacted,
}

impl fmt::Display for XstateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            XstateError::TooShort {
                len,
                needed,
                component: Some(c),
            } => write!(
                f,
                "XSAVE area of {len} bytes is too short for component {c} (needs {needed})"
            ),
            XstateError::TooShort {
                len,
                needed,
                component: None,
            } => write!(
                f,
                "XSAVE area of {len} bytes is too short for its header (needs {needed})"
            ),
            XstateError::UnplacedComponent { index } => write!(
                f,
                "XCR0 enables XSAVE component {index}, but the native layout has no offset for it"
            ),
            XstateError::SizeMismatch { index, native, gdb } => write!(
                f,
                "XSAVE component {index} is {native} bytes in the native layout, gdb expects {gdb}"
            ),
            XstateError::Compacted => write!(f, "XSAVE area is in compacted format"),
        }
    }
}

impl std::error::Error for XstateError {}

/// Size gdb 13 requires of `.reg-xstate` for `xcr0` (its `X86_XSTATE_SIZE`):
/// the end of the highest-placed component family gdb knows that has any
/// bit set, in Intel's layout. Unknown bits do not count.
pub fn gdb_xstate_size(xcr0: u64) -> usize {
    if xcr0 & PKRU != 0 {
        2696
    } else if xcr0 & (OPMASK | ZMM_HI256 | HI16_ZMM) != 0 {
        2688
    } else if xcr0 & (BNDREGS | BNDCSR) != 0 {
        1088
    } else if xcr0 & AVX != 0 {
        832
    } else {
        HEADER_END
    }
}

/// XCR0 as Linux records it in an XSAVE image, or `None` if the image is too
/// short to hold it.
pub fn xcr0_of(area: &[u8]) -> Option<u64> {
    read_u64(area, XCR0_OFFSET)
}

fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().expect("8-byte slice")))
}

fn write_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Rewrites a native XSAVE image (as returned by ptrace, laid out as
/// `native` describes) into the layout gdb 13 and later expect for the XCR0
/// stored in it.
///
/// The legacy region and XSAVE header are copied; every component enabled
/// in XCR0 that gdb knows moves from its native offset to its
/// [`XsaveLayout::gdb_standard`] offset; everything else is zero. The result
/// is exactly [`gdb_xstate_size`] bytes long.
///
/// Components gdb 13 does not model (AMX tiles, APX, ...) are dropped, and
/// their bits cleared from both XCR0 and XSTATE_BV in the copy. Upstream
/// gdb 13 would cope with the bits left in (it masks XCR0 before choosing
/// registers and sizes), but gdb builds that *do* model them size the
/// section from the same XCR0: Intel's gdb fork, with AMX, would demand
/// 11008 bytes and reject our 2688-byte area as too small, losing every
/// vector register. Clearing the bits keeps XCR0 truthful about what the area
/// holds, matches the NT_X86_XSAVE_LAYOUT note, and is what gcore itself
/// writes (on an AMX machine gdb 13's gcore stores XCR0 = XSTATE_BV = 0xe7
/// where the kernel reports 0x600e7).
pub fn to_gdb_layout(native_area: &[u8], native: &XsaveLayout) -> Result<Vec<u8>, XstateError> {
    let len = native_area.len();
    if len < HEADER_END {
        return Err(XstateError::TooShort {
            len,
            needed: HEADER_END,
            component: None,
        });
    }
    let xcr0 = xcr0_of(native_area).expect("length checked above");
    let xstate_bv = read_u64(native_area, XSTATE_BV_OFFSET).expect("length checked above");
    let xcomp_bv = read_u64(native_area, XCOMP_BV_OFFSET).expect("length checked above");
    if xcomp_bv & XCOMP_BV_COMPACTED != 0 {
        return Err(XstateError::Compacted);
    }

    let kept = xcr0 & GDB_KNOWN_FEATURES;
    let gdb = XsaveLayout::gdb_standard();
    let mut out = vec![0u8; gdb_xstate_size(kept)];
    out[..HEADER_END].copy_from_slice(&native_area[..HEADER_END]);
    write_u64(&mut out, XCR0_OFFSET, kept);
    write_u64(&mut out, XSTATE_BV_OFFSET, xstate_bv & kept);

    for index in FIRST_EXTENDED..MAX_COMPONENTS as u32 {
        if kept & (1 << index) == 0 {
            continue;
        }
        let (src, size) = native
            .component(index)
            .ok_or(XstateError::UnplacedComponent { index })?;
        let (dst, gdb_size) = gdb
            .component(index)
            .expect("GDB_KNOWN_FEATURES only names components gdb_standard places");
        if size != gdb_size {
            return Err(XstateError::SizeMismatch {
                index,
                native: size,
                gdb: gdb_size,
            });
        }
        let (src, dst, size) = (src as usize, dst as usize, size as usize);
        let data = native_area
            .get(src..src + size)
            .ok_or(XstateError::TooShort {
                len,
                needed: src + size,
                component: Some(index),
            })?;
        // In bounds for every XCR0: gdb_xstate_size reaches the end of the
        // furthest family with any bit set (checked exhaustively in tests).
        out[dst..dst + size].copy_from_slice(data);
    }
    Ok(out)
}

/// One `struct x86_xfeat_component`: four little-endian u32s (type, size,
/// offset, flags), packed.
const NOTE_RECORD_LEN: usize = 16;

/// Descriptor of an `NT_X86_XSAVE_LAYOUT` note (owner [`LINUX_NOTE_NAME`])
/// describing where `layout` puts each component enabled in `xcr0`.
///
/// Encoded as Linux does (`arch/x86/kernel/fpu/xstate.c`,
/// `struct x86_xfeat_component` in `arch/x86/include/uapi/asm/elf.h`): one
/// 16-byte record per enabled *extended* component (index >= 2), ascending,
/// each `{type, size, offset, flags}` as little-endian u32 with `flags` 0,
/// which the kernel reserves. x87/SSE get no record because their place is
/// fixed. A component `layout` does not place is left out rather than
/// invented, so pass the XCR0 of the area actually written (for
/// [`to_gdb_layout`] output: `xcr0_of(&out)` with
/// [`XsaveLayout::gdb_standard`]). The result may be empty.
pub fn xsave_layout_note(layout: &XsaveLayout, xcr0: u64) -> Vec<u8> {
    let mut desc = Vec::new();
    for index in FIRST_EXTENDED..MAX_COMPONENTS as u32 {
        if xcr0 & (1 << index) == 0 {
            continue;
        }
        let Some((offset, size)) = layout.component(index) else {
            continue;
        };
        for word in [index, size, offset, 0] {
            desc.extend_from_slice(&word.to_le_bytes());
        }
    }
    desc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AMD Zen 1-3 (PKU, no AVX-512, no MPX): PKRU right after the space
    /// AMD reserves for AVX-512, giving a 2440-byte image.
    fn amd_zen3() -> XsaveLayout {
        XsaveLayout::new()
            .with_component(2, 576, 256)
            .with_component(9, 2432, 8)
    }

    /// AMD Zen 4: AVX-512 packed straight after AVX (no MPX hole).
    fn amd_zen4() -> XsaveLayout {
        amd_zen3()
            .with_component(5, 832, 64)
            .with_component(6, 896, 512)
            .with_component(7, 1408, 1024)
    }

    /// An Intel machine with AVX-512 and AMX (no PKU exposed), as its CPUID
    /// leaf 0xD reported it.
    fn intel_amx() -> XsaveLayout {
        XsaveLayout::new()
            .with_component(2, 576, 256)
            .with_component(5, 1088, 64)
            .with_component(6, 1152, 512)
            .with_component(7, 1664, 1024)
            .with_component(17, 2752, 64)
            .with_component(18, 2816, 8192)
    }

    /// An image of `len` bytes with a recognisable legacy region, the given
    /// XCR0/XSTATE_BV, and each enabled extended component filled with a
    /// byte derived from its index.
    fn image(layout: &XsaveLayout, xcr0: u64, xstate_bv: u64, len: usize) -> Vec<u8> {
        let mut area = vec![0u8; len];
        for (i, b) in area[..464].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        write_u64(&mut area, XCR0_OFFSET, xcr0);
        write_u64(&mut area, XSTATE_BV_OFFSET, xstate_bv);
        for (index, off, size) in layout.components().filter(|c| c.0 >= 2) {
            if xcr0 & (1 << index) != 0 {
                let (off, size) = (off as usize, size as usize);
                area[off..off + size].fill(0x40 + index as u8);
            }
        }
        area
    }

    #[test]
    fn amd_pkru_area_grows_to_gcore_size() {
        let xcr0 = X87 | SSE | AVX | PKRU; // 0x207
        let mut native = image(&amd_zen3(), xcr0, xcr0, 2440);
        // Distinct ymm upper halves and a non-default PKRU value.
        for (i, b) in native[576..832].iter_mut().enumerate() {
            *b = i as u8;
        }
        native[2432..2440].copy_from_slice(&0x5555_5554u64.to_le_bytes());

        let out = to_gdb_layout(&native, &amd_zen3()).unwrap();

        assert_eq!(out.len(), 2696);
        assert_eq!(out[..576], native[..576]);
        assert_eq!(out[576..832], native[576..832]);
        assert_eq!(read_u64(&out, 2688), Some(0x5555_5554));
        assert!(out[832..2688].iter().all(|&b| b == 0));
        assert_eq!(xcr0_of(&out), Some(0x207));
    }

    #[test]
    fn amd_zen4_avx512_moves_to_intel_offsets() {
        let xcr0 = X87 | SSE | AVX | OPMASK | ZMM_HI256 | HI16_ZMM | PKRU; // 0x2e7
        let native = image(&amd_zen4(), xcr0, xcr0, 2440);
        let out = to_gdb_layout(&native, &amd_zen4()).unwrap();
        assert_eq!(out.len(), 2696);
        let gdb = XsaveLayout::gdb_standard();
        for index in [2, 5, 6, 7, 9] {
            let (dst, size) = gdb.component(index).unwrap();
            let (dst, size) = (dst as usize, size as usize);
            assert!(
                out[dst..dst + size]
                    .iter()
                    .all(|&b| b == 0x40 + index as u8),
                "component {index}"
            );
        }
        // The MPX slot between AVX and AVX-512 stays empty.
        assert!(out[960..1088].iter().all(|&b| b == 0));
    }

    #[test]
    fn intel_avx512_layout_is_unchanged() {
        for xcr0 in [0xe7u64, 0x2e7, 0x2ff, 0x1f, 0x7] {
            let len = gdb_xstate_size(xcr0);
            let gdb = XsaveLayout::gdb_standard();
            let native = image(&gdb, xcr0, xcr0 & !AVX, len);
            assert_eq!(
                to_gdb_layout(&native, &gdb).unwrap(),
                native,
                "xcr0 {xcr0:#x}"
            );
        }
    }

    #[test]
    fn intel_amx_area_is_trimmed_and_amx_bits_cleared() {
        let xcr0 = 0x600e7;
        let native = image(&intel_amx(), xcr0, 0x200a2, 11008);
        let out = to_gdb_layout(&native, &intel_amx()).unwrap();
        assert_eq!(out.len(), 2688);
        assert_eq!(xcr0_of(&out), Some(0xe7));
        assert_eq!(read_u64(&out, XSTATE_BV_OFFSET), Some(0xa2));
        // Apart from the two masked words, a prefix of the kernel image.
        let mut expected = native[..2688].to_vec();
        write_u64(&mut expected, XCR0_OFFSET, 0xe7);
        write_u64(&mut expected, XSTATE_BV_OFFSET, 0xa2);
        assert_eq!(out, expected);
    }

    /// gdb 13's `X86_XSTATE_SIZE` (gdbsupport/x86-xstate.h).
    #[test]
    fn size_table_matches_gdb13() {
        let table: &[(u64, usize)] = &[
            (0x0, 576),
            (0x1, 576),
            (0x3, 576),      // x87+SSE
            (0x7, 832),      // +AVX
            (0x1b, 1088),    // x87+SSE+MPX (Goldmont: MPX without AVX)
            (0xb, 1088),     // one MPX bit is enough
            (0x1f, 1088),    // AVX+MPX
            (0xe7, 2688),    // AVX-512 (AMD Zen 4/5; Intel with AMX masked)
            (0x27, 2688),    // any AVX-512 bit is enough
            (0xff, 2688),    // AVX+MPX+AVX-512 (Skylake-SP)
            (0x207, 2696),   // AMD Zen 1-3: AVX+PKRU
            (0x2e7, 2696),   // AMD Zen 4 / Intel without MPX
            (0x2ff, 2696),   // everything gdb 13 knows
            (0x600e7, 2688), // AMX bits do not count
            (0x602e7, 2696), // Sapphire Rapids with PKU
        ];
        for &(xcr0, size) in table {
            assert_eq!(gdb_xstate_size(xcr0), size, "xcr0 {xcr0:#x}");
        }
    }

    /// Every combination of known bits yields an output large enough for
    /// every component it keeps, so `to_gdb_layout` cannot index past it.
    #[test]
    fn output_size_covers_every_kept_component() {
        let gdb = XsaveLayout::gdb_standard();
        let bits: Vec<u32> = (0..64)
            .filter(|b| GDB_KNOWN_FEATURES & (1 << b) != 0)
            .collect();
        for combo in 0u32..(1 << bits.len()) {
            let xcr0 = bits
                .iter()
                .enumerate()
                .filter(|(i, _)| combo & (1 << i) != 0)
                .fold(0u64, |acc, (_, &b)| acc | (1 << b));
            let native = image(&gdb, xcr0, xcr0, 2696);
            let out = to_gdb_layout(&native, &gdb).unwrap();
            assert_eq!(out.len(), gdb_xstate_size(xcr0));
        }
    }

    #[test]
    fn short_buffers_error_instead_of_panicking() {
        let xcr0 = 0x207;
        let native = image(&amd_zen3(), xcr0, xcr0, 2440);
        for len in [0, 100, 470, 575] {
            assert_eq!(
                to_gdb_layout(&native[..len], &amd_zen3()),
                Err(XstateError::TooShort {
                    len,
                    needed: 576,
                    component: None
                })
            );
        }
        // Header present, PKRU cut off.
        assert_eq!(
            to_gdb_layout(&native[..2436], &amd_zen3()),
            Err(XstateError::TooShort {
                len: 2436,
                needed: 2440,
                component: Some(9)
            })
        );
        // AVX cut off.
        assert!(matches!(
            to_gdb_layout(&native[..700], &amd_zen3()),
            Err(XstateError::TooShort {
                component: Some(2),
                ..
            })
        ));
        // AMX is dropped anyway, so a buffer truncated inside it is fine.
        let amx = image(&intel_amx(), 0x600e7, 0xe7, 11008);
        assert_eq!(
            to_gdb_layout(&amx[..2688], &intel_amx()).unwrap().len(),
            2688
        );
        assert_eq!(xcr0_of(&native[..471]), None);
        assert_eq!(xcr0_of(&native[..472]), Some(xcr0));
    }

    #[test]
    fn inconsistent_inputs_are_rejected() {
        let xcr0 = 0x207;
        let native = image(&amd_zen3(), xcr0, xcr0, 2440);
        assert_eq!(
            to_gdb_layout(&native, &XsaveLayout::new().with_component(2, 576, 256)),
            Err(XstateError::UnplacedComponent { index: 9 })
        );
        let wrong = amd_zen3().with_component(9, 2432, 4);
        assert_eq!(
            to_gdb_layout(&native, &wrong),
            Err(XstateError::SizeMismatch {
                index: 9,
                native: 4,
                gdb: 8
            })
        );
        let mut compacted = native.clone();
        write_u64(&mut compacted, XCOMP_BV_OFFSET, XCOMP_BV_COMPACTED | xcr0);
        assert_eq!(
            to_gdb_layout(&compacted, &amd_zen3()),
            Err(XstateError::Compacted)
        );
    }

    #[test]
    fn gdb_standard_offsets() {
        let gdb = XsaveLayout::gdb_standard();
        let expected = [
            (0, 0, 160),
            (1, 160, 256),
            (2, 576, 256),
            (3, 960, 64),
            (4, 1024, 64),
            (5, 1088, 64),
            (6, 1152, 512),
            (7, 1664, 1024),
            (9, 2688, 8),
        ];
        assert_eq!(gdb.components().collect::<Vec<_>>(), expected);
        assert_eq!(gdb.component(8), None);
        assert_eq!(gdb.component(64), None);
        assert_eq!(gdb.component(u32::MAX), None);
    }

    /// Records as Linux 6.18 wrote them in a core dump on that Intel AMX
    /// machine (XCR0 0x600e7): extended components only, ascending, flags 0.
    #[test]
    fn layout_note_matches_kernel_encoding() {
        let desc = xsave_layout_note(&intel_amx(), 0x600e7);
        let kernel: [[u32; 4]; 6] = [
            [2, 256, 576, 0],
            [5, 64, 1088, 0],
            [6, 512, 1152, 0],
            [7, 1024, 1664, 0],
            [17, 64, 2752, 0],
            [18, 8192, 2816, 0],
        ];
        let expected: Vec<u8> = kernel
            .iter()
            .flatten()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(desc, expected);
        assert_eq!(XsaveLayout::from_layout_note(&desc), Some(intel_amx()));
    }

    #[test]
    fn layout_note_for_converted_area() {
        let native = image(&amd_zen3(), 0x207, 0x207, 2440);
        let out = to_gdb_layout(&native, &amd_zen3()).unwrap();
        let desc = xsave_layout_note(&XsaveLayout::gdb_standard(), xcr0_of(&out).unwrap());
        let mut expected = Vec::new();
        for w in [2u32, 256, 576, 0, 9, 8, 2688, 0] {
            expected.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(desc, expected);
        // Nothing extended enabled: an empty descriptor, as the kernel emits.
        assert!(xsave_layout_note(&XsaveLayout::gdb_standard(), 0x3).is_empty());
        // Components the layout cannot place are not invented.
        assert_eq!(
            xsave_layout_note(&XsaveLayout::gdb_standard(), 0x60003),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn malformed_layout_notes_are_rejected() {
        assert_eq!(XsaveLayout::from_layout_note(&[]), Some(XsaveLayout::new()));
        assert_eq!(XsaveLayout::from_layout_note(&[0; 15]), None);
        let record = |w: [u32; 4]| -> Vec<u8> { w.iter().flat_map(|x| x.to_le_bytes()).collect() };
        assert_eq!(
            XsaveLayout::from_layout_note(&record([1, 256, 160, 0])),
            None
        );
        assert_eq!(
            XsaveLayout::from_layout_note(&record([64, 8, 3000, 0])),
            None
        );
        assert_eq!(
            XsaveLayout::from_layout_note(&record([9, 0, 2688, 0])),
            None
        );
    }

    #[cfg(target_arch = "x86_64")]
    fn cpu_flags() -> Option<(String, Vec<String>)> {
        let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let field = |name: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let flags = field("flags")?
            .split_whitespace()
            .map(str::to_string)
            .collect();
        Some((field("vendor_id")?, flags))
    }

    /// CPUID agrees with what the kernel says the CPU has (`/proc/cpuinfo`
    /// lists only features the kernel enabled, so each flag implies its
    /// component exists; absent flags may still be hardware-supported).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn from_cpuid_matches_cpuinfo() {
        // /proc/cpuinfo is the kernel's account of the CPU: a Linux test
        // machine without it is broken, not lacking a feature.
        let (vendor, flags) = cpu_flags().expect("/proc/cpuinfo has vendor_id and flags");
        let has = |f: &str| flags.iter().any(|x| x == f);
        let layout = XsaveLayout::from_cpuid();
        if !has("xsave") {
            crate::test_skip::not_applicable(
                "this CPU has no XSAVE: there is no CPUID layout to compare with /proc/cpuinfo",
            );
            return;
        }
        let top = cpuid(0xd, 0);
        // Sub-leaf 0 ECX is the image size for every supported component,
        // i.e. the end of the furthest one.
        let end = layout
            .components()
            .map(|(_, off, size)| off + size)
            .max()
            .unwrap()
            .max(576);
        assert_eq!(end, top.ecx, "{layout:?}");
        let extended: Vec<_> = layout.components().filter(|c| c.0 >= 2).collect();
        for pair in extended.windows(2) {
            assert!(pair[0].1 + pair[0].2 <= pair[1].1, "overlap in {layout:?}");
        }
        assert!(extended.iter().all(|&(_, off, _)| off >= 576));

        if has("avx") {
            assert_eq!(layout.component(2), Some((576, 256)));
        }
        if has("avx512f") {
            assert_eq!(layout.component(5).map(|c| c.1), Some(64));
            assert_eq!(layout.component(6).map(|c| c.1), Some(512));
            assert_eq!(layout.component(7).map(|c| c.1), Some(1024));
            if vendor == "GenuineIntel" {
                for i in [5, 6, 7] {
                    assert_eq!(
                        layout.component(i),
                        XsaveLayout::gdb_standard().component(i)
                    );
                }
            }
        }
        if has("pku") {
            assert_eq!(layout.component(9).map(|c| c.1), Some(8));
        }
        if has("amx_tile") {
            assert_eq!(layout.component(17).map(|c| c.1), Some(64));
            assert_eq!(layout.component(18).map(|c| c.1), Some(8192));
        }
    }

    // The AMD Zen 5 fixture (testdata/fixtures/xsave-amd-zen5/): the
    // NT_X86_XSTATE and NT_X86_XSAVE_LAYOUT notes Linux 6.18 wrote in its own
    // core of a process that had loaded known values into every AVX-512
    // register, and CPUID leaf 0xD of that CPU.
    const ZEN5_XSTATE: &[u8] =
        include_bytes!("../../../testdata/fixtures/xsave-amd-zen5/nt_x86_xstate.bin");
    const ZEN5_LAYOUT_NOTE: &[u8] =
        include_bytes!("../../../testdata/fixtures/xsave-amd-zen5/nt_x86_xsave_layout.bin");
    const ZEN5_CPUID: &str = include_str!("../../../testdata/fixtures/xsave-amd-zen5/cpuid.txt");

    /// Lane `lane` (0..8) of zmm`reg` as `known_regs.c` loads it.
    fn known_zmm_lane(reg: usize, lane: usize) -> u64 {
        0x5a00_0000_0000_0000 | ((reg as u64) << 8) | lane as u64
    }

    /// k`n` as `known_regs.c` loads it.
    fn known_k(n: usize) -> u64 {
        0x4b00_0000_0000_0000 | (0x11 * (n as u64 + 1))
    }

    /// r12 in `known_regs.c`: a general register, so it must not turn up
    /// anywhere in an XSAVE area.
    const KNOWN_R12: u64 = 0x1234_5678_90ab_cdef;

    /// Offsets of the components holding AVX and AVX-512 state.
    #[derive(Debug)]
    struct VectorPlaces {
        avx: usize,
        opmask: usize,
        zmm_hi256: usize,
        hi16_zmm: usize,
    }

    /// Intel's fixed offsets (SDM vol. 1, 13.4; gdb 13's `i387-tdep.c`),
    /// written out here rather than taken from `gdb_standard`.
    const INTEL_PLACES: VectorPlaces = VectorPlaces {
        avx: 576,
        opmask: 1088,
        zmm_hi256: 1152,
        hi16_zmm: 1664,
    };

    /// The Zen 5 CPU of the fixture, from its README's table.
    const ZEN5_PLACES: VectorPlaces = VectorPlaces {
        avx: 576,
        opmask: 832,
        zmm_hi256: 896,
        hi16_zmm: 1408,
    };

    impl VectorPlaces {
        /// Byte offset of 64-bit lane `lane` of zmm`reg`: lanes 0-1 of
        /// zmm0-15 are xmm in the legacy region, lanes 2-3 the AVX upper
        /// half, lanes 4-7 ZMM_Hi256; zmm16-31 sit whole in Hi16_ZMM.
        fn zmm_lane(&self, reg: usize, lane: usize) -> usize {
            match (reg, lane) {
                (0..16, 0..2) => 160 + 16 * reg + 8 * lane,
                (0..16, 2..4) => self.avx + 16 * reg + 8 * (lane - 2),
                (0..16, 4..8) => self.zmm_hi256 + 32 * reg + 8 * (lane - 4),
                (16..32, 0..8) => self.hi16_zmm + 64 * (reg - 16) + 8 * lane,
                _ => panic!("zmm{reg} has no lane {lane}"),
            }
        }

        fn k(&self, n: usize) -> usize {
            self.opmask + 8 * n
        }

        /// Every known value and where it belongs: ("zmmR[J]" or "kN",
        /// offset, value).
        fn known_values(&self) -> Vec<(String, usize, u64)> {
            let mut v = Vec::new();
            for reg in 0..32 {
                for lane in 0..8 {
                    v.push((
                        format!("zmm{reg}[{lane}]"),
                        self.zmm_lane(reg, lane),
                        known_zmm_lane(reg, lane),
                    ));
                }
            }
            for n in 0..8 {
                v.push((format!("k{n}"), self.k(n), known_k(n)));
            }
            v
        }

        /// Names of the known values `area` does not hold at these offsets.
        fn missing_in(&self, area: &[u8]) -> Vec<String> {
            self.known_values()
                .into_iter()
                .filter(|(_, at, value)| read_u64(area, *at) != Some(*value))
                .map(|(name, at, _)| format!("{name}@{at}"))
                .collect()
        }
    }

    fn contains_u64(area: &[u8], value: u64) -> bool {
        area.windows(8).any(|w| w == value.to_le_bytes())
    }

    /// The user components listed in `cpuid.txt` ("component I: size=S
    /// offset=O ecx=C", supervisor ones have ecx bit 0 set).
    fn layout_from_cpuid_text(text: &str) -> XsaveLayout {
        let mut layout = XsaveLayout::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("component ") else {
                continue;
            };
            let (index, fields) = rest.split_once(':').unwrap();
            let field = |name: &str| {
                let value = fields
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"));
                match value.strip_prefix("0x") {
                    Some(hex) => u32::from_str_radix(hex, 16).unwrap(),
                    None => value.parse().unwrap(),
                }
            };
            if field("ecx=") & 1 == 0 {
                layout = layout.with_component(
                    index.trim().parse().unwrap(),
                    field("offset="),
                    field("size="),
                );
            }
        }
        layout
    }

    /// The layout note and CPUID, recorded separately on the same CPU,
    /// agree, and both differ from Intel's offsets.
    #[test]
    fn amd_zen5_layout_note_matches_cpuid() {
        let from_note = XsaveLayout::from_layout_note(ZEN5_LAYOUT_NOTE).unwrap();
        assert_eq!(from_note, layout_from_cpuid_text(ZEN5_CPUID));
        let expected = XsaveLayout::new()
            .with_component(2, ZEN5_PLACES.avx as u32, 256)
            .with_component(5, ZEN5_PLACES.opmask as u32, 64)
            .with_component(6, ZEN5_PLACES.zmm_hi256 as u32, 512)
            .with_component(7, ZEN5_PLACES.hi16_zmm as u32, 1024);
        assert_eq!(from_note, expected);
        // CPUID 0xd.0 EBX: the area size for the enabled features.
        assert_eq!(ZEN5_XSTATE.len(), 2432);
        assert_ne!(from_note, XsaveLayout::gdb_standard());
    }

    /// The raw kernel area holds the known values at the CPU's offsets, and
    /// read at Intel's (as gdb 13 reads it) it shows what gdb 13 showed:
    /// k3 = zmm6's lane 7. So the conversion below has real work to do.
    #[test]
    fn amd_zen5_kernel_area_holds_known_values_at_native_offsets() {
        assert_eq!(xcr0_of(ZEN5_XSTATE), Some(0xe7));
        assert_eq!(read_u64(ZEN5_XSTATE, XSTATE_BV_OFFSET), Some(0xe6));
        assert_eq!(ZEN5_PLACES.missing_in(ZEN5_XSTATE), Vec::<String>::new());
        assert_eq!(
            read_u64(ZEN5_XSTATE, INTEL_PLACES.k(3)),
            Some(0x5a00_0000_0000_0607)
        );
        // Everything outside xmm and the AVX halves is misplaced: k0-7,
        // lanes 4-7 of zmm0-15, all of zmm16-31.
        let wrong = INTEL_PLACES.missing_in(ZEN5_XSTATE);
        assert_eq!(wrong.len(), 8 + 16 * 4 + 16 * 8, "{wrong:?}");
        assert!(!contains_u64(ZEN5_XSTATE, KNOWN_R12));
    }

    /// Converted with the layout from its own NT_X86_XSAVE_LAYOUT note, the
    /// AMD area holds every known value where gdb 13 reads it.
    #[test]
    fn amd_zen5_kernel_area_converts_to_gdb_layout() {
        let layout = XsaveLayout::from_layout_note(ZEN5_LAYOUT_NOTE).unwrap();
        let out = to_gdb_layout(ZEN5_XSTATE, &layout).unwrap();

        // XCR0 0xe7 (no PKRU, no MPX): gdb 13 wants exactly 2688 bytes.
        assert_eq!(out.len(), 2688);
        assert_eq!(xcr0_of(&out), Some(0xe7));
        assert_eq!(read_u64(&out, XSTATE_BV_OFFSET), Some(0xe6));
        assert_eq!(out[..HEADER_END], ZEN5_XSTATE[..HEADER_END]);
        assert_eq!(INTEL_PLACES.missing_in(&out), Vec::<String>::new());
        // MPX was never enabled: its slot stays zero.
        assert!(out[960..1088].iter().all(|&b| b == 0));
        assert!(!contains_u64(&out, KNOWN_R12));
    }

    /// An area already in Intel's layout (as an Intel CPU with AVX-512
    /// produces), built from the same known values behind the fixture's
    /// real legacy region and header, passes through unchanged; with AMX
    /// state after it (Sapphire Rapids) every value stays where it was.
    #[test]
    fn intel_area_with_known_values_keeps_them_in_place() {
        let mut intel = vec![0u8; 2688];
        intel[..HEADER_END].copy_from_slice(&ZEN5_XSTATE[..HEADER_END]);
        for (_, at, value) in INTEL_PLACES.known_values() {
            write_u64(&mut intel, at, value);
        }
        let out = to_gdb_layout(&intel, &XsaveLayout::gdb_standard()).unwrap();
        assert_eq!(out, intel);
        assert_eq!(INTEL_PLACES.missing_in(&out), Vec::<String>::new());

        let mut amx = intel.clone();
        amx.resize(11008, 0);
        amx[2752..].fill(0x7e); // TILECFG and TILEDATA
        write_u64(&mut amx, XCR0_OFFSET, 0x600e7);
        write_u64(&mut amx, XSTATE_BV_OFFSET, 0x600e6);
        let out = to_gdb_layout(&amx, &intel_amx()).unwrap();
        assert_eq!(out.len(), 2688);
        assert_eq!(out, intel);
    }
}
