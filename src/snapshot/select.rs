//! Which mappings go into the core, and how much of each: the kernel's rules
//! (`vma_dump_size` in fs/coredump.c) driven by `coredump_filter`.

use crate::process::maps::Mapping;
use serde::{Deserialize, Serialize};

/// `coredump_filter` bits, named as in core(5).
pub mod filter_bits {
    pub const ANON_PRIVATE: u32 = 1 << 0;
    pub const ANON_SHARED: u32 = 1 << 1;
    pub const MAPPED_PRIVATE: u32 = 1 << 2;
    pub const MAPPED_SHARED: u32 = 1 << 3;
    pub const ELF_HEADERS: u32 = 1 << 4;
    pub const HUGETLB_PRIVATE: u32 = 1 << 5;
    pub const HUGETLB_SHARED: u32 = 1 << 6;
    pub const DAX_PRIVATE: u32 = 1 << 7;
    pub const DAX_SHARED: u32 = 1 << 8;
}
use filter_bits::*;

/// The kernel's default filter (0x33).
pub const DEFAULT_FILTER: u32 = ANON_PRIVATE | ANON_SHARED | ELF_HEADERS | HUGETLB_PRIVATE;

/// How the mapping selection is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectionPolicy {
    /// `coredump_filter` bits.
    pub filter: u32,
    /// Dump everything readable, ignoring the filter and MADV_DONTDUMP
    /// (gcore's `-a`).
    pub all: bool,
}

/// What happens to one mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Every byte of the mapping.
    Whole,
    /// Only the first page: the ELF header of a mapped file, which lets a
    /// debugger identify the file (build-id) and relocate it.
    ElfHeaderPage,
    /// Listed as a PT_LOAD with no file bytes.
    Skipped { reason: SkipReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// MADV_DONTDUMP (VmFlags `dd`).
    DontDump,
    /// VM_IO or VM_PFNMAP (VmFlags `io`, `pf`): device memory, unsafe to read.
    DeviceMemory,
    /// `[vvar]` and friends: kernel data pages that cannot be read.
    KernelData,
    /// No read permission and not worth forcing (e.g. execute-only vsyscall).
    NotReadable,
    /// The `coredump_filter` bit for this kind of mapping is clear.
    Filtered { bit: u32 },
    /// Private anonymous memory never written: it holds only zeros.
    NeverWritten,
    /// Registered by the target with userfaultfd for missing or minor
    /// faults (VmFlags `um`, `ui`): reading a page it has not filled waits
    /// for the target's fault handler, which cannot run while the target is
    /// frozen, so the read would never return.
    Userfaultfd,
}

impl Decision {
    /// File bytes this decision puts in the core for `mapping`.
    pub fn dumped_len(&self, mapping: &Mapping) -> u64 {
        match self {
            Decision::Whole => mapping.len(),
            Decision::ElfHeaderPage => mapping.len().min(4096),
            Decision::Skipped { .. } => 0,
        }
    }
}

