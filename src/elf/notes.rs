//! ELF note records and the core notes built from a snapshot, in the order
//! the kernel writes them (see docs/FORMAT.md).

use crate::arch;
use crate::snapshot::{ProcessInfo, Snapshot, ThreadInfo};

pub const NT_PRSTATUS: u32 = 1;
pub const NT_PRFPREG: u32 = 2;
pub const NT_PRPSINFO: u32 = 3;
pub const NT_AUXV: u32 = 6;
pub const NT_SIGINFO: u32 = 0x5349_4749;
pub const NT_FILE: u32 = 0x4649_4c45;

pub const NAME_CORE: &[u8] = b"CORE";
pub const NAME_LINUX: &[u8] = b"LINUX";

/// Size of `siginfo_t` on Linux.
pub const SIGINFO_LEN: usize = 128;

/// One ELF note: `Elf64_Nhdr`, the NUL-terminated name and the descriptor,
/// each padded to 4 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub name: &'static [u8],
    pub kind: u32,
    pub desc: Vec<u8>,
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

impl Note {
    pub fn new(name: &'static [u8], kind: u32, desc: Vec<u8>) -> Note {
        Note { name, kind, desc }
    }

    pub fn encoded_len(&self) -> usize {
        12 + pad4(self.name.len() + 1) + pad4(self.desc.len())
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&(self.name.len() as u32 + 1).to_le_bytes());
        out.extend_from_slice(&(self.desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(self.name);
        out.push(0);
        out.resize(start + 12 + pad4(self.name.len() + 1), 0);
        out.extend_from_slice(&self.desc);
        out.resize(start + self.encoded_len(), 0);
    }
}

/// All notes, encoded back to back, ready to be the PT_NOTE segment.
pub fn encode_notes(notes: &[Note]) -> Vec<u8> {
    let mut out = Vec::with_capacity(notes.iter().map(Note::encoded_len).sum());
    for note in notes {
        note.encode_into(&mut out);
    }
    out
}

/// The notes of a core for `snapshot`: the first thread's NT_PRSTATUS, then
/// the process-wide notes, then that thread's other register sets; every
/// further thread's NT_PRSTATUS followed by its own register sets (gdb ties
/// register sets to the PRSTATUS before them). `extra` notes go at the end.
pub fn core_notes(snapshot: &Snapshot, extra: Vec<Note>) -> Vec<Note> {
    let mut notes = Vec::new();
    for (index, thread) in snapshot.threads.iter().enumerate() {
        notes.push(Note::new(
            NAME_CORE,
            NT_PRSTATUS,
            prstatus(&snapshot.process, thread),
        ));
        if index == 0 {
            notes.push(Note::new(
                NAME_CORE,
                NT_PRPSINFO,
                prpsinfo(&snapshot.process),
            ));
            notes.push(Note::new(
                NAME_CORE,
                NT_SIGINFO,
                thread.siginfo.map_or(vec![0; SIGINFO_LEN], |s| s.to_vec()),
            ));
            notes.push(Note::new(NAME_CORE, NT_AUXV, snapshot.auxv.clone()));
            notes.push(Note::new(NAME_CORE, NT_FILE, file_note(snapshot)));
        }
        notes.extend(arch::register_notes(&thread.registers));
    }
    if let Some(first) = snapshot.threads.first() {
        notes.extend(arch::process_notes(&first.registers));
    }
    notes.extend(extra);
    notes
}

fn put_timeval(out: &mut Vec<u8>, t: std::time::Duration) {
    out.extend_from_slice(&(t.as_secs() as i64).to_le_bytes());
    out.extend_from_slice(&(t.subsec_micros() as i64).to_le_bytes());
}

/// `struct elf_prstatus` (336 bytes on x86-64).
pub fn prstatus(process: &ProcessInfo, thread: &ThreadInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(arch::PRSTATUS_LEN);
    let (signo, code, errno) = thread.siginfo.map_or((thread.current_signal, 0, 0), |s| {
        let word = |i: usize| i32::from_le_bytes(s[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        (word(0), word(2), word(1))
    });
    for v in [signo, code, errno] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(thread.current_signal as i16).to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&thread.signals_pending.to_le_bytes());
    out.extend_from_slice(&thread.signals_blocked.to_le_bytes());
    // The ids as the process knows them (its own pid namespace), as the
    // kernel writes them: libthread_db matches threads by these.
    let ids = process.inside;
    for v in [thread.tid_inside, ids.ppid, ids.pgrp, ids.sid] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    put_timeval(&mut out, thread.user_time);
    put_timeval(&mut out, thread.system_time);
    put_timeval(&mut out, thread.children_user_time);
    put_timeval(&mut out, thread.children_system_time);
    out.extend_from_slice(&arch::prstatus_registers(&thread.registers));
    // pr_fpvalid: whether an NT_PRFPREG note follows.
    out.extend_from_slice(&i32::from(thread.registers.fp_valid()).to_le_bytes());
    out.resize(arch::PRSTATUS_LEN, 0);
    out
}

/// `struct elf_prpsinfo` (136 bytes on x86-64).
pub fn prpsinfo(process: &ProcessInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(136);
    let sname = process.state;
    let state_index = b"RSDTZW".iter().position(|&c| c == sname).unwrap_or(0) as u8;
    out.push(state_index);
    out.push(sname);
    out.push(u8::from(sname == b'Z'));
    out.push(process.nice as u8);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&process.flags.to_le_bytes());
    out.extend_from_slice(&process.uid.to_le_bytes());
    out.extend_from_slice(&process.gid.to_le_bytes());
    let ids = process.inside;
    for v in [ids.pid, ids.ppid, ids.pgrp, ids.sid] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut fname = [0u8; 16];
    let comm = &process.comm[..process.comm.len().min(15)];
    fname[..comm.len()].copy_from_slice(comm);
    out.extend_from_slice(&fname);
    // The kernel keeps the first 80 bytes of the argument area with NULs
    // turned into spaces, always NUL-terminated.
    let mut psargs = [0u8; 80];
    let args = process
        .cmdline
        .strip_suffix(b"\0")
        .unwrap_or(&process.cmdline);
    for (dst, &src) in psargs.iter_mut().zip(args.iter().take(79)) {
        *dst = if src == 0 { b' ' } else { src };
    }
    out.extend_from_slice(&psargs);
    out
}

/// NT_FILE: every file-backed mapping, dumped or not, with offsets in pages
/// as the kernel writes them.
pub fn file_note(snapshot: &Snapshot) -> Vec<u8> {
    const PAGE: u64 = 4096;
    let files: Vec<_> = snapshot
        .regions
        .iter()
        .map(|r| &r.mapping)
        .filter(|m| m.is_file())
        .collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(files.len() as u64).to_le_bytes());
    out.extend_from_slice(&PAGE.to_le_bytes());
    for m in &files {
        for v in [m.start, m.end, m.offset / PAGE] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    for m in &files {
        out.extend_from_slice(&m.name);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_encoding_pads_name_and_desc() {
        let note = Note::new(NAME_LINUX, 0x202, vec![1, 2, 3, 4, 5]);
        let mut out = Vec::new();
        note.encode_into(&mut out);
        assert_eq!(out.len(), note.encoded_len());
        assert_eq!(out.len(), 12 + 8 + 8);
        assert_eq!(&out[0..4], &6u32.to_le_bytes());
        assert_eq!(&out[4..8], &5u32.to_le_bytes());
        assert_eq!(&out[8..12], &0x202u32.to_le_bytes());
        assert_eq!(&out[12..18], b"LINUX\0");
        assert_eq!(&out[20..25], &[1, 2, 3, 4, 5]);
    }

    #[test]
    fn prpsinfo_turns_argument_nuls_into_spaces() {
        let ids = crate::process::info::ProcessIds {
            pid: 10,
            ppid: 1,
            pgrp: 10,
            sid: 10,
        };
        let process = ProcessInfo {
            pid: 10,
            ppid: 1,
            pgrp: 10,
            sid: 10,
            inside: ids,
            uid: 1000,
            gid: 100,
            comm: b"prog".to_vec(),
            cmdline: b"./prog\0-x\0value\0".to_vec(),
            state: b'S',
            nice: -5,
            flags: 0x40,
            ..ProcessInfo::default()
        };
        let raw = prpsinfo(&process);
        assert_eq!(raw.len(), 136);
        assert_eq!(&raw[0..4], &[1, b'S', 0, (-5i8) as u8]);
        assert_eq!(u32::from_le_bytes(raw[16..20].try_into().unwrap()), 1000);
        assert_eq!(i32::from_le_bytes(raw[24..28].try_into().unwrap()), 10);
        assert_eq!(&raw[40..45], b"prog\0");
        assert_eq!(&raw[56..72], b"./prog -x value\0");
    }
}
