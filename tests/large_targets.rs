//! Cores of the shapes that make other tools slow or huge: a sparse process
//! (a large reservation with one page touched per 4 MiB), a process with
//! 30000 mappings, streaming to a pipe, and the Rust demo target. Each core
//! must show in gdb the same threads, backtraces and memory as gcore's core
//! of the same idle process.

mod common;

use common::*;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

/// gdb's view of a core: threads, backtraces and the given memory probes.
fn gdb_view(exe: &std::path::Path, core: &std::path::Path, probes: &[String]) -> Vec<String> {
    let mut commands = vec![
        "info threads".to_string(),
        "thread apply all bt".to_string(),
    ];
    commands.extend(probes.iter().cloned());
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let (_, sections) = run_gdb_split(exe, core, &commands);
    sections
}

fn vm_rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in status");
    kb * 1024
}

#[test]
fn sparse_process_gives_a_small_core_that_reads_like_gcores() {
    let exe = build(Program::Sparse);
    let target = Target::spawn(&exe, &[]);
    wait_threads_sleeping(target.pid, &[]);
    let scratch = Scratch::new("sparse");

    let reserve = target.addr("reserve");
    let reserve_len = target.num("reserve_len") as u64;
    let stride = target.num("stride") as u64;
    let dense = target.addr("dense");
    let dense_len = target.num("dense_len") as u64;
    let last_touched = reserve + (reserve_len / stride - 1) * stride;
    let probes: Vec<String> = [
        reserve,
        reserve + stride,
        reserve + 100 * stride,
        last_touched,
        reserve + 4096,          // never touched: zeros in both cores
        last_touched + 8 * 4096, // never touched
        dense,
        dense + dense_len - 16,
    ]
    .iter()
    .map(|a| format!("x/2gx {a:#x}"))
    .collect();

    let ours = dump(Dumper::Coresnap, target.pid, scratch.path(), &[]);
    assert_running_untraced(target.pid);
    let reference = dump(Dumper::Gcore, target.pid, scratch.path(), &[]);
    assert_running_untraced(target.pid);

    let our_view = gdb_view(&exe, &ours, &probes);
    let gcore_view = gdb_view(&exe, &reference, &probes);
    for (i, (a, b)) in our_view.iter().zip(&gcore_view).enumerate() {
        assert_same_text(&format!("gdb section {i}"), "coresnap", a, "gcore", b);
    }
    // The probes show the values the target wrote, not just agreement.
    let first = parse_x_words(&our_view[2]).unwrap();
    assert_eq!(first[0], 0x5A5A_0000_0000_0000);
    let hundredth = parse_x_words(&our_view[4]).unwrap();
    assert_eq!(hundredth[0], 0x5A5A_0000_0000_0000 | (100 * stride / 4096));
    assert_eq!(parse_x_words(&our_view[6]).unwrap(), vec![0, 0]);
    assert!(
        our_view[1].contains("sparse_worker_wait"),
        "{}",
        our_view[1]
    );

    let meta = std::fs::metadata(&ours).unwrap();
    let on_disk = meta.blocks() * 512;
    let rss = vm_rss_bytes(target.pid);
    assert!(
        meta.len() > reserve_len,
        "logical size {} should cover the {reserve_len}-byte reservation",
        meta.len()
    );
    assert!(
        on_disk * 10 <= rss * 12,
        "core takes {on_disk} bytes on disk, more than 1.2 x the target's resident {rss} bytes"
    );
}

