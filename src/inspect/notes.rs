//! Decoding the notes of an x86-64 Linux core: each decoder takes a
//! descriptor and returns `None` (or an error string) when it is too short
//! or inconsistent, never panicking on any input.

pub use crate::elf::notes::{NT_AUXV, NT_FILE, NT_PRFPREG, NT_PRPSINFO, NT_PRSTATUS, NT_SIGINFO};
pub use crate::manifest::note::NT_CORESNAP_MANIFEST;
/// Defined here, not taken from `crate::arch`: the reader handles x86-64
/// cores whatever machine it runs on.
pub const NT_X86_XSTATE: u32 = 0x202;

pub const AT_PHDR: u64 = 3;
pub const AT_ENTRY: u64 = 9;
pub const AT_SYSINFO_EHDR: u64 = 33;
pub const AT_EXECFN: u64 = 31;

/// Readable name of a note type, given the note's name.
pub fn type_name(name: &str, n_type: u32) -> String {
    let known = match (name, n_type) {
        ("CORE", 1) => "NT_PRSTATUS",
        ("CORE", 2) => "NT_PRFPREG",
        ("CORE", 3) => "NT_PRPSINFO",
        ("CORE", 4) => "NT_TASKSTRUCT",
        ("CORE", 6) => "NT_AUXV",
        ("CORE", NT_SIGINFO) => "NT_SIGINFO",
        ("CORE", NT_FILE) => "NT_FILE",
        ("LINUX", 0x201) => "NT_386_IOPERM",
        ("LINUX", NT_X86_XSTATE) => "NT_X86_XSTATE",
        ("LINUX", 0x204) => "NT_X86_SHSTK",
        ("LINUX", 0x205) => "NT_X86_XSAVE_LAYOUT",
        ("GDB", 0xff00_0000) => "NT_GDB_TDESC",
        ("CORESNAP", NT_CORESNAP_MANIFEST) => "CORESNAP manifest",
        ("GNU", 3) => "NT_GNU_BUILD_ID",
        _ => "",
    };
    if known.is_empty() {
        format!("{name} type {n_type:#x}")
    } else {
        known.to_string()
    }
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn i32_at(b: &[u8], o: usize) -> Option<i32> {
    Some(i32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// `user_regs_struct` order.
pub const REG_NAMES: [&str; 27] = [
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
    "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs",
    "gs",
];

/// `elf_prstatus` (336 bytes on x86-64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrStatus {
    pub signo: i32,
    pub code: i32,
    pub errno: i32,
    pub cursig: i16,
    pub sigpend: u64,
    pub sighold: u64,
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub sid: i32,
    pub regs: [u64; 27],
}

impl PrStatus {
    pub fn reg(&self, name: &str) -> u64 {
        REG_NAMES
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| self.regs[i])
    }
    pub fn pc(&self) -> u64 {
        self.regs[16]
    }
    pub fn sp(&self) -> u64 {
        self.regs[19]
    }
    pub fn fp(&self) -> u64 {
        self.regs[4]
    }
}

pub fn prstatus(d: &[u8]) -> Option<PrStatus> {
    if d.len() < 112 + 27 * 8 {
        return None;
    }
    let mut regs = [0u64; 27];
    for (i, r) in regs.iter_mut().enumerate() {
        *r = u64_at(d, 112 + 8 * i)?;
    }
    Some(PrStatus {
        signo: i32_at(d, 0)?,
        code: i32_at(d, 4)?,
        errno: i32_at(d, 8)?,
        cursig: i16::from_le_bytes([d[12], d[13]]),
        sigpend: u64_at(d, 16)?,
        sighold: u64_at(d, 24)?,
        pid: i32_at(d, 32)?,
        ppid: i32_at(d, 36)?,
        pgrp: i32_at(d, 40)?,
        sid: i32_at(d, 44)?,
        regs,
    })
}

/// `elf_prpsinfo` (136 bytes on x86-64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrPsInfo {
    pub state: u8,
    pub sname: char,
    pub nice: i8,
    pub flag: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub sid: i32,
    pub fname: String,
    pub psargs: String,
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub fn prpsinfo(d: &[u8]) -> Option<PrPsInfo> {
    if d.len() < 136 {
        return None;
    }
    Some(PrPsInfo {
        state: d[0],
        sname: if d[1].is_ascii_graphic() {
            d[1] as char
        } else {
            '?'
        },
        nice: d[3] as i8,
        flag: u64_at(d, 8)?,
        uid: u32_at(d, 16)?,
        gid: u32_at(d, 20)?,
        pid: i32_at(d, 24)?,
        ppid: i32_at(d, 28)?,
        pgrp: i32_at(d, 32)?,
        sid: i32_at(d, 36)?,
        fname: c_string(&d[40..56]),
        psargs: c_string(&d[56..136]).trim_end().to_string(),
    })
}

/// The parts of `siginfo_t` a triager wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigInfo {
    pub signo: i32,
    pub errno: i32,
    pub code: i32,
    /// Fault address, for SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP.
    pub addr: Option<u64>,
    /// Sender, for a signal sent by a process (`si_code` <= 0).
    pub sender_pid: Option<i32>,
    pub sender_uid: Option<u32>,
}

