//! The kernel matrix: the dump checks whose outcome depends on the kernel,
//! run inside Debian 12's own kernels (6.1 and 6.12) in QEMU, with the
//! static (musl) coresnap and static builds of the `testdata/` targets.
//!
//! `tests/vm/setup.sh` fetches and builds everything into `target/vmlab`
//! (reused on the next run); each kernel boots under TCG with an initramfs
//! whose `/init` runs `tests/vm/guest.sh`, which dumps the targets into a
//! 9p share. Every core is then judged here, on the host, with gdb against
//! what the target set up: threads and LWPs, the register values `regs.c`
//! loaded, memory patterns, the crash `--on-signal` caught, the pids a
//! container sees. The sparse core, which 6.1 writes through the
//! `/proc/PID/pagemap` fallback (it has no `PAGEMAP_SCAN`), must take no
//! more disk than the same dump on this host.
//!
//! Prints a table (kernel, check, result) and what each kernel offered, also
//! written to `target/kernel-matrix.txt`; fails if a check failed or a kernel
//! did not boot.

mod common;

use common::expected::*;
use common::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The first run downloads about 180 MB and builds coresnap for musl.
const SETUP_TIMEOUT: Duration = Duration::from_secs(1500);
/// One guest: boot (4-8 s under TCG), every check, power off.
const GUEST_TIMEOUT: Duration = Duration::from_secs(420);
const END_MARKER: &str = "CORESNAP-VM-END rc=";
const MUSL_BINARY: &str = "target/x86_64-unknown-linux-musl/release/coresnap";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One line of the setup's `matrix.txt`.
struct Kernel {
    series: String,
    release: String,
    vmlinux: PathBuf,
    initramfs: PathBuf,
}

/// Runs `tests/vm/setup.sh`; the lab directory and the kernels to boot, or
/// `None` after recording why the matrix cannot run here.
fn setup() -> Option<(PathBuf, Vec<Kernel>)> {
    if !nix::unistd::Uid::effective().is_root() {
        skip(&Missing::environment(
            "root (tests/vm/setup.sh installs QEMU and the guests ptrace)",
            "run the tests as root",
        ));
        return None;
    }
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("tests/vm/setup.sh"));
    let started = Instant::now();
    let out = run_with_timeout(&mut cmd, SETUP_TIMEOUT, true);
    if !out.success() {
        skip(&Missing::environment(
            format!(
                "the kernel matrix's setup, which failed:\n{}",
                out.stdout.trim_end()
            ),
            "tests/vm/setup.sh needs root, deb.debian.org (QEMU, kernels, busybox) and \
             static.rust-lang.org (the musl target); run it by hand to see each step",
        ));
        return None;
    }
    eprintln!(
        "kernel matrix setup: {:.1} s\n{}",
        started.elapsed().as_secs_f64(),
        out.stdout.trim_end()
    );
    let lab = PathBuf::from(
        std::env::var_os("VMLAB_DIR").unwrap_or_else(|| repo().join("target/vmlab").into()),
    );
    let matrix = std::fs::read_to_string(lab.join("matrix.txt")).expect("setup wrote matrix.txt");
    let kernels = matrix
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 4, "bad matrix.txt line {line:?}");
            Kernel {
                series: f[0].to_string(),
                release: f[1].to_string(),
                vmlinux: f[2].into(),
                initramfs: f[3].into(),
            }
        })
        .collect();
    Some((lab, kernels))
}

// ---------------------------------------------------------------------------
// Booting a guest
// ---------------------------------------------------------------------------

/// QEMU, killed and reaped on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one guest run gave.
struct GuestRun {
    /// The guest script's exit status, if the end marker came.
    rc: Option<i32>,
    seconds: f64,
    serial: String,
}

