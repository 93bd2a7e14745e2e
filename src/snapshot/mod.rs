//! The snapshot: an owned, arch-neutral description of a frozen process
//! (threads with registers, process identity, mappings with the decision
//! taken for each) from which the core's notes and layout are derived.

pub mod collect;
pub mod select;

use crate::arch::ThreadRegisters;
pub use crate::process::info::ProcessInfo;
use crate::process::maps::Mapping;
pub use select::{Decision, SelectionPolicy, SkipReason};
use std::time::Duration;

/// One thread, as captured under the freeze.
#[derive(Debug, Clone)]
pub struct ThreadInfo {
    pub tid: i32,
    /// The thread id inside the process's own pid namespace (the one its
    /// core's notes carry); `tid` unless the process is in a container.
    pub tid_inside: i32,
    pub registers: ThreadRegisters,
    pub signals_pending: u64,
    pub signals_blocked: u64,
    /// Signal being delivered when the snapshot was taken (0 for a live
    /// snapshot, which is not caused by a signal).
    pub current_signal: i32,
    /// Raw `siginfo_t` for NT_SIGINFO and prstatus `pr_info`, when a signal
    /// caused the snapshot.
    pub siginfo: Option<[u8; 128]>,
    pub user_time: Duration,
    pub system_time: Duration,
    pub children_user_time: Duration,
    pub children_system_time: Duration,
}

/// One mapping of the target and what the dump does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub mapping: Mapping,
    pub decision: Decision,
    /// For private anonymous memory: the sub-ranges that hold pages (in RAM
    /// or swap). Everything else in the mapping was never populated and
    /// reads as zeros, so it is neither read nor written. `None`: read the
    /// whole dumped range.
    pub populated: Option<Vec<(u64, u64)>>,
    /// Read after the target was released (`--mode cow`): shared memory
    /// the target cannot write, whose bytes are its file's.
    pub read_after_release: bool,
}

impl Region {
    /// Bytes of this mapping that the core holds.
    pub fn dumped_len(&self) -> u64 {
        self.decision.dumped_len(&self.mapping)
    }

    /// Whether the core has a PT_LOAD for this mapping. Memory whose bytes
    /// are not in the core and are not zeros (MADV_DONTDUMP, filtered out,
    /// unreadable kernel or device pages) gets none, so that a debugger says
    /// it cannot access it instead of showing zeros. File mappings stay
    /// listed when the file is still there (debuggers read them from it,
    /// which is what they hold unless written), and so does private memory that was never written,
    /// whose zeros are the truth.
    pub fn listed_in_core(&self) -> bool {
        match self.decision {
            Decision::Whole | Decision::ElfHeaderPage => true,
            Decision::Skipped {
                reason: SkipReason::NeverWritten,
            } => true,
            Decision::Skipped {
                reason: SkipReason::Filtered { .. },
            } => self.mapping.is_file() && !self.mapping.is_deleted_file(),
            Decision::Skipped { .. } => false,
        }
    }

    /// Private anonymous memory: the only kind where a page that was never
    /// populated is known to read as zeros.
    pub fn is_private_anonymous(&self) -> bool {
        !self.mapping.shared
            && !self.mapping.is_file()
            && self
                .mapping
                .pseudo_name()
                .is_none_or(|n| n != b"[vdso]" && n != b"[vsyscall]")
    }
}

/// Everything a core is written from, except the memory bytes themselves,
/// which are read from the (still frozen) target while writing.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub process: ProcessInfo,
    /// Main thread first, then the others by ascending tid (gdb's numbering
    /// when it attaches to a live process).
    pub threads: Vec<ThreadInfo>,
    pub auxv: Vec<u8>,
    /// Every mapping, in address order.
    pub regions: Vec<Region>,
    pub policy: SelectionPolicy,
}
