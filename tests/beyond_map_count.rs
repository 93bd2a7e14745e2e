//! A process with more mappings than the default `vm.max_map_count` (65530)
//! allows, where the kernel has been told to allow it: its core needs more
//! than 65535 program headers, so `e_phnum` must be `PN_XNUM` with the real
//! count in section header 0's `sh_info`, every mapping must still get its
//! `PT_LOAD`, and gdb must read the memory of the first, a middle and the
//! last of them.
//!
//! The test raises `vm.max_map_count`, a machine-wide setting, while it runs
//! and puts it back afterwards (also when it fails). That is acceptable
//! because `cargo test` runs the test binaries one after another, never two
//! at once, and this file holds only this one test, so nothing else runs
//! while the limit is raised. (A runner that starts several test binaries
//! in parallel, such as cargo-nextest, would let other tests see the raised
//! limit; they only ever get more room, never less.) A test process killed
//! outright (SIGKILL) cannot restore the value: then it stays raised.

mod common;

use common::*;
use object::LittleEndian as LE;
use object::elf;
use object::read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _};
use object::{ReadCache, ReadRef};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::time::Instant;

const MAX_MAP_COUNT: &str = "/proc/sys/vm/max_map_count";
/// The limit while the test runs: room for the target's mappings and the
/// few dozen of its executable, libraries, heap and stack.
const RAISED_LIMIT: u64 = 80_000;
/// One-page mappings the target makes: clearly more than 65535, so that the
/// core needs `PN_XNUM` whatever else the process maps.
const COUNT: u64 = 70_000;
const PAGE: u64 = 4096;
const MARK: u64 = 0x4D4D_0000_0000_0000;

fn read_max_map_count() -> u64 {
    let text = fs::read_to_string(MAX_MAP_COUNT)
        .unwrap_or_else(|e| panic!("reading {MAX_MAP_COUNT}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{MAX_MAP_COUNT} holds {text:?}: {e}"))
}

fn write_max_map_count(value: u64) -> std::io::Result<()> {
    fs::write(MAX_MAP_COUNT, format!("{value}\n"))
}

/// Raises `vm.max_map_count` to at least a given value while it lives and
/// restores the previous value when dropped, including while unwinding from
/// a failed assertion.
struct MaxMapCountGuard {
    /// The value to put back, if this guard changed it.
    previous: Option<u64>,
}

impl MaxMapCountGuard {
    fn raise_to(at_least: u64) -> MaxMapCountGuard {
        let previous = read_max_map_count();
        if previous >= at_least {
            return MaxMapCountGuard { previous: None };
        }
        // Constructed before writing, so that a half-done change is undone.
        let guard = MaxMapCountGuard {
            previous: Some(previous),
        };
        write_max_map_count(at_least)
            .unwrap_or_else(|e| panic!("writing {at_least} to {MAX_MAP_COUNT}: {e}"));
        assert_eq!(
            read_max_map_count(),
            at_least,
            "{MAX_MAP_COUNT} did not change"
        );
        guard
    }
}

impl Drop for MaxMapCountGuard {
    fn drop(&mut self) {
        if let Some(previous) = self.previous
            && let Err(e) = write_max_map_count(previous)
        {
            eprintln!("warning: could not restore {MAX_MAP_COUNT} to {previous}: {e}");
        }
    }
}

/// Whether this test may raise `vm.max_map_count` (the kernel lets only
/// CAP_SYS_ADMIN write it, and the file must be writable: not a read-only
/// /proc in a container), unless it is already high enough.
fn may_raise_max_map_count() -> Result<(), Missing> {
    if read_max_map_count() >= RAISED_LIMIT {
        return Ok(());
    }
    capability(Capability::SysAdmin, "to raise vm.max_map_count")?;
    fs::OpenOptions::new()
        .write(true)
        .open(MAX_MAP_COUNT)
        .map(drop)
        .map_err(|e| {
            Missing::environment(
                format!("a writable {MAX_MAP_COUNT} ({e})"),
                format!("run the tests where sysctls can be set, or set vm.max_map_count to {RAISED_LIMIT} first"),
            )
        })
}