/// Boots `kernel` with the 9p share `out` and waits (up to
/// [`GUEST_TIMEOUT`]) for the end marker and QEMU's exit.
fn boot(kernel: &Kernel, out: &Path) -> GuestRun {
    let (reader, writer) = std::io::pipe().expect("pipe");
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-monitor", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(&kernel.initramfs)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 mitigations=off tsc=reliable no_timer_check \
             i8042.noaux i8042.nokbd i8042.nopnp",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=out,security_model=none,id=out",
            out.display()
        ))
        .stdin(Stdio::null())
        .stdout(writer.try_clone().expect("dup pipe"))
        .stderr(writer)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
    let mut qemu = Qemu(child);
    let started = Instant::now();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = started + GUEST_TIMEOUT;
    let mut serial = String::new();
    let mut rc = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                if let Some(rest) = line.strip_prefix(END_MARKER) {
                    rc = rest.split_whitespace().next().and_then(|v| v.parse().ok());
                }
                serial.push_str(line);
                serial.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if matches!(qemu.0.try_wait(), Ok(Some(_))) && rc.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = writeln!(
                serial,
                "[host] no end of the guest within {GUEST_TIMEOUT:?}"
            );
            break;
        }
    }
    // `poweroff -f` ends QEMU; a guest that hangs afterwards is killed here.
    if !wait_until(Duration::from_secs(20), || {
        matches!(qemu.0.try_wait(), Ok(Some(_)))
    }) {
        let _ = writeln!(
            serial,
            "[host] QEMU did not exit after the guest ended; killed"
        );
    }
    drop(qemu);
    GuestRun {
        rc,
        seconds: started.elapsed().as_secs_f64(),
        serial,
    }
}

// ---------------------------------------------------------------------------
// What the guest left for one check
// ---------------------------------------------------------------------------

fn key_values(text: &str, separator: char) -> BTreeMap<String, String> {
    text.split(separator)
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A check's directory: the `status` facts, the target's ready line, the
/// core, and the static executable on the host.
struct Outcome {
    dir: PathBuf,
    status: BTreeMap<String, String>,
    ready: BTreeMap<String, String>,
    exe: PathBuf,
}

impl Outcome {
    fn read(out: &Path, lab: &Path, check: &str) -> Result<Outcome, String> {
        let dir = out.join(check);
        let status = std::fs::read_to_string(dir.join("status"))
            .map_err(|e| format!("the guest left no {check}/status: {e}"))?;
        let status = key_values(&status, '\n');
        if let Some(e) = status.get("error") {
            return Err(format!("in the guest: {e}"));
        }
        let ready = std::fs::read_to_string(dir.join("ready"))
            .map_err(|e| format!("no ready line from the target: {e}"))?;
        let ready = key_values(&ready, ' ');
        let exe = lab.join("bin").join(&status["exe"]);
        Ok(Outcome {
            dir,
            status,
            ready,
            exe,
        })
    }

    fn status(&self, key: &str) -> Result<&str, String> {
        self.status
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("the guest recorded no {key}: {:?}", self.status))
    }

    fn ready_num(&self, key: &str) -> u64 {
        let v = &self.ready[key];
        parse_hex(v)
            .or_else(|| v.parse().ok())
            .unwrap_or_else(|| panic!("{key}={v} in the ready line is not a number"))
    }

    /// Host tids the guest saw before the dump.
    fn tids(&self) -> Result<Vec<i32>, String> {
        Ok(self
            .status("tids")?
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect())
    }

    /// The core, after checking that coresnap succeeded and released the
    /// target, and that goblin and object read the core alike.
    fn core(&self, expect_running_after: bool) -> Result<PathBuf, String> {
        let log = std::fs::read_to_string(self.dir.join("coresnap.out")).unwrap_or_default();
        if self.status("coresnap_rc")? != "0" {
            return Err(format!(
                "coresnap exited with {}: {}",
                self.status("coresnap_rc")?,
                log.trim()
            ));
        }
        if expect_running_after && self.status("after")? != "running" {
            return Err(format!(
                "the target was left stopped or traced ({})",
                self.status("after")?
            ));
        }
        let core = self.dir.join(self.status("core")?);
        if !core.exists() {
            return Err(format!("{} is missing", core.display()));
        }
        elf_readers::assert_readers_agree(&core);
        Ok(core)
    }

    fn manifest_capture(&self, core: &Path) -> serde_json::Value {
        let text = std::fs::read_to_string(format!("{}.json", core.display())).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["capture"].clone()
    }
}

