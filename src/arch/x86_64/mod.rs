//! x86-64: `user_regs_struct`, the FXSAVE area and the XSAVE area, captured
//! with `PTRACE_GETREGSET`, and the notes that carry them.

pub mod xstate;

use crate::elf::notes::{NAME_CORE, NAME_LINUX, NT_PRFPREG, Note};
use crate::sys::ptrace;
use nix::errno::Errno;
use std::sync::OnceLock;

pub const ELF_MACHINE: u16 = 62; // EM_X86_64
/// `sizeof(struct elf_prstatus)` on x86-64; gdb rejects any other size.
pub const PRSTATUS_LEN: usize = 336;
pub const NT_X86_XSTATE: u32 = 0x202;
/// Number of u64 in `user_regs_struct`.
pub const GENERAL_REGISTER_COUNT: usize = 27;
const FXSAVE_LEN: usize = 512;
/// Large enough for every XSAVE layout shipped so far (AMX needs ~11 KiB).
const XSAVE_BUFFER_LEN: usize = 16 * 1024;

/// Index of each register in `user_regs_struct`.
pub mod reg {
    pub const R15: usize = 0;
    pub const R12: usize = 3;
    pub const RBP: usize = 4;
    pub const RAX: usize = 10;
    pub const ORIG_RAX: usize = 15;
    pub const RIP: usize = 16;
    pub const RSP: usize = 19;
    pub const FS_BASE: usize = 21;
}

/// A thread's register state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadRegisters {
    /// `user_regs_struct`, in its order (r15 first, gs last).
    pub general: [u64; GENERAL_REGISTER_COUNT],
    /// FXSAVE area: x87, MXCSR, xmm0-15.
    pub fpregs: Vec<u8>,
    /// XSAVE area as the kernel returned it (the CPU's standard layout), if
    /// the CPU has XSAVE.
    pub xstate: Option<Vec<u8>>,
}

impl ThreadRegisters {
    pub fn program_counter(&self) -> u64 {
        self.general[reg::RIP]
    }

    pub fn stack_pointer(&self) -> u64 {
        self.general[reg::RSP]
    }
}

/// Reads every register set of a ptrace-stopped thread. Must be called on
/// the thread that seized it.
pub fn capture_registers(tid: i32) -> Result<ThreadRegisters, Errno> {
    let mut raw = [0u8; GENERAL_REGISTER_COUNT * 8];
    let len = ptrace::get_regset(tid, crate::elf::notes::NT_PRSTATUS, &mut raw)?;
    if len != raw.len() {
        return Err(Errno::EIO);
    }
    let mut general = [0u64; GENERAL_REGISTER_COUNT];
    for (value, bytes) in general.iter_mut().zip(raw.chunks_exact(8)) {
        *value = u64::from_le_bytes(bytes.try_into().expect("8-byte chunk"));
    }
    let mut fpregs = vec![0u8; FXSAVE_LEN];
    let len = ptrace::get_regset(tid, NT_PRFPREG, &mut fpregs)?;
    fpregs.truncate(len);
    let mut xsave = vec![0u8; XSAVE_BUFFER_LEN];
    let xstate = match ptrace::get_regset(tid, NT_X86_XSTATE, &mut xsave) {
        Ok(len) => {
            xsave.truncate(len);
            Some(xsave)
        }
        // No XSAVE on this CPU: the FXSAVE area is all there is.
        Err(Errno::ENODEV) | Err(Errno::EINVAL) => None,
        Err(e) => return Err(e),
    };
    Ok(ThreadRegisters {
        general,
        fpregs,
        xstate,
    })
}

/// `pr_reg` of NT_PRSTATUS: `user_regs_struct` as little-endian bytes.
pub fn prstatus_registers(regs: &ThreadRegisters) -> Vec<u8> {
    regs.general.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn native_layout() -> &'static xstate::XsaveLayout {
    static LAYOUT: OnceLock<xstate::XsaveLayout> = OnceLock::new();
    LAYOUT.get_or_init(xstate::XsaveLayout::from_cpuid)
}

/// The register-set notes that follow a thread's NT_PRSTATUS.
pub fn register_notes(regs: &ThreadRegisters) -> Vec<Note> {
    let mut notes = vec![Note::new(NAME_CORE, NT_PRFPREG, regs.fpregs.clone())];
    if let Some(area) = &regs.xstate {
        // gdb 13 reads XSAVE components at fixed (Intel) offsets and checks
        // the note's size against them, so the CPU's own layout is
        // rewritten into that one; if the area is malformed, keep it as is
        // rather than lose it.
        let converted =
            xstate::to_gdb_layout(area, native_layout()).unwrap_or_else(|_| area.clone());
        notes.push(Note::new(NAME_LINUX, NT_X86_XSTATE, converted));
    }
    notes
}

/// Process-wide arch notes, written once after every thread's notes, as the
/// kernel does: NT_X86_XSAVE_LAYOUT, describing where each component sits
/// in the NT_X86_XSTATE notes we wrote (newer gdb uses it to read any
/// layout; gdb 13 ignores it).
pub fn process_notes(first_thread: &ThreadRegisters) -> Vec<Note> {
    let Some(area) = &first_thread.xstate else {
        return Vec::new();
    };
    let Ok(converted) = xstate::to_gdb_layout(area, native_layout()) else {
        return Vec::new();
    };
    let Some(xcr0) = xstate::xcr0_of(&converted) else {
        return Vec::new();
    };
    let desc = xstate::xsave_layout_note(&xstate::XsaveLayout::gdb_standard(), xcr0);
    vec![Note::new(NAME_LINUX, xstate::NT_X86_XSAVE_LAYOUT, desc)]
}
