//! The `coresnap` command: argument parsing and rendering only; all the work
//! is in the library.

use clap::{Parser, Subcommand};
use coresnap::escape::escape;
use coresnap::{Attach, CancelToken, DumpMode, DumpOptions, DumpReport};
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod demo;
mod inspect_cli;

#[derive(Parser)]
#[command(
    name = "coresnap",
    version,
    about = "Write an ELF core file of a running process without killing it (a faster, sparse drop-in for gcore)",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:
  coresnap 1234                 write core.1234 in the current directory
  coresnap -o /var/crash/app 1234 5678
                                write /var/crash/app.1234 and /var/crash/app.5678
  coresnap -a 1234              also dump MADV_DONTDUMP and filtered mappings
  coresnap --filter 0x7f 1234   use coredump_filter bits 0x7f instead of the target's
  coresnap -o - 1234 | ssh host 'cat > core'
                                stream the core to standard output
  coresnap -z 1234              write core.1234.zst (zstd seekable) and core.1234.zst.json
  coresnap unpack core.1234.zst restore core.1234 as a sparse file (same bytes as zstd -d)
  coresnap verify core.1234.zst check the file against core.1234.zst.json
  coresnap --sign KEY 1234      also write core.1234.json.sig, an SSH signature
                                of the manifest that ssh-keygen -Y verify checks
  coresnap demo                 dump a bundled demo process and show it in gdb