/// gdb's LWPs in `core`, sorted.
fn gdb_lwps(exe: &Path, core: &Path) -> Vec<i32> {
    let out = run_gdb(exe, core, &["info threads"]);
    let mut lwps: Vec<i32> = parse_info_threads(&out).iter().map(|r| r.lwp).collect();
    lwps.sort_unstable();
    lwps
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

// ---------------------------------------------------------------------------
// The checks (each returns what it saw, or why it failed)
// ---------------------------------------------------------------------------

/// The threads target's tids by ready-line key, as the target numbers them.
fn thread_keys(o: &Outcome) -> Vec<(&'static str, i32)> {
    THREAD_CHAINS
        .iter()
        .map(|(key, _)| (*key, o.ready_num(key) as i32))
        .collect()
}

/// Every thread of `threads.c` in gdb with its LWP `expected` and its own
/// call chain.
fn check_thread_chains(o: &Outcome, core: &Path) -> Result<String, String> {
    let keys = thread_keys(o);
    let mut expected: Vec<i32> = keys.iter().map(|(_, t)| *t).collect();
    expected.sort_unstable();
    let lwps = gdb_lwps(&o.exe, core);
    ensure(lwps == expected, || {
        format!("gdb lists LWPs {lwps:?}, the target has {expected:?}")
    })?;
    let bt = run_gdb(&o.exe, core, &["thread apply all bt"]);
    for block in parse_thread_apply(&bt) {
        let (key, _) = keys
            .iter()
            .find(|(_, t)| *t == block.lwp)
            .ok_or_else(|| format!("unknown LWP {} in\n{bt}", block.lwp))?;
        let chain = THREAD_CHAINS.iter().find(|(k, _)| k == key).unwrap().1;
        ensure(has_chain(&bt_functions(&block.body), chain), || {
            format!("thread {key} lacks {chain:?}:\n{}", block.body)
        })?;
    }
    Ok(format!("LWPs {lwps:?}, every call chain"))
}

fn check_threads(o: &Outcome) -> Result<String, String> {
    let core = o.core(true)?;
    let tids = o.tids()?;
    let keys: Vec<i32> = thread_keys(o).iter().map(|(_, t)| *t).collect();
    ensure(tids.len() == keys.len(), || {
        format!("/proc listed {tids:?}, the ready line {keys:?}")
    })?;
    check_thread_chains(o, &core)
}

fn vector_lanes(reg: u64, lanes: u64) -> Vec<u64> {
    (0..lanes).map(|j| regs_vector_lane(reg, j)).collect()
}

/// The spinner's registers in the core against what `regs.c` loaded: every
/// general register, rip, rsp, fs_base, the x87 control word, MXCSR, the
/// vector registers the guest CPU has (xmm/ymm; zmm and k with AVX-512), and
/// PKRU where the guest enabled PKU.
fn check_regs(o: &Outcome) -> Result<String, String> {
    let core = o.core(true)?;
    let spinner = o.ready_num("spinner") as i32;
    let flag = |key: &str| o.ready.get(key).is_some_and(|v| v == "1");
    let (avx, avx512, pku) = (flag("avx"), flag("avx512"), flag("pku"));
    let mut expected: Vec<(String, Vec<u64>)> = Vec::new();
    for reg in 0..16 {
        expected.push((format!("$xmm{reg}.v2_int64"), vector_lanes(reg, 2)));
        if avx {
            expected.push((format!("$ymm{reg}.v4_int64"), vector_lanes(reg, 4)));
        }
    }
    if avx512 {
        for reg in 0..32 {
            expected.push((format!("$zmm{reg}.v8_int64"), vector_lanes(reg, 8)));
        }
        let bw = flag("avx512bw");
        for n in 0..8u64 {
            let full = 0x6b6b_0000_0000_0000 | (n << 8) | n;
            expected.push((
                format!("$k{n}"),
                vec![if bw { full } else { full & 0xffff }],
            ));
        }
    }
    if pku {
        expected.push(("$pkru".into(), vec![REGS_PKRU]));
    }
    // `thread N` takes gdb's number for the thread: find the spinner's.
    let threads = run_gdb(&o.exe, &core, &["info threads"]);
    let number = parse_info_threads(&threads)
        .iter()
        .find(|r| r.lwp == spinner)
        .map(|r| r.num)
        .ok_or_else(|| format!("no LWP {spinner} in\n{threads}"))?;
    let gprs: Vec<&str> = REGS_GPR.iter().map(|(n, _)| *n).collect();
    let mut cmds = vec![
        format!("thread {number}"),
        format!("info registers {} rsp rip fs_base", gprs.join(" ")),
        "info registers fctrl mxcsr st0 st1 st2 st3 st4 st5 st6 st7".to_string(),
    ];
    cmds.extend(expected.iter().map(|(expr, _)| format!("p/x {expr}")));
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let (preamble, out) = run_gdb_split(&o.exe, &core, &cmds);
    ensure(!preamble.contains(".reg-xstate"), || {
        format!("gdb complains about the XSAVE note:\n{preamble}")
    })?;
    let mut gpr_expected: Vec<(&str, u64)> = REGS_GPR.to_vec();
    gpr_expected.extend([
        ("rsp", o.ready_num("spinner_rsp")),
        ("rip", o.ready_num("spin_rip")),
        ("fs_base", o.ready_num("spinner_fs")),
    ]);
    let shown = parse_registers(&format!("{}\n{}", out[1], out[2]));
    for (name, value) in gpr_expected
        .iter()
        .copied()
        .chain([("fctrl", REGS_FCTRL), ("mxcsr", REGS_MXCSR)])
    {
        let got = shown.get(name).and_then(|v| parse_hex(v));
        ensure(got == Some(value), || {
            format!("{name} is {got:x?}, regs.c loaded {value:#x}")
        })?;
    }
    // `info registers stN` ends in "(raw 0x<20 hex digits>)": sign and
    // exponent 0x4000 + N, significand 0xd00d000000000000 | N.
    for (n, line) in out[2].lines().filter(|l| l.starts_with("st")).enumerate() {
        let raw = line
            .split_once("(raw 0x")
            .and_then(|(_, r)| u128::from_str_radix(r.trim_end_matches(')'), 16).ok());
        let n = n as u128;
        let want = ((0x4000 + n) << 64) | 0xd00d_0000_0000_0000 | n;
        ensure(raw == Some(want), || {
            format!("st{n} is {raw:x?}, regs.c loaded {want:#x}: {line}")
        })?;
    }
    ensure(
        out[2].lines().filter(|l| l.starts_with("st")).count() == 8,
        || format!("gdb showed no st0-7:\n{}", out[2]),
    )?;
    for ((expr, lanes), text) in expected.iter().zip(&out[3..]) {
        let got = parse_print_vectors(text).into_iter().next();
        ensure(got.as_ref() == Some(lanes), || {
            format!("{expr} is {got:x?}, regs.c loaded {lanes:x?}")
        })?;
    }
    let mut vectors = vec![if avx { "ymm0-15" } else { "xmm0-15" }];
    if avx512 {
        vectors.push("zmm0-31 k0-7");
    }
    if pku {
        vectors.push("pkru");
    }
    Ok(format!(
        "15 GPRs, rip, rsp, fs_base, st0-7, fctrl, mxcsr, {}",
        vectors.join(" ")
    ))
}

/// The first and last two words of every region hold their pattern; the
/// MADV_DONTDUMP region is absent.
fn check_memory(o: &Outcome) -> Result<String, String> {
    let core = o.core(true)?;
    let mut probes = Vec::new();
    for (key, tag) in MEMORY_REGIONS {
        let addr = o.ready_num(key);
        let len = o.ready_num(&format!("{key}_len"));
        probes.push((*key, *tag, addr, 0));
        probes.push((*key, *tag, addr + len - 16, len / 8 - 2));
    }
    let cmds: Vec<String> = probes
        .iter()
        .map(|(_, _, addr, _)| format!("x/2gx {addr:#x}"))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let (_, out) = run_gdb_split(&o.exe, &core, &cmds);
    for ((key, tag, addr, index), text) in probes.iter().zip(&out) {
        let got = parse_x_words(text);
        if *key == "dontdump" {
            ensure(got.is_err(), || {
                format!("the MADV_DONTDUMP region at {addr:#x} is in the core: {got:x?}")
            })?;
            continue;
        }
        let want = vec![(tag << 48) | index, (tag << 48) | (index + 1)];
        ensure(got.as_ref() == Ok(&want), || {
            format!("{key} at {addr:#x} shows {got:x?}, the target wrote {want:x?}")
        })?;
    }
    ensure(gdb_lwps(&o.exe, &core) == o.tids()?, || {
        "gdb's threads differ from the target's".to_string()
    })?;
    Ok("6 regions' patterns, MADV_DONTDUMP absent".into())
}

fn check_cow(o: &Outcome) -> Result<String, String> {
    let detail = check_memory(o)?;
    let log = std::fs::read_to_string(o.dir.join("coresnap.out")).unwrap_or_default();
    ensure(log.contains("copy-on-write"), || {
        format!("coresnap did not say it copied from a clone: {log}")
    })?;
    Ok(format!("{detail}, from the clone"))
}

/// Disk usage of `path` in bytes (allocated blocks).
fn disk_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The same sparse target dumped on this host by the same binary: its core's
/// disk usage, the reference for the guests'.
fn host_sparse_reference(lab: &Path) -> u64 {
    let target = Target::spawn(&lab.join("bin/sparse"), &[]);
    wait_threads_sleeping(target.pid, &[]);
    let scratch = Scratch::new("matrix-sparse-host");
    let prefix = scratch.path().join("host");
    let mut cmd = Command::new(repo().join(MUSL_BINARY));
    cmd.arg("-o").arg(&prefix).arg(target.pid.to_string());
    let out = run_with_timeout(&mut cmd, DUMP_TIMEOUT, true);
    assert!(
        out.success(),
        "dumping the sparse target on the host:\n{}",
        out.describe()
    );
    disk_bytes(&scratch.path().join(format!("host.{}", target.pid)))
}

fn check_sparse(o: &Outcome, host_bytes: u64) -> Result<String, String> {
    let core = o.core(true)?;
    let reserve = o.ready_num("reserve");
    let stride = o.ready_num("stride");
    let dense = o.ready_num("dense");
    let cmds = [
        format!("x/1gx {reserve:#x}"),
        format!("x/1gx {:#x}", reserve + 100 * stride),
        format!("x/2gx {:#x}", reserve + 4096),
        format!("x/1bx {:#x}", dense + 3),
    ];
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let (_, out) = run_gdb_split(&o.exe, &core, &cmds);
    let first = parse_x_words(&out[0]);
    ensure(first == Ok(vec![0x5a5a_0000_0000_0000]), || {
        format!("first touched page: {first:x?}")
    })?;
    let hundredth = parse_x_words(&out[1]);
    let want = 0x5a5a_0000_0000_0000 | (100 * stride / 4096);
    ensure(hundredth == Ok(vec![want]), || {
        format!("100th touched page: {hundredth:x?}, want {want:#x}")
    })?;
    let untouched = parse_x_words(&out[2]);
    ensure(untouched == Ok(vec![0, 0]), || {
        format!("an untouched page reads {untouched:x?}, not zeros")
    })?;
    ensure(out[3].contains(":\t0x15"), || {
        format!("dense byte 3 is not 3*7: {}", out[3])
    })?;
    let guest_bytes = disk_bytes(&core);
    let logical = std::fs::metadata(&core).unwrap().len();
    // The same pages are dumped either way; a few pages of slack for the
    // guest's own libc and stack layout.
    ensure(guest_bytes <= host_bytes + host_bytes / 20, || {
        format!(
            "the core takes {guest_bytes} bytes on disk, the host's {host_bytes}: the \
             never-touched pages were written"
        )
    })?;
    // The manifest the guest wrote (default options, hashes read back from
    // 9p, which reports no holes) matches the core on this host.
    let mut verify = Command::new(repo().join(MUSL_BINARY));
    verify.arg("verify").arg(&core);
    let verified = run_with_timeout(&mut verify, DUMP_TIMEOUT, true);
    ensure(verified.success(), || {
        format!(
            "coresnap verify of the guest's core:\n{}",
            verified.describe()
        )
    })?;
    Ok(format!(
        "{:.1} MiB on disk of {:.2} GiB (host: {:.1} MiB), manifest verified",
        guest_bytes as f64 / 1048576.0,
        logical as f64 / 1073741824.0,
        host_bytes as f64 / 1048576.0
    ))
}

fn check_on_signal(o: &Outcome) -> Result<String, String> {
    // 128 + SIGSEGV: the signal went through after the dump.
    ensure(o.status("target_status")? == "139", || {
        format!(
            "the target ended with {}, not by SIGSEGV",
            o.status("target_status").unwrap_or("?")
        )
    })?;
    let core = o.core(false)?;
    let worker = o.ready_num("worker") as i32;
    let out = run_gdb(
        &o.exe,
        &core,
        &["bt", "p $_siginfo.si_signo", "info threads"],
    );
    ensure(
        out.contains("Program terminated with signal SIGSEGV"),
        || format!("no SIGSEGV in\n{out}"),
    )?;
    let first_frame = out.lines().find(|l| l.starts_with("#0")).unwrap_or("");
    ensure(first_frame.contains("crash_here"), || {
        format!("bt does not start in crash_here:\n{out}")
    })?;
    ensure(out.contains("= 11"), || {
        format!("si_signo is not 11:\n{out}")
    })?;
    let lwps = gdb_lwps(&o.exe, &core);
    ensure(lwps == o.tids()? && lwps.contains(&worker), || {
        format!("gdb lists {lwps:?}, the target had {:?}", o.tids())
    })?;
    Ok("SIGSEGV in crash_here, both threads, signal delivered after".into())
}

/// A `--no-ptrace` core of `busy sleep=2 mem=8`: held the expected way, the
/// registers marked partial, every thread in pause() under its caller, the
/// memory pattern there.
fn check_no_ptrace(o: &Outcome, held_by: &str) -> Result<String, String> {
    let core = o.core(true)?;
    let capture = o.manifest_capture(&core);
    ensure(capture["freeze"] == held_by, || {
        format!("held by {}, not {held_by}", capture["freeze"])
    })?;
    ensure(capture["registers"] == "partial", || {
        format!("registers {}", capture["registers"])
    })?;
    let lwps = gdb_lwps(&o.exe, &core);
    ensure(lwps == o.tids()?, || {
        format!("gdb lists {lwps:?}, the target had {:?}", o.tids())
    })?;
    let mem = o.ready_num("mem");
    let out = run_gdb(
        &o.exe,
        &core,
        &[
            "thread apply all bt 3",
            &format!("x/gx {:#x}", mem + 5 * 4096),
        ],
    );
    for block in parse_thread_apply(&out) {
        let caller = if block.lwp == o.ready_num("pid") as i32 {
            "main"
        } else {
            "sleeper"
        };
        let funcs = bt_functions(&block.body);
        ensure(
            funcs.iter().any(|f| f.contains("pause")) && funcs.iter().any(|f| f == caller),
            || {
                format!(
                    "LWP {} is not in pause() under {caller}:\n{}",
                    block.lwp, block.body
                )
            },
        )?;
    }
    ensure(out.contains(":\t0xb5b5000000000005"), || {
        format!("memory pattern missing:\n{out}")
    })?;
    Ok(format!(
        "held by {held_by}, {} threads in pause(), memory",
        lwps.len()
    ))
}

fn check_no_ptrace_cgroup(o: &Outcome) -> Result<String, String> {
    let detail = check_no_ptrace(o, "cgroup-freezer")?;
    let events = o.status("cgroup_events")?;
    ensure(events.contains("frozen 0"), || {
        format!("the cgroup was left frozen: {events}")
    })?;
    Ok(format!("{detail}, thawed"))
}

/// The container's target: gdb shows the tids it has inside its pid
/// namespace (from its own ready line), not the host's.
fn check_container(o: &Outcome) -> Result<String, String> {
    let core = o.core(true)?;
    let nspid: Vec<&str> = o.status("nspid")?.split_whitespace().collect();
    ensure(nspid.len() == 2 && nspid[1] == "1", || {
        format!("the target is not pid 1 of a nested pid namespace: NSpid {nspid:?}")
    })?;
    let detail = check_thread_chains(o, &core)?;
    let host_tids = o.tids()?;
    let inside: Vec<i32> = thread_keys(o).iter().map(|(_, t)| *t).collect();
    ensure(!inside.iter().any(|t| host_tids.contains(t)), || {
        format!("inside tids {inside:?} overlap the host's {host_tids:?}")
    })?;
    Ok(format!("{detail} (host tids {host_tids:?})"))
}

/// The kernel's own core of the crasher: gdb reads it, and which notes it
/// has is reported (NT_X86_XSAVE_LAYOUT is new in some kernel).
fn check_kernel_core(o: &Outcome, facts: &mut Facts) -> Result<String, String> {
    ensure(o.status("target_status")? == "139", || {
        format!(
            "the crasher ended with {}",
            o.status("target_status").unwrap_or("?")
        )
    })?;
    let core = o.dir.join(o.status("core")?);
    let bytes = std::fs::read(&core).map_err(|e| format!("{}: {e}", core.display()))?;
    let reading = elf_readers::read_with_object(&bytes)?;
    let has = |n_type: u32| {
        reading
            .notes
            .iter()
            .any(|n| n.name == b"LINUX" && n.n_type == n_type)
    };
    facts.xsave_layout = Some(has(0x205));
    let xstate = reading
        .notes
        .iter()
        .find(|n| n.name == b"LINUX" && n.n_type == 0x202)
        .map(|n| n.desc.len());
    facts.xstate_bytes = xstate;
    let lwps = gdb_lwps(&o.exe, &core);
    ensure(lwps.len() == 2, || {
        format!("gdb lists {lwps:?} in the kernel's core")
    })?;
    Ok(format!(
        "NT_X86_XSAVE_LAYOUT {}, NT_X86_XSTATE {} bytes",
        if has(0x205) { "present" } else { "absent" },
        xstate.map_or("absent".into(), |n| n.to_string())
    ))
}

// ---------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Facts {
    release: String,
    pagemap_scan: String,
    cgroup_freezer: String,
    xsave_layout: Option<bool>,
    xstate_bytes: Option<usize>,
    guest_seconds: f64,
}