/// One line of /proc/PID/maps.
struct MapsLine {
    start: u64,
    end: u64,
    perms: String,
    name: String,
    line: String,
}

fn read_maps(pid: i32) -> Vec<MapsLine> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/maps: {e}"));
    text.lines()
        .map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next().unwrap_or_default();
            let perms = fields.next().unwrap_or_default().to_string();
            // offset, device, inode, then the name (which may contain spaces).
            let name = fields.skip(3).collect::<Vec<_>>().join(" ");
            let (start, end) = range
                .split_once('-')
                .and_then(|(s, e)| {
                    Some((
                        u64::from_str_radix(s, 16).ok()?,
                        u64::from_str_radix(e, 16).ok()?,
                    ))
                })
                .unwrap_or_else(|| panic!("bad maps line {line:?}"));
            MapsLine {
                start,
                end,
                perms,
                name,
                line: line.to_string(),
            }
        })
        .collect()
}

/// Mappings that docs/FORMAT.md says get no program header: the kernel's
/// unreadable data pages and an execute-only `[vsyscall]`.
fn gets_no_program_header(m: &MapsLine) -> bool {
    matches!(m.name.as_str(), "[vvar]" | "[vvar_vclock]")
        || (m.name == "[vsyscall]" && !m.perms.starts_with('r'))
}

