//! The `coresnap` command: argument parsing and rendering only; all the work
//! is in the library.

use clap::{Parser, Subcommand};
use coresnap::{CancelToken, DumpMode, DumpOptions, DumpReport};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod demo;

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
    if let Some(Command::Demo) = cli.command {
        return demo::run(&cancel);
    }
    if !(cli.timeout > 0.0 && cli.timeout.is_finite()) {
        eprintln!("coresnap: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    if cli.output == "-" && cli.pids.len() > 1 {
        eprintln!("coresnap: -o - streams one core to standard output; give a single pid");
        return ExitCode::from(2);
    }
    let options = DumpOptions {
        all: cli.all,
        filter: cli.filter,
        freeze_timeout: Duration::from_secs_f64(cli.timeout),
        overwrite: cli.force,
        cancel: cancel.clone(),
        progress: None,
        mode: match cli.mode {
            ModeArg::Stop => DumpMode::Stop,
            ModeArg::Cow => DumpMode::Cow { fallback: !cli.no_fallback },
        },
    };
    let mut failed = false;
    for &pid in &cli.pids {
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
            coresnap::dump_to_writer(pid, std::io::stdout().lock(), &options)
        } else {
            coresnap::dump_to_path(
                pid,
                &PathBuf::from(format!("{}.{pid}", cli.output)),
                &options,
            )
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        match result {
            Ok(report) => {
                if let Some(why) = &report.cow_fallback {
                    eprintln!("coresnap: pid {pid}: --mode cow is not possible ({why}); dumped in stop mode");
                }
                if !cli.quiet {
                    eprintln!("{}", summary(&report));
                }
                for warning in &report.warnings {
                    eprintln!("coresnap: warning: pid {pid}: {warning}");
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
            Err(error) => {
                eprintln!("coresnap: {error}");
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

pub(crate) fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn summary(report: &DumpReport) -> String {
    let target = report
        .path
        .as_ref()
        .map_or("standard output".to_string(), |p| p.display().to_string());
    let size = match report.disk_usage {
        Some(disk) => format!(
            "{} on disk, {} logical",
            human_bytes(disk),
            human_bytes(report.core_len)
        ),
        None => human_bytes(report.core_len),
    };
    format!(
        "coresnap: pid {}: wrote {target} ({size}), {} threads, {} of {} mappings dumped, target paused {:.1} ms{}{}",
        report.pid,
        report.threads,
        report.mappings_dumped,
        report.mappings,
        report.pause.as_secs_f64() * 1000.0,
        if report.mode == DumpMode::Stop { "" } else { " (copy-on-write)" },
        if report.left_stopped {
            " (left stopped, as it was)"
        } else {
            ""
        }
    )
}