struct Row {
    kernel: String,
    check: &'static str,
    result: Result<String, String>,
}

/// Runs `check`, turning a panic (a gdb timeout, say) into a failure.
fn guarded(check: impl FnOnce() -> Result<String, String>) -> Result<String, String> {
    match catch_unwind(AssertUnwindSafe(check)) {
        Ok(r) => r,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())),
    }
}

fn run_kernel(lab: &Path, kernel: &Kernel, host_sparse: u64, rows: &mut Vec<Row>) -> Facts {
    let scratch = Scratch::new(&format!("matrix-{}", kernel.series));
    let out = scratch.path();
    let name = format!("{} ({})", kernel.series, kernel.release);
    let run = boot(kernel, out);
    std::fs::write(out.join("serial.log"), &run.serial).unwrap();
    let mut facts = Facts {
        guest_seconds: run.seconds,
        ..Facts::default()
    };
    let booted = run.rc.is_some();
    rows.push(Row {
        kernel: name.clone(),
        check: "boot",
        result: match run.rc {
            Some(0) => Ok(format!("guest ran {:.1} s", run.seconds)),
            Some(rc) => Err(format!("the guest script exited with {rc}")),
            None => Err(format!("no end marker; serial console:\n{}", run.serial)),
        },
    });
    if !booted {
        return facts;
    }
    let guest_facts = key_values(
        &std::fs::read_to_string(out.join("facts")).unwrap_or_default(),
        '\n',
    );
    let fact = |k: &str| guest_facts.get(k).cloned().unwrap_or_else(|| "?".into());
    facts.release = fact("kernel");
    facts.pagemap_scan = fact("pagemap_scan");
    facts.cgroup_freezer = fact("cgroup_freezer");
    let built = sha256_hex(&repo().join(MUSL_BINARY));
    rows.push(Row {
        kernel: name.clone(),
        check: "static coresnap",
        result: if fact("coresnap_sha256") == built {
            Ok(format!("{MUSL_BINARY} (sha256 {}...)", &built[..12]))
        } else {
            Err(format!(
                "the guest ran a coresnap with sha256 {}, {MUSL_BINARY} has {built}",
                fact("coresnap_sha256")
            ))
        },
    });
    type Check<'a> = Box<dyn FnOnce(&Outcome, &mut Facts) -> Result<String, String> + 'a>;
    let checks: Vec<(&'static str, Check)> = vec![
        ("threads", Box::new(|o, _| check_threads(o))),
        ("registers", Box::new(|o, _| check_regs(o))),
        ("memory", Box::new(|o, _| check_memory(o))),
        ("cow", Box::new(|o, _| check_cow(o))),
        ("sparse", Box::new(move |o, _| check_sparse(o, host_sparse))),
        ("on-signal", Box::new(|o, _| check_on_signal(o))),
        (
            "no-ptrace-sigstop",
            Box::new(|o, _| check_no_ptrace(o, "sigstop")),
        ),
        (
            "no-ptrace-cgroup",
            Box::new(|o, _| check_no_ptrace_cgroup(o)),
        ),
        ("container", Box::new(|o, _| check_container(o))),
        ("kernel-core", Box::new(check_kernel_core)),
    ];
    for (check, run_check) in checks {
        let dir = match check {
            "registers" => "regs",
            other => other,
        };
        let result = guarded(|| {
            let outcome = Outcome::read(out, lab, dir)?;
            run_check(&outcome, &mut facts)
        });
        rows.push(Row {
            kernel: name.clone(),
            check,
            result,
        });
    }
    facts
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest as _;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This host's answers to the same questions (PAGEMAP_SCAN, freezer).
fn host_facts(lab: &Path) -> (String, String, String) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let probe = run_with_timeout(
        &mut Command::new(lab.join("bin/pagemap-scan-probe")),
        Duration::from_secs(10),
        true,
    );
    let scan = key_values(&probe.stdout, '\n')
        .get("pagemap_scan")
        .cloned()
        .unwrap_or_else(|| "?".into());
    // As in the guest: a fresh cgroup v2 directory has cgroup.freeze when
    // the kernel has the v2 freezer (the root cgroup never has it).
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let (fields, fs) = line.split_once(" - ")?;
            let mount = fields.split_whitespace().nth(4)?;
            (fs.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        });
    let freezer = cgroup2.is_some_and(|mount| {
        let probe = mount.join(format!("coresnap-matrix-probe-{}", std::process::id()));
        let has = std::fs::create_dir(&probe).is_ok() && probe.join("cgroup.freeze").exists();
        let _ = std::fs::remove_dir(&probe);
        has
    });
    (release, scan, if freezer { "yes" } else { "no" }.into())
}

