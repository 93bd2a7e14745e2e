//! x86-64: `user_regs_struct`, the FXSAVE area and the XSAVE area, captured
//! with `PTRACE_GETREGSET`, and the notes that carry them.

pub mod xstate;

use crate::elf::notes::{NAME_CORE, NAME_LINUX, NT_PRFPREG, Note};
use crate::process::info::SyscallState;
use crate::sys::ptrace;
use nix::errno::Errno;
use std::sync::OnceLock;

pub const ELF_MACHINE: u16 = 62; // EM_X86_64
/// `sizeof(struct elf_prstatus)` on x86-64; gdb rejects any other size.
pub const PRSTATUS_LEN: usize = 336;
pub use xstate::NT_X86_XSTATE;
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
    pub const R10: usize = 7;
    pub const R9: usize = 8;
    pub const R8: usize = 9;
    pub const RAX: usize = 10;
    pub const RDX: usize = 12;
    pub const RSI: usize = 13;
    pub const RDI: usize = 14;
    pub const ORIG_RAX: usize = 15;
    pub const RIP: usize = 16;
    pub const CS: usize = 17;
    pub const RSP: usize = 19;
    pub const SS: usize = 20;
    pub const FS_BASE: usize = 21;
}

/// A thread's register state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadRegisters {
    /// `user_regs_struct`, in its order (r15 first, gs last).
    pub general: [u64; GENERAL_REGISTER_COUNT],
    /// FXSAVE area: x87, MXCSR, xmm0-15; `None` when unknown (registers
    /// read without ptrace).
    pub fpregs: Option<Vec<u8>>,
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

    /// The floating-point state is known (`pr_fpvalid`).
    pub fn fp_valid(&self) -> bool {
        self.fpregs.is_some()
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
        fpregs: Some(fpregs),
        xstate,
    })
}

/// The registers that `/proc/PID/task/TID/syscall` reveals without ptrace:
/// rsp and rip, and for a thread in a system call orig_rax and the argument
/// registers (rdi, rsi, rdx, r10, r8, r9), which the kernel reads from the
/// thread's saved user registers. Everything else is unknown and left 0;
/// the FXSAVE and XSAVE areas are absent, so debuggers show the vector and
/// x87 registers as unavailable rather than as zeros. cs and ss are the
/// fixed selectors of 64-bit user mode.
pub fn registers_from_syscall_state(state: &SyscallState) -> ThreadRegisters {
    let mut general = [0u64; GENERAL_REGISTER_COUNT];
    if let SyscallState::Blocked { syscall, sp, pc } = *state {
        general[reg::RSP] = sp;
        general[reg::RIP] = pc;
        general[reg::CS] = 0x33;
        general[reg::SS] = 0x2b;
        general[reg::ORIG_RAX] = u64::MAX;
        if let Some((nr, args)) = syscall {
            general[reg::ORIG_RAX] = nr;
            for (index, value) in [reg::RDI, reg::RSI, reg::RDX, reg::R10, reg::R8, reg::R9]
                .into_iter()
                .zip(args)
            {
                general[index] = value;
            }
        }
    }
    ThreadRegisters {
        general,
        fpregs: None,
        xstate: None,
    }
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
    let mut notes = Vec::new();
    if let Some(fpregs) = &regs.fpregs {
        notes.push(Note::new(NAME_CORE, NT_PRFPREG, fpregs.clone()));
    }
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

#[cfg(test)]
mod tests {
    use super::xstate::{GDB_KNOWN_FEATURES, XCR0_OFFSET, XSTATE_BV_OFFSET, XsaveLayout};
    use super::*;

    /// The XSAVE note of a captured thread is converted from the layout of
    /// the CPU running coresnap (CPUID leaf 0xD) into gdb's: an area laid
    /// out as this CPU lays it out comes out with every component where gdb
    /// reads it. On an AMD CPU with AVX-512 (Zen 4/5) components 5-7 move;
    /// on Intel they stay.
    #[test]
    fn register_notes_convert_from_the_running_cpus_layout() {
        let native = native_layout();
        assert_eq!(*native, XsaveLayout::from_cpuid());
        let gdb = XsaveLayout::gdb_standard();
        let enabled = native
            .components()
            .fold(0u64, |bits, (index, _, _)| bits | 1 << index)
            & GDB_KNOWN_FEATURES;
        let end = native
            .components()
            .map(|(_, offset, size)| (offset + size) as usize)
            .max()
            .unwrap_or(0)
            .max(576);
        let mut area = vec![0u8; end];
        area[XCR0_OFFSET..XCR0_OFFSET + 8].copy_from_slice(&enabled.to_le_bytes());
        area[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&enabled.to_le_bytes());
        let extended = || native.components().filter(|&(i, ..)| i >= 2);
        for (index, offset, size) in extended() {
            let (offset, size) = (offset as usize, size as usize);
            for (i, byte) in area[offset..offset + size].iter_mut().enumerate() {
                *byte = (index as usize * 37 + i % 251) as u8;
            }
        }
        let regs = ThreadRegisters {
            general: [0; GENERAL_REGISTER_COUNT],
            fpregs: Some(vec![0; FXSAVE_LEN]),
            xstate: Some(area.clone()),
        };
        let notes = register_notes(&regs);
        let written = &notes
            .iter()
            .find(|n| n.kind == NT_X86_XSTATE)
            .expect("an NT_X86_XSTATE note")
            .desc;

        let mut moved = Vec::new();
        for (index, offset, size) in extended().filter(|&(i, ..)| enabled & 1 << i != 0) {
            let (to, _) = gdb.component(index).unwrap();
            let (from, to, size) = (offset as usize, to as usize, size as usize);
            assert_eq!(
                written[to..to + size],
                area[from..from + size],
                "component {index}: native offset {from}, gdb offset {to}"
            );
            if from != to {
                moved.push(format!("{index}: {from} -> {to}"));
            }
        }
        eprintln!(
            "this CPU's XSAVE layout vs Intel's: {}",
            if moved.is_empty() {
                "the same, nothing moves".to_string()
            } else {
                format!("components moved {moved:?}")
            }
        );
    }
}