/// Decides for one mapping. `starts_with_elf_magic` is asked only for
/// private file mappings at offset 0 whose filter needs it, since answering
/// means reading the target's memory.
pub fn decide(
    mapping: &Mapping,
    policy: SelectionPolicy,
    starts_with_elf_magic: impl FnOnce() -> bool,
) -> Decision {
    let skip = |reason| Decision::Skipped { reason };
    if let Some(name) = mapping.pseudo_name() {
        // The kernel always dumps its special mappings (vdso, vsyscall...),
        // except the vvar pages, which no reader can access.
        match name {
            b"[vvar]" | b"[vvar_vclock]" => return skip(SkipReason::KernelData),
            b"[vdso]" | b"[vsyscall]" | b"[uprobes]" | b"[sigpage]" => {
                return if mapping.readable {
                    Decision::Whole
                } else {
                    skip(SkipReason::NotReadable)
                };
            }
            _ => {}
        }
    }
    if mapping.has_vm_flag(b"io") || mapping.has_vm_flag(b"pf") {
        return skip(SkipReason::DeviceMemory);
    }
    // Not even with `-a`: the dump would hang. Write-protect registration
    // (`uw`) alone is read as usual: reads never wait for its handler.
    if mapping.has_vm_flag(b"um") || mapping.has_vm_flag(b"ui") {
        return skip(SkipReason::Userfaultfd);
    }
    if policy.all {
        return if mapping.readable || mapping.anonymous_kb > 0 {
            Decision::Whole
        } else {
            skip(SkipReason::NotReadable)
        };
    }
    let wants = |bit: u32| policy.filter & bit != 0;
    if mapping.has_vm_flag(b"dd") {
        return skip(SkipReason::DontDump);
    }
    if mapping.has_vm_flag(b"ht") {
        let bit = if mapping.shared {
            HUGETLB_SHARED
        } else {
            HUGETLB_PRIVATE
        };
        return if wants(bit) {
            Decision::Whole
        } else {
            skip(SkipReason::Filtered { bit })
        };
    }
    if mapping.shared {
        let bit = if mapping.is_deleted_file() || !mapping.is_file() {
            ANON_SHARED
        } else {
            MAPPED_SHARED
        };
        return if wants(bit) {
            Decision::Whole
        } else {
            skip(SkipReason::Filtered { bit })
        };
    }
    // The kernel asks whether the mapping has an anon_vma, i.e. was ever
    // written; resident or swapped anonymous pages are the visible sign.
    let written = mapping.anonymous_kb > 0 || mapping.swap_kb > 0;
    if written && wants(ANON_PRIVATE) {
        return Decision::Whole;
    }
    if !mapping.is_file() {
        return if written {
            skip(SkipReason::Filtered { bit: ANON_PRIVATE })
        } else {
            skip(SkipReason::NeverWritten)
        };
    }
    if wants(MAPPED_PRIVATE) {
        return Decision::Whole;
    }
    if wants(ELF_HEADERS) && mapping.offset == 0 && mapping.readable && starts_with_elf_magic() {
        return Decision::ElfHeaderPage;
    }
    skip(SkipReason::Filtered {
        bit: if written {
            ANON_PRIVATE
        } else {
            MAPPED_PRIVATE
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(perms: &str, name: &str, anon_kb: u64, flags: &[&str]) -> Mapping {
        let p = perms.as_bytes();
        Mapping {
            start: 0x1000,
            end: 0x5000,
            readable: p[0] == b'r',
            writable: p[1] == b'w',
            executable: p[2] == b'x',
            shared: p[3] == b's',
            name: name.as_bytes().to_vec(),
            anonymous_kb: anon_kb,
            vm_flags: flags
                .iter()
                .map(|f| [f.as_bytes()[0], f.as_bytes()[1]])
                .collect(),
            ..Mapping::default()
        }
    }

    const DEFAULT: SelectionPolicy = SelectionPolicy {
        filter: DEFAULT_FILTER,
        all: false,
    };
    const ALL: SelectionPolicy = SelectionPolicy {
        filter: 0,
        all: true,
    };

    fn never() -> bool {
        panic!("ELF magic must not be read for this mapping")
    }

    #[test]
    fn default_filter_follows_the_kernel() {
        assert_eq!(
            decide(&mapping("rw-p", "[heap]", 8, &[]), DEFAULT, never),
            Decision::Whole
        );
        assert_eq!(
            decide(&mapping("rw-p", "", 0, &[]), DEFAULT, never),
            Decision::Skipped {
                reason: SkipReason::NeverWritten
            }
        );
        assert_eq!(
            decide(&mapping("rw-p", "", 8, &["dd"]), DEFAULT, never),
            Decision::Skipped {
                reason: SkipReason::DontDump
            }
        );
        assert_eq!(
            decide(
                &mapping("rw-s", "/memfd:x (deleted)", 0, &[]),
                DEFAULT,
                never
            ),
            Decision::Whole
        );
        assert_eq!(
            decide(
                &mapping("rw-s", "/dev/zero (deleted)", 0, &[]),
                DEFAULT,
                never
            ),
            Decision::Whole
        );
        assert_eq!(
            decide(&mapping("rw-s", "/tmp/data", 0, &[]), DEFAULT, never),
            Decision::Skipped {
                reason: SkipReason::Filtered { bit: MAPPED_SHARED }
            }
        );
        assert_eq!(
            decide(
                &mapping("r-xp", "/usr/lib/libc.so.6", 0, &[]),
                DEFAULT,
                || true
            ),
            Decision::ElfHeaderPage
        );
        assert_eq!(
            decide(
                &mapping("r--p", "/usr/share/data.bin", 0, &[]),
                DEFAULT,
                || false
            ),
            Decision::Skipped {
                reason: SkipReason::Filtered {
                    bit: MAPPED_PRIVATE
                }
            }
        );
        assert_eq!(
            decide(
                &mapping("rw-p", "/usr/lib/libc.so.6", 4, &[]),
                DEFAULT,
                never
            ),
            Decision::Whole
        );
        assert_eq!(
            decide(&mapping("r-xp", "[vdso]", 0, &[]), DEFAULT, never),
            Decision::Whole
        );
        assert_eq!(
            decide(
                &mapping("r--p", "[vvar]", 0, &["io", "pf", "dd"]),
                ALL,
                never
            ),
            Decision::Skipped {
                reason: SkipReason::KernelData
            }
        );
        assert_eq!(
            decide(&mapping("--xp", "[vsyscall]", 0, &[]), DEFAULT, never),
            Decision::Skipped {
                reason: SkipReason::NotReadable
            }
        );
        assert_eq!(
            decide(&mapping("rw-s", "/dev/mem", 0, &["io", "pf"]), ALL, never),
            Decision::Skipped {
                reason: SkipReason::DeviceMemory
            }
        );
    }

    #[test]
    fn userfaultfd_ranges_are_skipped_even_with_all() {
        for flag in ["um", "ui"] {
            for policy in [DEFAULT, ALL] {
                assert_eq!(
                    decide(&mapping("rw-p", "", 8, &[flag]), policy, never),
                    Decision::Skipped {
                        reason: SkipReason::Userfaultfd
                    }
                );
            }
        }
        assert_eq!(
            decide(&mapping("rw-p", "", 8, &["uw"]), DEFAULT, never),
            Decision::Whole
        );
    }

    #[test]
    fn all_ignores_filter_and_dontdump() {
        assert_eq!(
            decide(&mapping("rw-p", "", 8, &["dd"]), ALL, never),
            Decision::Whole
        );
        assert_eq!(
            decide(&mapping("rw-s", "/tmp/data", 0, &[]), ALL, never),
            Decision::Whole
        );
        assert_eq!(
            decide(&mapping("r--p", "/usr/share/data.bin", 0, &[]), ALL, never),
            Decision::Whole
        );
        assert_eq!(
            decide(&mapping("---p", "", 0, &[]), ALL, never),
            Decision::Skipped {
                reason: SkipReason::NotReadable
            }
        );
    }

    #[test]
    fn filter_bits_change_the_outcome() {
        let everything = SelectionPolicy {
            filter: 0x1ff,
            all: false,
        };
        assert_eq!(
            decide(
                &mapping("r--p", "/usr/share/data.bin", 0, &[]),
                everything,
                never
            ),
            Decision::Whole
        );
        let nothing = SelectionPolicy {
            filter: 0,
            all: false,
        };
        assert_eq!(
            decide(&mapping("rw-p", "[heap]", 8, &[]), nothing, never),
            Decision::Skipped {
                reason: SkipReason::Filtered { bit: ANON_PRIVATE }
            }
        );
        assert_eq!(
            decide(
                &mapping("rw-s", "/memfd:x (deleted)", 0, &[]),
                nothing,
                never
            ),
            Decision::Skipped {
                reason: SkipReason::Filtered { bit: ANON_SHARED }
            }
        );
    }
}