Open a core with:  gdb /path/to/program core.1234"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Process ids to dump, one after another.
    #[arg(required = true, value_name = "PID")]
    pids: Vec<i32>,

    /// Write PREFIX.PID for each pid (default: core.PID), or `-` for
    /// standard output (one pid only). Example: -o /tmp/app
    #[arg(
        short = 'o',
        long = "output",
        value_name = "PREFIX",
        default_value = "core"
    )]
    output: String,

    /// Dump every mapping, ignoring coredump_filter and MADV_DONTDUMP (like
    /// gcore -a). Example: coresnap -a 1234
    #[arg(short = 'a', long = "all")]
    all: bool,

    /// coredump_filter bits in hex, instead of /proc/PID/coredump_filter.
    /// Example: --filter 0x33
    #[arg(long = "filter", value_name = "MASK", value_parser = parse_hex_mask)]
    filter: Option<u32>,

    /// Seconds to wait for every thread to stop before giving up and
    /// releasing the target. Example: --timeout 10
    #[arg(long = "timeout", value_name = "SECONDS", default_value = "5")]
    timeout: f64,

    /// Replace an existing core file. Example: coresnap --force 1234
    #[arg(long = "force")]
    force: bool,

    /// No progress bar and no summary line; errors are still printed.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,

    /// `stop`: keep every thread stopped for the whole dump (like gcore).
    /// `cow`: stop the threads only to capture registers and make a
    /// copy-on-write clone, then dump memory from the clone while the
    /// target runs (a pause of milliseconds). Example: --mode cow
    #[arg(long = "mode", value_enum, default_value = "stop")]
    mode: ModeArg,

    /// With --mode cow: fail (without touching the target) instead of
    /// falling back to stop mode when a clone cannot be made safely.
    #[arg(long = "no-fallback", requires = "mode")]
    no_fallback: bool,

    /// With --mode cow: the most memory the copy may cost. Every page the
    /// target writes while its memory is copied from the clone is held
    /// twice; above this (as projected from the target's write rate before
    /// the copy, or as measured during it) the dump is redone in stop mode,
    /// or fails with --no-fallback. Default: half of MemAvailable.
    /// Example: --cow-max-copy 2G
    #[arg(long = "cow-max-copy", value_name = "SIZE", value_parser = parse_size, requires = "mode")]
    cow_max_copy: Option<u64>,

    /// Dump without ptrace, e.g. a process that gdb or strace already
    /// traces: hold it with its cgroup's freezer when it is alone in a
    /// cgroup v2, else with SIGSTOP (undone with SIGCONT; a stop found in
    /// place is kept), and read memory without attaching. Registers are
    /// partial: only the stack pointer, program counter and system call
    /// arguments of each thread. Example: coresnap --no-ptrace 1234
    #[arg(long = "no-ptrace", conflicts_with_all = ["on_signal", "on_exit", "mode"])]
    no_ptrace: bool,

    /// With --no-ptrace: do not hold the target still at all; memory may
    /// change while it is read, and running threads have no registers.
    #[arg(long = "no-freeze", requires = "no_ptrace")]
    no_freeze: bool,

    /// Compress while dumping, into PREFIX.PID.zst in the zstd seekable
    /// format (`zstd -d` gives the core back; `coresnap unpack` gives it back
    /// as a sparse file). LEVEL is the zstd level, default 1 (negative:
    /// faster; up to 19: smaller). Example: -z, --compress=3
    #[arg(
        short = 'z',
        long = "compress",
        value_name = "LEVEL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "1",
        allow_negative_numbers = true
    )]
    compress: Option<i32>,

    /// Threads compressing with -z (default: one per CPU). Example: --jobs 2
    #[arg(long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,

    /// Write no manifest (PREFIX.PID[.zst].json) and skip hashing; the
    /// CORESNAP note is still in the core.
    #[arg(long = "no-manifest")]
    no_manifest: bool,

    /// Write the manifest to PATH instead of next to the core (with -o -,
    /// the only way to get one). Example: -o - --manifest core.json
    #[arg(long = "manifest", value_name = "PATH", conflicts_with = "no_manifest")]
    manifest: Option<PathBuf>,

    /// Also record the flat SHA-256 and BLAKE3 of the core (what sha256sum
    /// prints) when it is larger than 16 MiB: they hash every hole's zeros,
    /// so a huge sparse core takes as long as its logical size. Smaller
    /// cores always get them; the chunked hashes are always there.
    /// Example: --flat-hash
    #[arg(long = "flat-hash", conflicts_with = "no_manifest")]
    flat_hash: bool,

    /// Sign the manifest with this OpenSSH private key (ed25519 or ECDSA,
    /// without a passphrase) into MANIFEST.sig, an SSH signature in
    /// namespace coresnap-manifest@coresnap that `ssh-keygen -Y verify` and
    /// `coresnap verify --allowed-signers` check. Example: --sign /root/.ssh/coresnap
    #[arg(long = "sign", value_name = "KEY", conflicts_with = "no_manifest")]
    sign: Option<PathBuf>,

    /// Stay attached (the target runs at full speed) and dump when one of
    /// these signals is about to end the process: it has no handler for it,
    /// does not ignore it, and its default action terminates. The signal is
    /// then delivered unchanged. A signal the program handles (a JVM's
    /// NullPointerException, Go's recovered panics) goes straight through
    /// and watching goes on; when the program's own handler then ends it
    /// with abort() or a re-raise, that is the signal dumped. Default list:
    /// SEGV,BUS,ABRT,FPE,ILL,SYS,TRAP. Example: --on-signal, --on-signal=SEGV,ABRT
    #[arg(
        long = "on-signal",
        value_name = "LIST",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "SEGV,BUS,ABRT,FPE,ILL,SYS,TRAP",
        value_parser = parse_signal_list
    )]
    on_signal: Option<SignalList>,

    /// With --on-signal: dump at every delivery of a listed signal, even
    /// one the program handles or ignores (then it goes on running).
    /// Example: --on-signal=USR2 --every-signal
    #[arg(long = "every-signal", requires = "on_signal")]
    every_signal: bool,

    /// Stay attached and dump when the process starts to exit (its memory
    /// still whole): by default only for a non-zero exit status or death
    /// by a signal, with `any` for every exit. Catches a Go panic (exit
    /// status 2) or System.exit(1). With --on-signal, whichever comes
    /// first is dumped. Example: --on-exit, --on-exit=any
    #[arg(
        long = "on-exit",
        value_name = "WHICH",
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "failure"
    )]
    on_exit: Option<OnExitArg>,

    /// Dump when the process uses more than PERCENT of a CPU (summed over
    /// its threads) for --for. Example: --cpu-above 90 --for 10s
    #[arg(long = "cpu-above", value_name = "PERCENT")]
    cpu_above: Option<f64>,

    /// Dump when resident memory exceeds SIZE (K, M, G suffixes) for --for.
    /// Example: --rss-above 2G
    #[arg(long = "rss-above", value_name = "SIZE", value_parser = parse_size)]
    rss_above: Option<u64>,

    /// Dump when the process has more than N threads for --for.
    /// Example: --threads-above 500
    #[arg(long = "threads-above", value_name = "N")]
    threads_above: Option<u64>,

    /// How long a condition must hold before a dump. Example: --for 30s
    #[arg(long = "for", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    hold: Duration,

    /// With a condition, --on-signal or --on-exit: dump at most COUNT
    /// times, as PREFIX.PID.1, PREFIX.PID.2..., watching again after each
    /// dump the process survives. Example: -n 3
    #[arg(short = 'n', long = "count", value_name = "COUNT", default_value = "1")]
    count: u32,

    /// With a condition and -n: wait at least this long between dumps.
    /// Example: --interval 1m
    #[arg(long = "interval", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    interval: Duration,
}