#[test]
fn thirty_thousand_mappings_read_like_gcores() {
    let exe = build(Program::ManyMaps);
    let target = Target::spawn(&exe, &[OsStr::new("30000")]);
    wait_threads_sleeping(target.pid, &[]);
    let scratch = Scratch::new("many-maps");
    let first = target.addr("first");
    let last = target.addr("last");
    let probes: Vec<String> = [first, first + 4096, first + 15_000 * 4096, last]
        .iter()
        .map(|a| format!("x/1gx {a:#x}"))
        .collect();

    let ours = dump(Dumper::Coresnap, target.pid, scratch.path(), &[]);
    assert_running_untraced(target.pid);
    let reference = dump(Dumper::Gcore, target.pid, scratch.path(), &[]);
    let our_view = gdb_view(&exe, &ours, &probes);
    let gcore_view = gdb_view(&exe, &reference, &probes);
    for (i, (a, b)) in our_view.iter().zip(&gcore_view).enumerate() {
        assert_same_text(&format!("gdb section {i}"), "coresnap", a, "gcore", b);
    }
    assert_eq!(
        parse_x_words(&our_view[5]).unwrap(),
        vec![0x4D4D_0000_0000_0000 | 29_999]
    );

    let data = std::fs::read(&ours).unwrap();
    let header = object::elf::FileHeader64::<object::LittleEndian>::parse(&data[..]).unwrap();
    use object::read::elf::FileHeader as _;
    let loads = header
        .program_headers(object::LittleEndian, &data[..])
        .unwrap()
        .len();
    assert!(loads > 30_000, "{loads} program headers for 30000 mappings");
}

/// `-o -` writes the same bytes as a file, holes as zeros, and gdb reads it.
#[test]
fn streaming_to_stdout_matches_the_file() {
    let exe = build(Program::Threads);
    let target = Target::spawn(&exe, &[]);
    wait_threads_sleeping(target.pid, &[]);
    // Even an idle thread runs a little between two dumps (its interrupted
    // system call restarts from user space, and the kernel then updates its
    // rseq area), so keep the target stopped to compare two dumps byte for
    // byte.
    stop_target(&target);
    let scratch = Scratch::new("stream");
    let file_core = dump(Dumper::Coresnap, target.pid, scratch.path(), &[]);
    let streamed = scratch.path().join("streamed.core");
    // Through a shell redirection: the harness captures the child's stdout.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#""$0" -q -o - "$1" > "$2""#)
        .arg(Dumper::Coresnap.program())
        .arg(target.pid.to_string())
        .arg(&streamed);
    let result = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
    assert!(result.success(), "{}", result.describe());
    assert_stopped_untraced(target.pid);
    common::elf_readers::assert_readers_agree(&streamed);
    let a = std::fs::read(&file_core).unwrap();
    let b = std::fs::read(&streamed).unwrap();
    assert_eq!(a.len(), b.len(), "streamed core has a different length");
    // Headers and memory are identical; the notes differ only in the
    // threads' CPU times, which grow between two dumps.
    use object::read::elf::{FileHeader as _, ProgramHeader as _};
    let le = object::LittleEndian;
    let header = object::elf::FileHeader64::<object::LittleEndian>::parse(&a[..]).unwrap();
    let phdrs = header.program_headers(le, &a[..]).unwrap();
    let notes_start = phdrs[0].p_offset(le) as usize;
    assert_eq!(
        a[..notes_start],
        b[..notes_start],
        "ELF and program headers differ"
    );
    let data_start = phdrs[1].p_offset(le) as usize;
    if let Some(at) = (data_start..a.len()).find(|&i| a[i] != b[i]) {
        let segment = phdrs
            .iter()
            .find(|p| (p.p_offset(le)..p.p_offset(le) + p.p_filesz(le)).contains(&(at as u64)));
        let vaddr = segment.map(|p| p.p_vaddr(le) + at as u64 - p.p_offset(le));
        panic!(
            "streamed memory differs from the file core at file offset {at:#x}, address {vaddr:#x?}"
        );
    }
    let bt = run_gdb(&exe, &streamed, &["thread apply all bt"]);
    for f in [
        "main_wait",
        "alpha_inner",
        "beta_inner",
        "gamma_inner",
        "delta_inner",
    ] {
        assert!(
            bt.contains(f),
            "{f} missing from the streamed core's backtraces:\n{bt}"
        );
    }
}

/// The Rust target (the demo program): gdb names every thread's function.
#[test]
fn rust_demo_target_backtraces() {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_coresnap-demo-target"));
    let target = Target::spawn(&exe, &[]);
    wait_threads_sleeping(target.pid, &[]);
    let scratch = Scratch::new("rust");
    let core = dump(Dumper::Coresnap, target.pid, scratch.path(), &[]);
    assert_running_untraced(target.pid);
    let out = run_gdb(
        &exe,
        &core,
        &[
            "info threads",
            "thread apply all bt",
            &format!("x/s {}", target.get("greeting")),
        ],
    );
    assert_eq!(parse_info_threads(&out).len(), 4, "{out}");
    for f in [
        "checksum_worker",
        "network_poller",
        "log_flusher",
        "coresnap_demo_target::main",
    ] {
        assert!(out.contains(f), "{f} missing:\n{out}");
    }
    assert!(out.contains("hello from the coresnap demo heap"), "{out}");
}

