//! `coresnap inspect` and `coresnap extract`: argument parsing and output
//! only; the work is in `coresnap::inspect`.

use clap::Args;
use coresnap::escape::escape;
use coresnap::inspect::{self, InspectOptions, elf::CoreFile, extract, render};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct InspectArgs {
    /// The core, or its seekable .zst.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Unwind every thread (.eh_frame CFI, frame pointers as fallback) and
    /// name each frame, like `eu-stack --core`. Example: --backtrace
    #[arg(short = 'b', long = "backtrace")]
    backtrace: bool,
    /// Print JSON (schema in docs/INSPECT.md) instead of text.
    #[arg(long = "json")]
    json: bool,
    /// Also check the core against its manifest (FILE.json), as `coresnap
    /// verify` does: reads and hashes every stored byte, so it is not done
    /// unless asked. Example: --verify
    #[arg(long = "verify", conflicts_with = "no_verify")]
    verify: bool,
    /// Do not check the manifest (the default; kept for scripts).
    #[arg(long = "no-verify", hide = true)]
    no_verify: bool,
    /// Also read DWARF debug info for names: inlined calls as frames,
    /// file:line, the compiler's function names (as gdb shows them) and
    /// tail-call frames. Costs inflating compressed debug
    /// sections (tens of milliseconds for libc). Example: -b --debug-info
    #[arg(short = 'g', long = "debug-info")]
    debug_info: bool,
    /// The manifest (default: FILE.json).
    #[arg(long = "manifest", value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// Open no file the core names, nor any debug file: only FILE and its
    /// manifest are read (no names, frame pointers only outside the vDSO).
    /// For a core from an untrusted source: without it, what inspect
    /// prints about each mapped file tells whether this machine has a usable
    /// copy of it. Example: --no-local-files
    #[arg(long = "no-local-files", visible_alias = "no-files")]
    no_files: bool,
    /// Where separate debug files are (repeatable; default /usr/lib/debug).
    /// Example: --debug-dir /opt/debug
    #[arg(long = "debug-dir", value_name = "DIR")]
    debug_dir: Vec<PathBuf>,
    /// Read the mapped files under this directory (the core came from
    /// another machine): every path the core names is looked up inside it,
    /// `..` and symbolic links included. Example: --sysroot /srv/sysroots/host1
    #[arg(long = "sysroot", value_name = "DIR")]
    sysroot: Option<PathBuf>,
    /// Refuse a file on disk that cannot be checked because the core holds
    /// no build id for it (GNU or Go), instead of using it with a warning.
    /// Example: -b --require-build-id
    #[arg(long = "require-build-id")]
    require_build_id: bool,
}

pub fn inspect(args: &InspectArgs) -> ExitCode {
    let mut options = InspectOptions {
        backtrace: args.backtrace,
        verify: args.verify,
        manifest_path: args.manifest.clone(),
        ..InspectOptions::default()
    };
    options.files.use_files = !args.no_files;
    options.files.debug_info = args.debug_info;
    if !args.debug_dir.is_empty() {
        options.files.debug_dirs = args.debug_dir.clone();
    }
    options.files.sysroot = args.sysroot.clone();
    options.files.require_build_id = args.require_build_id;
    let report = match inspect::inspect_path(&args.file, &options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coresnap: {}", escape(&e.to_string()));
            return ExitCode::FAILURE;
        }
    };
    let text = if args.json {
        render::json(&report)
    } else {
        render::text(&report)
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if !args.json {
        for w in &report.warnings {
            eprintln!("coresnap: warning: {}", escape(w));
        }
    }
    if report.manifest.verification == "failed" {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["raw", "addr"])))]
pub struct ExtractArgs {
    /// The core, or its seekable .zst.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Write each PT_LOAD's bytes to DIR/START-END.bin and an index
    /// (DIR/index.tsv: address, size, permissions, mapped file).
    /// Example: --raw regions/
    #[arg(long = "raw", value_name = "DIR", conflicts_with_all = ["addr", "len"])]
    raw: Option<PathBuf>,
    /// Write into a DIR that is not empty.
    #[arg(long = "force", requires = "raw")]
    force: bool,
    /// Start address (hex with 0x, or decimal) of bytes to write to standard
    /// output. Example: --addr 0x7ffd1234 --len 64
    #[arg(long = "addr", value_name = "ADDR", value_parser = parse_number, requires = "len")]
    addr: Option<u64>,
    /// Number of bytes (decimal or 0x hex). Example: --len 0x1000
    #[arg(long = "len", value_name = "N", value_parser = parse_number, requires = "addr")]
    len: Option<u64>,
}

fn parse_number(text: &str) -> Result<u64, String> {
    let t = text.trim().replace('_', "");
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a number (decimal, or hex with 0x): {e}"))
}

pub fn extract(args: &ExtractArgs) -> ExitCode {
    use std::io::IsTerminal;
    if args.addr.is_some() && std::io::stdout().is_terminal() {
        // The bytes are the core's: escape sequences among them would be
        // the terminal's commands.
        eprintln!(
            "coresnap: standard output is a terminal; --addr writes raw bytes: redirect it (> region.bin) or pipe it (| xxd)"
        );
        return ExitCode::from(2);
    }
    let opened = match inspect::source::open(&args.file) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("coresnap: {}", escape(&e.to_string()));
            return ExitCode::FAILURE;
        }
    };
    let core = match CoreFile::parse(&*opened.source) {
        Ok(c) => c,
        Err(e) => {
            let message = format!("{}: {e}", args.file.display());
            eprintln!("coresnap: {}", escape(&message));
            return ExitCode::FAILURE;
        }
    };
    for w in &core.warnings {
        eprintln!("coresnap: warning: {}", escape(w));
    }
    let result = if let Some(dir) = &args.raw {
        extract::raw(&core, dir, args.force).map(|files| {
            let written = files.iter().filter(|f| f.name.is_some()).count();
            let bytes: u64 = files.iter().map(|f| f.size).sum();
            let index = dir.join("index.tsv");
            let message = format!(
                "wrote {written} region files ({bytes} bytes, mode 0600) and {}",
                index.display()
            );
            eprintln!("coresnap: {}", escape(&message));
        })
    } else if let (Some(addr), Some(len)) = (args.addr, args.len) {
        extract::range(&core, addr, len, &mut std::io::stdout().lock())
    } else {
        eprintln!("coresnap: give --raw DIR, or --addr ADDR with --len N");
        return ExitCode::from(2);
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{}: {e}", args.file.display());
            eprintln!("coresnap: {}", escape(&message));
            ExitCode::FAILURE
        }
    }
}