/// Signal numbers, parsed from one `SEGV,ABRT` argument.
#[derive(Clone, Debug)]
struct SignalList(Vec<i32>);

fn parse_signal_list(text: &str) -> Result<SignalList, String> {
    text.split(',')
        .map(|name| {
            let name = name.trim().to_ascii_uppercase();
            let full = if name.starts_with("SIG") {
                name.clone()
            } else {
                format!("SIG{name}")
            };
            full.parse::<nix::sys::signal::Signal>()
                .map(|s| s as i32)
                .or_else(|_| {
                    name.parse::<i32>()
                        .map_err(|_| format!("{name:?} is not a signal name or number"))
                })
        })
        .collect::<Result<Vec<i32>, String>>()
        .map(SignalList)
}

/// Splits "2.5G" or "500ms" into its number and its unit.
fn number_and_unit<'a>(text: &'a str, what: &str) -> Result<(f64, &'a str), String> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let value = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a {what}"))?;
    Ok((value, unit))
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (value, unit) = number_and_unit(text, "size")?;
    let scale = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1u64,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{text:?}: unknown unit (use K, M, G or T)")),
    };
    Ok((value * scale as f64) as u64)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (value, unit) = number_and_unit(text, "duration")?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnExitArg {
    /// A non-zero exit status or death by a signal.
    Failure,
    /// Every exit.
    Any,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Stop,
    Cow,
}

#[derive(Subcommand)]
enum Command {
    /// Start a bundled multi-threaded demo program, dump it, show the core in
    /// gdb, and stop the demo. Example: coresnap demo
    Demo,
    /// Restore a compressed core as a sparse core file, byte for byte what
    /// `zstd -d` gives. Example: coresnap unpack core.1234.zst
    Unpack {
        /// The .zst file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Where to write the core (default: FILE without .zst).
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long = "force")]
        force: bool,
        /// Decompression threads (default: one per CPU).
        #[arg(long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        jobs: Option<u32>,
    },
    /// Check a core or a .zst against its manifest: hashes of the file and
    /// of the core bytes, the segments, the CORESNAP note, and with
    /// --allowed-signers the manifest's signature. Prints "verified" and
    /// exits 0 when everything matches, else lists the problems and exits
    /// with 1. Without a signature check it shows consistency, not who made
    /// the dump. Example: coresnap verify core.1234.zst
    Verify {
        /// The core or .zst file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The manifest (default: FILE.json).
        #[arg(long = "manifest", value_name = "PATH")]
        manifest: Option<PathBuf>,
        /// Also require the manifest's signature (MANIFEST.sig) by a key
        /// this file allows for --identity, in ssh-keygen's allowed signers
        /// format. Example: --allowed-signers /etc/coresnap/allowed_signers --identity ops
        #[arg(long = "allowed-signers", value_name = "FILE", requires = "identity")]
        allowed_signers: Option<PathBuf>,
        /// Whose signature is required: a principal of --allowed-signers
        /// (ssh-keygen -Y verify's -I).
        #[arg(long = "identity", value_name = "ID", requires = "allowed_signers")]
        identity: Option<String>,
    },
    /// Describe a core (or its .zst) without a debugger: process, signal,
    /// capture, threads with the function each is in, mappings, notes,
    /// sizes, manifest (checked with --verify); --backtrace unwinds every thread.
    /// Example: coresnap inspect --backtrace core.1234
    Inspect(inspect_cli::InspectArgs),
    /// Copy memory out of a core (or its .zst): every segment to files with
    /// an index (--raw DIR), or one range to standard output (--addr, --len).
    /// Example: coresnap extract --addr 0x7ffd1000 --len 4096 core.1234 > stack.bin
    Extract(inspect_cli::ExtractArgs),
}