#[test]
fn more_than_65535_mappings_are_dumped_with_pn_xnum() {
    require!(ptrace_access(), may_raise_max_map_count());
    let started = Instant::now();
    // Declared before the target so that it is dropped after it: the limit
    // goes back down only once the target's mappings are gone.
    let _limit = MaxMapCountGuard::raise_to(RAISED_LIMIT);

    let exe = build(Program::ManyMaps);
    let count_arg = COUNT.to_string();
    let mut target = Target::spawn(&exe, &[OsStr::new(&count_arg)]);
    wait_threads_sleeping(target.pid, &[]);
    assert_eq!(target.num("count") as u64, COUNT, "{}", target.ready_line);
    let first = target.addr("first");
    let last = target.addr("last");
    assert_eq!(
        last,
        first + (COUNT - 1) * PAGE,
        "mappings are not one page apart: {}",
        target.ready_line
    );

    // The premise: the process really has more mappings than 16 bits count.
    let maps = read_maps(target.pid);
    assert!(
        maps.len() > 65_535,
        "the target has only {} mappings; the test needs more than 65535",
        maps.len()
    );
    let spawned = started.elapsed();

    let scratch = Scratch::new("beyond-map-count");
    let dump_started = Instant::now();
    let core = dump(Dumper::Coresnap, target.pid, scratch.path(), &[]);
    let dump_time = dump_started.elapsed();
    assert_running_untraced(target.pid);

    // ELF header: PN_XNUM, the real count in section header 0.
    let file = fs::File::open(&core).unwrap_or_else(|e| panic!("opening {}: {e}", core.display()));
    let cache = ReadCache::new(file);
    let data = &cache;
    let header = elf::FileHeader64::<LE>::parse(data).expect("ELF header");
    assert_eq!(header.e_type(LE), elf::ET_CORE);
    assert_eq!(
        header.e_phnum(LE),
        elf::PN_XNUM,
        "e_phnum is not PN_XNUM with {} mappings",
        maps.len()
    );
    assert_eq!(
        header.e_shnum(LE),
        1,
        "one section header carries the count"
    );
    let section_0 = header
        .section_0(LE, data)
        .expect("section header 0 readable")
        .expect("section header 0 present");
    assert_eq!(section_0.sh_type(LE), elf::SHT_NULL);
    let phnum = section_0.sh_info(LE) as usize;
    assert!(phnum > 65_535, "sh_info holds {phnum} program headers");
    let phdrs = header.program_headers(LE, data).expect("program headers");
    assert_eq!(phdrs.len(), phnum);
    assert_eq!(phdrs[0].p_type(LE), elf::PT_NOTE, "PT_NOTE comes first");
    assert!(
        phdrs[1..].iter().all(|p| p.p_type(LE) == elf::PT_LOAD),
        "every program header after the first is a PT_LOAD"
    );
    let loads = &phdrs[1..];
    assert!(
        loads
            .windows(2)
            .all(|w| w[0].p_vaddr(LE) + w[0].p_memsz(LE) <= w[1].p_vaddr(LE)),
        "PT_LOAD segments are not in address order without overlap"
    );

    // Every mapping has its PT_LOAD (except those the format documents as
    // having none), and there are no others.
    let by_vaddr: HashMap<u64, usize> = loads
        .iter()
        .enumerate()
        .map(|(i, p)| (p.p_vaddr(LE), i))
        .collect();
    let mut expected_loads = 0;
    for m in &maps {
        let load = by_vaddr.get(&m.start).map(|&i| &loads[i]);
        if gets_no_program_header(m) {
            assert!(load.is_none(), "a PT_LOAD for {}", m.line);
            continue;
        }
        expected_loads += 1;
        let load = load.unwrap_or_else(|| panic!("no PT_LOAD for {}", m.line));
        assert_eq!(
            load.p_memsz(LE),
            m.end - m.start,
            "PT_LOAD size for {}",
            m.line
        );
    }
    assert_eq!(
        loads.len(),
        expected_loads,
        "PT_LOAD count vs the target's {} mappings",
        maps.len()
    );

    // The target's own mappings: whole, with their protections, and each
    // one's marker in the file.
    for i in 0..COUNT {
        let vaddr = first + i * PAGE;
        let load = &loads[*by_vaddr
            .get(&vaddr)
            .unwrap_or_else(|| panic!("no PT_LOAD for mapping {i} at {vaddr:#x}"))];
        assert_eq!(load.p_memsz(LE), PAGE, "mapping {i} at {vaddr:#x}");
        assert_eq!(load.p_filesz(LE), PAGE, "mapping {i} at {vaddr:#x}");
        // Even mappings stay read-write, odd ones were made read-only.
        let flags = if i % 2 == 0 {
            elf::PF_R.0 | elf::PF_W.0
        } else {
            elf::PF_R.0
        };
        assert_eq!(load.p_flags(LE).0, flags, "mapping {i} at {vaddr:#x}");
        let bytes = data
            .read_bytes_at(load.p_offset(LE), 8)
            .unwrap_or_else(|()| panic!("mapping {i}'s data is outside the core"));
        let word = u64::from_le_bytes(bytes.try_into().unwrap());
        assert_eq!(
            word,
            MARK | i,
            "marker of mapping {i} at {vaddr:#x} in the core file"
        );
    }

    // gdb reads the first, a middle and the last mapping.
    let middle = COUNT / 2;
    let probes = [
        (0, first),
        (middle, first + middle * PAGE),
        (COUNT - 1, last),
    ];
    let commands: Vec<String> = probes
        .iter()
        .map(|(_, a)| format!("x/1gx {a:#x}"))
        .collect();
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let gdb_started = Instant::now();
    let (preamble, sections) = run_gdb_split(&exe, &core, &commands);
    let gdb_time = gdb_started.elapsed();
    assert!(
        core_generated_by(&preamble).is_some(),
        "gdb did not load the core:\n{preamble}"
    );
    for ((i, addr), out) in probes.iter().zip(&sections) {
        let words = parse_x_words(out)
            .unwrap_or_else(|e| panic!("gdb x/1gx {addr:#x} (mapping {i}): {e}\n{preamble}"));
        assert_eq!(
            words,
            vec![MARK | i],
            "gdb's value at {addr:#x} (mapping {i})"
        );
    }

    // The dump left the target as it found it.
    assert_running_untraced(target.pid);
    target.assert_alive();

    eprintln!(
        "{} mappings, {phnum} program headers: target ready in {spawned:.1?}, \
         dump {dump_time:.1?}, gdb {gdb_time:.1?}, total {:.1?}",
        maps.len(),
        started.elapsed()
    );
}