#[test]
fn dump_checks_pass_on_debian_12_kernels_6_1_and_6_12() {
    let Some((lab, kernels)) = setup() else {
        return;
    };
    let started = Instant::now();
    let host_sparse = host_sparse_reference(&lab);
    let mut rows = Vec::new();
    let mut all_facts = Vec::new();
    for kernel in &kernels {
        let facts = run_kernel(&lab, kernel, host_sparse, &mut rows);
        all_facts.push((kernel.series.clone(), facts));
    }

    let mut table = String::new();
    let _ = writeln!(
        table,
        "kernel matrix ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        table,
        "| kernel | check | result | detail |\n|---|---|---|---|"
    );
    for row in &rows {
        let (verdict, detail) = match &row.result {
            Ok(d) => ("pass", d.clone()),
            Err(e) => ("FAIL", e.replace('\n', " / ")),
        };
        let _ = writeln!(
            table,
            "| {} | {} | {verdict} | {detail} |",
            row.kernel, row.check
        );
    }
    let (host_release, host_scan, host_freezer) = host_facts(&lab);
    let _ = writeln!(
        table,
        "\n| kernel | PAGEMAP_SCAN | cgroup v2 freezer | kernel core: NT_X86_XSAVE_LAYOUT | \
         kernel core: NT_X86_XSTATE bytes | guest run |\n|---|---|---|---|---|---|"
    );
    for (series, f) in &all_facts {
        let _ = writeln!(
            table,
            "| {series} ({}) | {} | {} | {} | {} | {:.1} s |",
            f.release,
            f.pagemap_scan,
            f.cgroup_freezer,
            f.xsave_layout
                .map_or("?", |p| if p { "present" } else { "absent" }),
            f.xstate_bytes.map_or("?".into(), |n| n.to_string()),
            f.guest_seconds
        );
    }
    let _ = writeln!(
        table,
        "| host ({host_release}) | {host_scan} | {host_freezer} | not dumped here | | |"
    );
    let _ = writeln!(
        table,
        "sparse target dumped on the host: {:.1} MiB on disk",
        host_sparse as f64 / 1048576.0
    );
    // Straight to the file descriptor: libtest captures print!, and the
    // table is wanted in every run's log.
    let _ = std::io::stderr().write_all(table.as_bytes());
    let _ = std::fs::write(repo().join("target/kernel-matrix.txt"), &table);

    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.result
                .as_ref()
                .err()
                .map(|e| format!("{} {}: {e}", r.kernel, r.check))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