/// A dump notices a signal between two chunks of memory and cleans up in
/// milliseconds. If it is stuck in a system call instead (writing to a pipe
/// nobody reads, reading a file on a hung network file system), only exiting
/// gets it out, and exiting is enough: the kernel detaches every thread
/// coresnap traced, leaving a stopped target stopped and the rest running
/// (a --no-ptrace hold is undone just before).
fn exit_if_stuck_after_signal() {
    const GRACE: Duration = Duration::from_secs(2);
    let signals = [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ];
    let Ok(mut signals) = signal_hook::iterator::Signals::new(signals) else {
        return;
    };
    // The kernel hands a process's signal to a thread that does not block
    // it, and a handled signal does not wake a thread in a killable wait
    // (opening a file whose FUSE server is the frozen target): the handler
    // would never run. So every other thread (spawned from this one, they
    // inherit its mask; children get an empty mask from std) blocks these
    // signals, and only the thread below receives them.
    let mut blocked = nix::sys::signal::SigSet::empty();
    for signal in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        blocked.add(signal);
    }
    let _ = blocked.thread_block();
    std::thread::spawn(move || {
        let _ = blocked.thread_unblock();
        if let Some(signal) = signals.forever().next() {
            std::thread::sleep(GRACE);
            // Never leave the target in the middle of an injected system
            // call (--mode cow): its code and registers are borrowed then.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while coresnap::process::inject::injection_in_progress()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            eprintln!(
                "coresnap: still busy {} s after signal {signal}; exiting, which releases the target",
                GRACE.as_secs()
            );
            // The kernel lets go of ptrace stops, but drops a signal a
            // thread was held on: sent again. A SIGSTOP or a cgroup freeze
            // of --no-ptrace is coresnap's to undo.
            coresnap::process::freeze::resend_owed_before_exit();
            coresnap::process::unattached::undo_before_exit();
            coresnap::cancel::remove_partial_outputs();
            std::process::exit(128 + signal);
        }
    });
}

