//! What the C targets in `testdata/` set up, written once for every test that
//! checks a core against them (the host tests and the kernel matrix).

/// The general registers `regs.c` loads into the spinner.
pub const REGS_GPR: &[(&str, u64)] = &[
    ("rax", 0xaaaa_0000_0000_0001),
    ("rbx", 0xbbbb_0000_0000_0002),
    ("rcx", 0xcccc_0000_0000_0003),
    ("rdx", 0xdddd_0000_0000_0004),
    ("rsi", 0x5151_0000_0000_0005),
    ("rdi", 0xd1d1_0000_0000_0006),
    ("rbp", 0xb9b9_0000_0000_0007),
    ("r8", 0x0808_0000_0000_0008),
    ("r9", 0x0909_0000_0000_0009),
    ("r10", 0x1010_0000_0000_000a),
    ("r11", 0x1111_0000_0000_000b),
    ("r12", 0x1122_3344_5566_7788),
    ("r13", 0x99aa_bbcc_ddee_ff00),
    ("r14", 0x0123_4567_89ab_cdef),
    ("r15", 0xfedc_ba98_7654_3210),
];

/// `regs.c`'s x87 control word, MXCSR and PKRU (where PKU is on).
pub const REGS_FCTRL: u64 = 0x0e7f;
pub const REGS_MXCSR: u64 = 0x7fa5;
pub const REGS_PKRU: u64 = 0x5a5a_5a50;

/// 64-bit lane `lane` of vector register `reg` (xmm/ymm/zmm) in `regs.c`.
pub fn regs_vector_lane(reg: u64, lane: u64) -> u64 {
    0xc0de_0000_0000_0000 | (reg << 16) | lane
}

/// (ready-line key, tag) of the memory target's regions (`memory.c`).
pub const MEMORY_REGIONS: &[(&str, u64)] = &[
    ("heap", 0x4845),
    ("stack", 0x5354),
    ("global", 0x474c),
    ("shanon", 0x5348),
    ("memfd", 0x4d46),
    ("delfile", 0x444c),
    ("dontdump", 0x444e),
];