pub fn siginfo(d: &[u8]) -> Option<SigInfo> {
    if d.len() < 24 {
        return None;
    }
    let signo = i32_at(d, 0)?;
    let errno = i32_at(d, 4)?;
    let code = i32_at(d, 8)?;
    let fault = matches!(signo, 4 | 5 | 7 | 8 | 11);
    Some(SigInfo {
        signo,
        errno,
        code,
        addr: (fault && code > 0).then(|| u64_at(d, 16)).flatten(),
        sender_pid: (code <= 0 && signo != 0).then(|| i32_at(d, 16)).flatten(),
        sender_uid: (code <= 0 && signo != 0).then(|| u32_at(d, 20)).flatten(),
    })
}

/// Name of signal `n` (`SIGSEGV`), or `signal N`.
pub fn signal_name(n: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(n).ok().and_then(|i| NAMES.get(i)) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ if (34..=64).contains(&n) => format!("SIGRT{}", n - 34),
        _ => format!("signal {n}"),
    }
}

/// `NT_AUXV`: (type, value) pairs up to AT_NULL.
pub fn auxv(d: &[u8]) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for pair in d.chunks_exact(16) {
        let (Some(k), Some(val)) = (u64_at(pair, 0), u64_at(pair, 8)) else {
            break;
        };
        if k == 0 {
            break;
        }
        v.push((k, val));
    }
    v
}

/// One `NT_FILE` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMapping {
    pub start: u64,
    pub end: u64,
    /// Offset into the file, in bytes.
    pub offset: u64,
    pub path: String,
}

/// `NT_FILE`: the file-backed mappings. Returns the entries read and a
/// problem, if the note is inconsistent.
pub fn nt_file(d: &[u8]) -> (Vec<FileMapping>, Option<String>) {
    let (Some(count), Some(page_size)) = (u64_at(d, 0), u64_at(d, 8)) else {
        return (
            Vec::new(),
            Some("NT_FILE is shorter than its 16-byte header".into()),
        );
    };
    let table_end = count.checked_mul(24).and_then(|n| n.checked_add(16));
    let Some(table_end) = table_end.filter(|&e| e <= d.len() as u64) else {
        return (
            Vec::new(),
            Some(format!(
                "NT_FILE claims {count} mappings, more than its {} bytes can hold",
                d.len()
            )),
        );
    };
    let mut paths = d[table_end as usize..].split(|&b| b == 0);
    let mut out = Vec::with_capacity(count as usize);
    let mut problem = None;
    for i in 0..count as usize {
        let at = 16 + 24 * i;
        let (Some(start), Some(end), Some(pgoff)) =
            (u64_at(d, at), u64_at(d, at + 8), u64_at(d, at + 16))
        else {
            break;
        };
        let Some(path) = paths.next() else {
            problem = Some(format!("NT_FILE has {count} mappings but only {i} paths"));
            break;
        };
        if end < start && problem.is_none() {
            problem = Some(format!(
                "NT_FILE entry {i} ends ({end:#x}) before it starts ({start:#x})"
            ));
        }
        out.push(FileMapping {
            start,
            end: end.max(start),
            offset: pgoff.saturating_mul(page_size),
            path: String::from_utf8_lossy(path).into_owned(),
        });
    }
    (out, problem)
}

/// What an `NT_X86_XSTATE` note says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XState {
    pub size: usize,
    /// XCR0 as saved in `sw_reserved` (offset 464).
    pub xcr0: Option<u64>,
    /// XSTATE_BV of the XSAVE header (offset 512).
    pub xstate_bv: Option<u64>,
}

pub fn xstate(d: &[u8]) -> XState {
    XState {
        size: d.len(),
        xcr0: u64_at(d, 464),
        xstate_bv: u64_at(d, 512),
    }
}

/// XSAVE components named by the bits of XCR0.
pub fn xcr0_features(xcr0: u64) -> Vec<&'static str> {
    const NAMES: [(u32, &str); 10] = [
        (0, "x87"),
        (1, "sse"),
        (2, "avx"),
        (3, "bndregs"),
        (4, "bndcsr"),
        (5, "opmask"),
        (6, "zmm_hi256"),
        (7, "hi16_zmm"),
        (9, "pkru"),
        (17, "amx"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| xcr0 & (1 << bit) != 0)
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_refuse_short_input() {
        assert!(prstatus(&[0; 100]).is_none());
        assert!(prpsinfo(&[0; 100]).is_none());
        assert!(siginfo(&[0; 10]).is_none());
        assert_eq!(auxv(&[1; 7]), vec![]);
        let (v, p) = nt_file(&[0xff; 40]);
        assert!(v.is_empty() && p.is_some());
    }

    #[test]
    fn nt_file_round_trip() {
        let mut d = Vec::new();
        for v in [2u64, 4096, 0x1000, 0x2000, 1, 0x3000, 0x5000, 0] {
            d.extend(v.to_le_bytes());
        }
        d.extend(b"/bin/a\0/lib/b\0");
        let (v, p) = nt_file(&d);
        assert_eq!(p, None);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].offset, 4096);
        assert_eq!(v[1].path, "/lib/b");
        // Fewer paths than entries.
        let (v, p) = nt_file(&d[..d.len() - 8]);
        assert_eq!(v.len(), 1);
        assert!(p.is_some());
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(6), "SIGABRT");
        assert_eq!(signal_name(0), "signal 0");
        assert_eq!(signal_name(-3), "signal -3");
        assert_eq!(signal_name(40), "SIGRT6");
    }
}