fn parse_hex_mask(text: &str) -> Result<u32, String> {
    let digits = text.trim_start_matches("0x").trim_start_matches("0X");
    u32::from_str_radix(digits, 16).map_err(|e| format!("{text:?} is not a hex mask: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cancel = CancelToken::new();
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        // Registration only fails for forbidden signals, which these are not.
        let _ = signal_hook::flag::register_usize(signal, cancel.as_atomic(), signal as usize);
    }
    exit_if_stuck_after_signal();
    match &cli.command {
        Some(Command::Demo) => return demo::run(&cancel),
        Some(Command::Unpack {
            file,
            output,
            force,
            jobs,
        }) => {
            return unpack(
                file,
                output.as_deref(),
                *force,
                jobs.unwrap_or(0) as usize,
                cli.quiet,
                &cancel,
            );
        }
        Some(Command::Verify {
            file,
            manifest,
            allowed_signers,
            identity,
        }) => {
            let signers = allowed_signers.as_deref().zip(identity.as_deref()).map(
                |(allowed_signers, identity)| coresnap::archive::verify::SignerCheck {
                    allowed_signers,
                    identity,
                },
            );
            return verify(file, manifest.as_deref(), signers, &cancel);
        }
        Some(Command::Inspect(args)) => return inspect_cli::inspect(args),
        Some(Command::Extract(args)) => return inspect_cli::extract(args),
        None => {}
    }
    if !(cli.timeout > 0.0 && cli.timeout.is_finite()) {
        eprintln!("coresnap: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    if cli.output == "-" && cli.pids.len() > 1 {
        eprintln!("coresnap: -o - streams one core to standard output; give a single pid");
        return ExitCode::from(2);
    }
    // A key that cannot sign is refused before any target is touched.
    let sign = match &cli.sign {
        Some(path) => match coresnap::manifest::sign::SigningKey::load(path) {
            Ok(key) => Some(Arc::new(key)),
            Err(e) => {
                eprintln!("coresnap: {}", escape(&e.to_string()));
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let options = DumpOptions {
        all: cli.all,
        filter: cli.filter,
        freeze_timeout: Duration::from_secs_f64(cli.timeout),
        overwrite: cli.force,
        cancel: cancel.clone(),
        progress: None,
        mode: match cli.mode {
            ModeArg::Stop => DumpMode::Stop,
            ModeArg::Cow => DumpMode::Cow {
                fallback: !cli.no_fallback,
            },
        },
        cow_max_copy: cli.cow_max_copy,
        stop_mode_because: None,
        compress: cli.compress.map(|level| coresnap::sink::CompressOptions {
            level,
            jobs: cli.jobs.unwrap_or(0) as usize,
        }),
        // A stream has no "next to it": hash only if the manifest goes somewhere.
        manifest: !cli.no_manifest && (cli.output != "-" || cli.manifest.is_some()),
        manifest_path: cli.manifest.clone(),
        flat_hash: cli.flat_hash,
        sign,
        watch: watch_for(&cli),
        attach: if cli.no_ptrace {
            Attach::Unattached {
                freeze: !cli.no_freeze,
            }
        } else {
            Attach::Ptrace
        },
    };
    let conditions: Vec<coresnap::watch::Condition> = [
        cli.cpu_above.map(coresnap::watch::Condition::CpuAbove),
        cli.rss_above.map(coresnap::watch::Condition::RssAbove),
        cli.threads_above
            .map(coresnap::watch::Condition::ThreadsAbove),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !conditions.is_empty() {
        if cli.output == "-" || options.watch.is_some() || cli.pids.len() > 1 {
            eprintln!(
                "coresnap: conditions watch one pid and write files; drop -o -, --on-signal, --on-exit or the extra pids"
            );
            return ExitCode::from(2);
        }
        return watch_conditions(&cli, cli.pids[0], &conditions, &options);
    }
    if cli.manifest.is_some() && cli.pids.len() > 1 {
        eprintln!("coresnap: --manifest names one file; give a single pid");
        return ExitCode::from(2);
    }
    if options.watch.is_some() && cli.count > 1 && (cli.output == "-" || cli.manifest.is_some()) {
        eprintln!(
            "coresnap: -n writes PREFIX.PID.1, PREFIX.PID.2...; drop -o - and --manifest, or -n"
        );
        return ExitCode::from(2);
    }
    let mut failed = false;
    for &pid in &cli.pids {
        if options.watch.is_some() {
            match watch_triggers(&cli, pid, &options) {
                Ok(()) => {}
                Err(WatchEnd::Failed) => failed = true,
                Err(WatchEnd::Interrupted(signal)) => return ExitCode::from(128 + signal as u8),
            }
            continue;
        }
        let mut options = options.clone();
        let bar = (!cli.quiet && std::io::stderr().is_terminal()).then(progress_bar);
        if let Some(bar) = &bar {
            let bar = bar.clone();
            options.progress = Some(Arc::new(move |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            }));
        }
        let result = if cli.output == "-" {
            // Standard output itself, not Rust's line-buffered handle,
            // which would scan every megabyte of the core for newlines.
            match std::io::stdout().as_fd().try_clone_to_owned() {
                Ok(fd) => coresnap::dump_to_writer(pid, std::fs::File::from(fd), &options),
                Err(source) => Err(coresnap::DumpError::OutputIo {
                    path: PathBuf::from("standard output"),
                    source,
                }),
            }
        } else {
            let suffix = if cli.compress.is_some() { ".zst" } else { "" };
            coresnap::dump_to_path(
                pid,
                &PathBuf::from(format!("{}.{pid}{suffix}", cli.output)),
                &options,
            )
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        match result {
            Ok(report) => print_report(&cli, &report),
            Err(error) => {
                eprintln!("coresnap: {}", escape(&error.to_string()));
                if let Some(signal) = error.interrupted_by() {
                    return ExitCode::from(128 + signal as u8);
                }
                failed = true;
            }
        }
        if let Some(signal) = cancel.signal() {
            return ExitCode::from(128 + signal as u8);
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("valid template"),
    );
    bar
}

pub(crate) use coresnap::inspect::render::human_bytes;

/// What the copy from the clone was expected to cost in memory and did.
fn cow_cost_line(pid: i32, cost: &coresnap::cow::CopyCost) -> String {
    format!(
        "coresnap: pid {pid}: copy-on-write cost: expected {} (target writing {}/s, {} private), measured {}, cap {}",
        human_bytes(cost.expected),
        human_bytes(cost.write_rate),
        human_bytes(cost.private),
        human_bytes(cost.duplicated),
        human_bytes(cost.cap)
    )
}

fn summary(report: &DumpReport) -> String {
    let target = report
        .path
        .as_ref()
        .map_or("standard output".to_string(), |p| p.display().to_string());
    let size = match (&report.compressed, report.disk_usage) {
        (Some(z), _) => format!(
            "{}, {:.3}x of the {} core, {}",
            human_bytes(z.compressed_len),
            z.compressed_len as f64 / report.core_len.max(1) as f64,
            human_bytes(report.core_len),
            count_of(z.frames as usize, "frame")
        ),
        (None, Some(disk)) => format!(
            "{} on disk, {} logical",
            human_bytes(disk),
            human_bytes(report.core_len)
        ),
        (None, None) => human_bytes(report.core_len),
    };
    let size = match &report.manifest_path {
        Some(m) => format!("{size}; manifest {}", m.display()),
        None => size,
    };
    format!(
        "coresnap: pid {}: wrote {target} ({size}), {}, {} of {} dumped, target paused {:.1} ms{}{}",
        report.pid,
        count_of(report.threads, "thread"),
        report.mappings_dumped,
        count_of(report.mappings, "mapping"),
        report.pause.as_secs_f64() * 1000.0,
        match (report.mode, report.freeze) {
            (DumpMode::Cow { .. }, _) => " (copy-on-write)".to_string(),
            (_, "ptrace") => String::new(),
            (_, "none") => " (not frozen: --no-freeze)".to_string(),
            (_, held) => format!(" (without ptrace, held by: {held})"),
        },
        if report.left_stopped {
            " (left stopped, as it was)"
        } else {
            ""
        }
    )
}

/// "1 thread", "2 threads".
fn count_of(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The trigger line, the summary and the warnings of a finished dump.
fn print_report(cli: &Cli, report: &DumpReport) {
    let pid = report.pid;
    if let Some(why) = &report.cow_fallback {
        eprintln!("coresnap: pid {pid}: --mode cow is not possible ({why}); dumped in stop mode");
    }
    if let (Some(cost), false) = (&report.cow_cost, cli.quiet) {
        eprintln!("{}", cow_cost_line(pid, cost));
    }
    match &report.trigger {
        Some(coresnap::watch::Trigger::Signal(signal)) => eprintln!(
            "coresnap: pid {pid}: thread {} was about to receive {} ({}){}; dumped, then delivered it",
            signal.tid,
            coresnap::process::signals::signal_name(signal.signal),
            signal.origin().describe(pid),
            if signal.will_end_process {
                ", which ends it"
            } else {
                ""
            }
        ),
        Some(coresnap::watch::Trigger::Exit(exit)) => eprintln!(
            "coresnap: pid {pid}: thread {} was exiting with {}; dumped, then let it exit",
            exit.tid,
            exit.status.describe()
        ),
        None => {}
    }
    if !cli.quiet {
        eprintln!("{}", escape(&summary(report)));
    }
    for warning in &report.warnings {
        eprintln!("coresnap: warning: pid {pid}: {}", escape(warning));
    }
    for range in &report.unreadable {
        eprintln!(
            "coresnap: warning: pid {pid}: {:#x}-{:#x} could not be read ({}); it reads as zeros in the core",
            range.start,
            range.start + range.len,
            nix::errno::Errno::from_raw(range.errno).desc()
        );
    }
}

/// What `--on-signal`/`--on-exit` waits for, from the options.
fn watch_for(cli: &Cli) -> Option<coresnap::watch::WatchFor> {
    if cli.on_signal.is_none() && cli.on_exit.is_none() {
        return None;
    }
    let signals = cli.on_signal.clone().map(|l| l.0).unwrap_or_default();
    let on_exit = cli.on_exit.map(|which| match which {
        OnExitArg::Failure => coresnap::watch::ExitFilter::Failure,
        OnExitArg::Any => coresnap::watch::ExitFilter::Any,
    });
    let mut what = Vec::new();
    if !signals.is_empty() {
        let names: Vec<String> = signals
            .iter()
            .map(|&s| coresnap::process::signals::signal_name(s))
            .collect();
        what.push(if cli.every_signal {
            format!("at every {} (handled or not)", names.join(", "))
        } else {
            format!(
                "when {} will end it (signals it handles or ignores go through)",
                names.join(", ")
            )
        });
    }
    match on_exit {
        Some(coresnap::watch::ExitFilter::Failure) => {
            what.push("when it exits with a non-zero status or is killed".into())
        }
        Some(coresnap::watch::ExitFilter::Any) => what.push("when it exits".into()),
        None => {}
    }
    let what = what.join(", or ");
    let quiet = cli.quiet;
    Some(coresnap::watch::WatchFor {
        signals,
        every_signal: cli.every_signal,
        on_exit,
        watching: Some(Arc::new(move |pid, threads| {
            if !quiet {
                eprintln!(
                    "coresnap: watching pid {pid} ({}): dumping {what}",
                    count_of(threads, "thread")
                );
            }
        })),
    })
}

enum WatchEnd {
    Failed,
    Interrupted(i32),
}

/// `--on-signal`/`--on-exit` on one pid: up to `-n` dumps, watching again
/// after each one the process survives.
fn watch_triggers(cli: &Cli, pid: i32, options: &DumpOptions) -> Result<(), WatchEnd> {
    let suffix = if cli.compress.is_some() { ".zst" } else { "" };
    for n in 1..=cli.count {
        let path = if cli.count > 1 {
            PathBuf::from(format!("{}.{pid}.{n}{suffix}", cli.output))
        } else {
            PathBuf::from(format!("{}.{pid}{suffix}", cli.output))
        };
        let result = if cli.output == "-" {
            match std::io::stdout().as_fd().try_clone_to_owned() {
                Ok(fd) => coresnap::dump_to_writer(pid, std::fs::File::from(fd), options),
                Err(source) => Err(coresnap::DumpError::OutputIo {
                    path: PathBuf::from("standard output"),
                    source,
                }),
            }
        } else {
            coresnap::dump_to_path(pid, &path, options)
        };
        match result {
            Ok(report) => {
                print_report(cli, &report);
                if report.trigger.as_ref().is_none_or(|t| t.ends_process()) {
                    return Ok(());
                }
            }
            // Dumps were taken, and the process has ended since.
            Err(coresnap::DumpError::ExitedWithoutSignal { .. }) if n > 1 => {
                if !cli.quiet {
                    eprintln!(
                        "coresnap: process {pid} ended after {}",
                        count_of(n as usize - 1, "dump")
                    );
                }
                return Ok(());
            }
            Err(error) => {
                eprintln!("coresnap: {}", escape(&error.to_string()));
                return Err(match error.interrupted_by() {
                    Some(signal) => WatchEnd::Interrupted(signal),
                    None => WatchEnd::Failed,
                });
            }
        }
        if let Some(signal) = options.cancel.signal() {
            return Err(WatchEnd::Interrupted(signal));
        }
    }
    Ok(())
}

fn unpack(
    file: &std::path::Path,
    output: Option<&std::path::Path>,
    force: bool,
    jobs: usize,
    quiet: bool,
    cancel: &CancelToken,
) -> ExitCode {
    let output = output.map_or_else(
        || coresnap::archive::unpack::default_output(file),
        std::path::Path::to_path_buf,
    );
    match coresnap::archive::unpack::unpack(file, &output, force, jobs, cancel) {
        Ok(report) => {
            if !quiet {
                eprintln!(
                    "coresnap: unpacked {} into {} ({} logical, {} on disk) in {:.2} s",
                    file.display(),
                    report.path.display(),
                    human_bytes(report.len),
                    human_bytes(report.disk_usage),
                    report.elapsed.as_secs_f64()
                );
            }
            ExitCode::SUCCESS
        }
        Err(coresnap::archive::ArchiveError::Interrupted { signal }) => {
            ExitCode::from(128 + signal as u8)
        }
        Err(error) => {
            eprintln!("coresnap: {}", escape(&error.to_string()));
            ExitCode::FAILURE
        }
    }
}

fn verify(
    file: &std::path::Path,
    manifest: Option<&std::path::Path>,
    signers: Option<coresnap::archive::verify::SignerCheck>,
    cancel: &CancelToken,
) -> ExitCode {
    let report = coresnap::archive::verify::verify_signed(file, manifest, signers, cancel);
    // The report quotes the manifest (recorded hashes, names): each line
    // is shown escaped.
    for line in report.render().lines() {
        println!("{}", escape(line));
    }
    if let Some(signal) = report.interrupted {
        return ExitCode::from(128 + signal as u8);
    }
    if report.verified() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--cpu-above` and friends: watch from /proc, dump when the conditions
/// held for `--for`, up to `-n` times, `--interval` apart.
fn watch_conditions(
    cli: &Cli,
    pid: i32,
    conditions: &[coresnap::watch::Condition],
    options: &DumpOptions,
) -> ExitCode {
    let on_terminal = std::io::stderr().is_terminal() && !cli.quiet;
    let status = |r: &coresnap::watch::Reading, held: Option<Duration>| {
        if on_terminal {
            let held = held.map_or("not met".to_string(), |h| {
                format!(
                    "held {:.1}s of {:.1}s",
                    h.as_secs_f64(),
                    cli.hold.as_secs_f64()
                )
            });
            eprint!(
                "\r\x1b[Kcoresnap: watching pid {pid}: cpu {:.0}%, rss {}, {} ({held})",
                r.cpu_percent,
                human_bytes(r.rss_bytes),
                count_of(r.threads as usize, "thread")
            );
        }
    };
    let period = Duration::from_millis(250).min(cli.hold.max(Duration::from_millis(10)));
    for n in 1..=cli.count {
        match coresnap::watch::wait_for_conditions(
            pid,
            conditions,
            cli.hold,
            period,
            &options.cancel,
            status,
        ) {
            Ok(Some(_)) => {}
            Ok(None) => {
                eprintln!("\ncoresnap: process {pid} exited while being watched");
                return if n == 1 {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                };
            }
            Err(e) => {
                if on_terminal {
                    eprintln!();
                }
                eprintln!("coresnap: {}", escape(&e.to_string()));
                return match &e {
                    coresnap::watch::WatchError::Interrupted { signal } => {
                        ExitCode::from(128 + *signal as u8)
                    }
                    _ => ExitCode::FAILURE,
                };
            }
        }
        if on_terminal {
            eprintln!();
        }
        let path = PathBuf::from(format!(
            "{}.{pid}.{n}{}",
            cli.output,
            if cli.compress.is_some() { ".zst" } else { "" }
        ));
        match coresnap::dump_to_path(pid, &path, options) {
            Ok(report) => {
                if !cli.quiet {
                    eprintln!("{}", escape(&summary(&report)));
                }
            }
            Err(error) => {
                eprintln!("coresnap: {}", escape(&error.to_string()));
                return match error.interrupted_by() {
                    Some(signal) => ExitCode::from(128 + signal as u8),
                    None => ExitCode::FAILURE,
                };
            }
        }
        if n < cli.count {
            let until = std::time::Instant::now() + cli.interval;
            while std::time::Instant::now() < until {
                if let Some(signal) = options.cancel.signal() {
                    return ExitCode::from(128 + signal as u8);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_signal_lists_parse() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_signal_list("SEGV,sigabrt,10").map(|l| l.0),
            Ok(vec![11, 6, 10])
        );
        assert!(parse_signal_list("NOPE").is_err());
    }
}