/// `coresnap demo` runs without arguments, shows the threads from gdb and
/// leaves no demo process behind.
#[test]
fn demo_command_runs() {
    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.arg("demo");
    let result = run_with_timeout(&mut cmd, Duration::from_secs(120), true);
    assert!(result.success(), "{}", result.describe());
    let out = &result.stdout;
    assert!(
        out.contains("open it with:") && out.contains("gdb "),
        "{out}"
    );
    for f in ["checksum_worker", "network_poller", "log_flusher"] {
        assert!(
            out.contains(f),
            "{f} missing from the demo's gdb output:\n{out}"
        );
    }
    let pid: i32 = out
        .split("running as pid ")
        .nth(1)
        .and_then(|s| s.split(':').next()?.trim().parse().ok())
        .expect("demo prints its pid");
    assert!(wait_until(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }));
    if let Some(dir) = out.split("the core stays in ").nth(1) {
        let _ = std::fs::remove_dir_all(dir.trim());
    }
}

fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemAvailable:")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .expect("MemAvailable in /proc/meminfo")
        * 1024
}

/// The largest process that fits beside its clone's worst case (8 GiB when
/// the machine has the memory) is dumped in copy-on-write mode without
/// fallback, and gdb reads its memory pattern from the core.
#[test]
fn largest_target_that_fits_dumps_in_cow_mode_without_fallback() {
    const GIB: u64 = 1 << 30;
    // The target, as much again should it rewrite everything, and 4 GiB
    // left for the rest of the machine.
    let available = mem_available();
    let mut size = 8 * GIB;
    while size > GIB && 2 * size + 4 * GIB > available {
        size /= 2;
    }
    if size < 8 * GIB {
        eprintln!(
            "note: a {} GiB target instead of 8 GiB: MemAvailable is {} MiB",
            size / GIB,
            available >> 20
        );
    }
    let exe = build(Program::CowHostile);
    let scratch = Scratch::new("cow-largest");
    let filled = scratch.path().join("filled");
    let target = Target::spawn(
        &exe,
        &[
            OsStr::new(&(size >> 20).to_string()),
            OsStr::new("idle"),
            filled.as_os_str(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(300), || filled.exists()),
        "the target did not fill {size} bytes within 5 minutes"
    );
    wait_threads_sleeping(target.pid, &[]);
    let prefix = scratch.path().join("core");
    let mut cmd = Command::new(Dumper::Coresnap.program());
    cmd.args(["--mode", "cow", "--no-fallback", "--no-manifest", "-o"])
        .arg(&prefix)
        .arg(target.pid.to_string());
    let result = run_with_timeout(&mut cmd, Duration::from_secs(600), true);
    assert!(result.success(), "{}", result.describe());
    assert!(
        result.stdout.contains("(copy-on-write)") && !result.stdout.contains("stop mode"),
        "{}",
        result.stdout
    );
    assert_running_untraced(target.pid);
    let core = std::path::PathBuf::from(format!("{}.{}", prefix.display(), target.pid));
    assert!(std::fs::metadata(&core).unwrap().len() > size);
    let buf = target.addr("buf");
    let tag = parse_hex(target.get("tag")).unwrap();
    let offsets = [0, size / 2 + 4096, size - 8];
    let mut commands = vec!["info threads".to_string()];
    commands.extend(offsets.iter().map(|o| format!("x/1gx {:#x}", buf + o)));
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let (_, sections) = run_gdb_split(&exe, &core, &commands);
    assert_eq!(
        parse_info_threads(&sections[0]).len(),
        thread_ids(target.pid).len(),
        "{}",
        sections[0]
    );
    for (offset, section) in offsets.iter().zip(&sections[1..]) {
        assert_eq!(
            parse_x_words(section),
            Ok(vec![tag | (offset / 8)]),
            "word at buf+{offset:#x}"
        );
    }
}
