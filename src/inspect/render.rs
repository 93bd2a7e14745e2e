//! Rendering a [`Report`]: text for people, JSON for scripts.

use super::model::*;
use std::fmt::Write;

/// Appends one line to the text: formatted, then every control character
/// in it escaped ([`crate::escape::escape`]), so that no name from the
/// core can end the line early or reach the terminal; then the newline.
/// Every line of [`text`] is written through it.
macro_rules! push_line {
    ($out:expr, $($arg:tt)*) => {{
        let line = format!($($arg)*);
        $out.push_str(&crate::escape::escape(&line));
        $out.push('\n');
    }};
}

/// The JSON of `--json` (pretty-printed, one trailing newline).
pub fn json(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).unwrap_or_else(|e| {
        format!("{{\"schema\":\"{SCHEMA}\",\"error\":\"cannot serialise the report: {e}\"}}")
    });
    s.push('\n');
    s
}

/// "1 frame", "2 frames".
pub fn count_of(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub fn human_bytes(n: u64) -> String {
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

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `name+0xoff` / `??`, and the module.
fn describe_location(l: &CodeLocation) -> String {
    let mut s = match (&l.function, &l.symbol, l.offset) {
        (Some(f), Some(sym), Some(off)) if f == sym => format!("{f}+{off:#x}"),
        (Some(f), Some(sym), Some(off)) => format!("{f} ({sym}+{off:#x})"),
        (Some(f), _, _) => f.clone(),
        (None, _, _) => "??".into(),
    };
    if let (Some(file), Some(line)) = (&l.file, l.line) {
        let _ = write!(s, " at {file}:{line}");
    }
    if let Some(m) = &l.module {
        let _ = write!(s, " in {}", base_name(m));
    }
    s
}

/// The text `coresnap inspect` prints.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let format = match r.file.format {
        super::source::FileFormat::ElfCore => "ELF core".to_string(),
        super::source::FileFormat::ZstdSeekable => "zstd seekable, compressed ELF core".to_string(),
    };
    push_line!(o, "core:       {} ({format})", r.file.path);
    push_line!(
        o,
        "size:       {} logical, {} on disk{}",
        human_bytes(r.sizes.logical),
        human_bytes(r.sizes.on_disk),
        if r.sizes.file_length != r.sizes.logical {
            format!(", file {}", human_bytes(r.sizes.file_length))
        } else {
            String::new()
        }
    );
    push_line!(
        o,
        "memory:     {} mapped, {} in the core{}",
        human_bytes(r.sizes.mapped),
        human_bytes(r.sizes.present),
        r.sizes
            .holes
            .map(|h| format!(" ({} of it holes)", human_bytes(h)))
            .unwrap_or_default()
    );
    match &r.process {
        Some(p) => {
            push_line!(
                o,
                "process:    pid {}{}{}{}",
                p.pid,
                p.name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                p.ppid.map(|x| format!(", ppid {x}")).unwrap_or_default(),
                p.state
                    .as_ref()
                    .map(|x| format!(", state {x}"))
                    .unwrap_or_default(),
            );
            if let (Some(uid), Some(gid)) = (p.uid, p.gid) {
                push_line!(o, "user:       uid {uid}, gid {gid}");
            }
            if let Some(argv) = &p.argv {
                push_line!(o, "command:    {}", argv.join(" "));
            } else if let Some(c) = &p.command_line {
                push_line!(o, "command:    {c}");
            }
            if let Some(e) = &p.executable {
                push_line!(o, "executable: {e}");
            }
            match &p.signal {
                Some(s) => {
                    let mut line = format!("signal:     {} ({})", s.name, s.number);
                    if let Some(c) = s.code {
                        let _ = write!(line, ", code {c}");
                    }
                    if let Some(a) = s.address {
                        let _ = write!(line, ", fault address {a:#x}");
                    }
                    if let Some(pid) = s.sender_pid {
                        let _ = write!(line, ", sent by pid {pid}");
                    }
                    if let Some(t) = s.thread {
                        let _ = write!(line, ", taken by thread {t}");
                    }
                    push_line!(o, "{line}");
                }
                None => {
                    push_line!(o, "signal:     none (a snapshot of a live process)");
                }
            }
        }
        None => {
            push_line!(
                o,
                "process:    unknown (no NT_PRPSINFO or NT_PRSTATUS note)"
            );
        }
    }
    match &r.capture {
        Some(c) => {
            let mut line = format!(
                "captured:   {} by {} {}",
                c.time_utc.as_deref().unwrap_or("(time unknown)"),
                c.tool.as_deref().unwrap_or("?"),
                c.tool_version.as_deref().unwrap_or("")
            );
            if let Some(m) = &c.mode {
                let _ = write!(line, ", mode {m}");
            }
            if c.registers.as_deref() == Some("partial") {
                let _ = write!(
                    line,
                    ", without ptrace (held by {}): registers partial, only sp, pc and system call arguments",
                    c.freeze.as_deref().unwrap_or("?")
                );
            }
            if let Some(f) = &c.filter {
                let _ = write!(line, ", filter {f}");
            }
            if c.all == Some(true) {
                line.push_str(", all mappings");
            }
            if let Some(h) = &c.hostname {
                let _ = write!(line, ", host {h}");
            }
            if let Some(k) = &c.kernel_release {
                let _ = write!(line, " (Linux {k})");
            }
            push_line!(o, "{line}");
        }
        None => {
            push_line!(
                o,
                "captured:   no CORESNAP note (written by the kernel, gdb or another tool)"
            );
        }
    }
    match r.manifest.verification.as_str() {
        "verified" => push_line!(o, "manifest:   {}: hashes verified", r.manifest.path),
        "failed" => {
            push_line!(o, "manifest:   {}: NOT VERIFIED", r.manifest.path);
            for c in r.manifest.checks.iter().filter(|c| !c.ok) {
                push_line!(o, "              FAIL {}", c.what);
            }
        }
        "not-checked" => push_line!(
            o,
            "manifest:   {}: present, not verified (run `coresnap verify`, or inspect --verify)",
            r.manifest.path
        ),
        "absent" => push_line!(o, "manifest:   none ({} does not exist)", r.manifest.path),
        other => push_line!(o, "manifest:   {other}"),
    }
    if let Some(d) = &r.file.decompression {
        push_line!(
            o,
            "zstd:       {}; {} read for this report ({} decompressed, {} of {} compressed bytes read)",
            count_of(d.frames as u64, "frame"),
            count_of(d.frames_decompressed, "frame"),
            human_bytes(d.bytes_decompressed),
            human_bytes(d.compressed_bytes_read),
            human_bytes(r.sizes.file_length),
        );
        if matches!(r.manifest.verification.as_str(), "verified" | "failed") {
            push_line!(
                o,
                "            (the manifest check read and decompressed the whole file besides)"
            );
        }
    }

    o.push('\n');
    push_line!(o, "threads ({}):", r.threads.len());
    for t in &r.threads {
        push_line!(
            o,
            "  {:>7}  pc {:#014x}  sp {:#014x}  {}{}",
            t.tid,
            t.pc,
            t.sp,
            describe_location(&t.location),
            t.signal
                .map(|s| format!("  [signal {}]", super::notes::signal_name(s)))
                .unwrap_or_default()
        );
    }

    if r.backtraces {
        let pid = r.process.as_ref().map(|p| p.pid).unwrap_or(0);
        o.push('\n');
        push_line!(o, "PID {pid} - process");
        for t in &r.threads {
            push_line!(o, "TID {}:", t.tid);
            let Some(bt) = &t.backtrace else { continue };
            for f in &bt.frames {
                let mut line = format!(
                    "#{:<2} {:#018x} {}",
                    f.index,
                    f.address,
                    f.function.as_deref().unwrap_or("??")
                );
                if let (Some(file), Some(l)) = (&f.file, f.line) {
                    let _ = write!(line, " at {file}:{l}");
                }
                if let Some(m) = &f.module {
                    let _ = write!(line, " - {}", base_name(m));
                }
                let _ = write!(line, " [{}]", f.method.as_str());
                push_line!(o, "{line}");
            }
            if !bt.complete {
                push_line!(o, "    ({})", bt.end);
            }
        }
    }

    o.push('\n');
    push_line!(o, "mappings ({}):", r.mappings.len());
    for m in &r.mappings {
        let presence = if !m.in_core {
            "not in core".to_string()
        } else if m.bytes_absent == 0 {
            format!("{} in core", human_bytes(m.bytes_present))
        } else {
            format!(
                "{} of {} in core",
                human_bytes(m.bytes_present),
                human_bytes(m.end - m.start)
            )
        };
        let holes = match m.hole_bytes {
            Some(h) if h > 0 => format!(", {} holes", human_bytes(h)),
            _ => String::new(),
        };
        let file = match (&m.file, m.file_offset) {
            (Some(f), Some(off)) => format!("  {f} @ {off:#x}"),
            (Some(f), None) => format!("  {f}"),
            _ => String::new(),
        };
        push_line!(
            o,
            "  {:#014x}-{:#014x} {:<4} {presence}{holes}{file}",
            m.start,
            m.end,
            m.perms
        );
    }

    if !r.modules.is_empty() {
        o.push('\n');
        push_line!(o, "modules ({}):", r.modules.len());
        for m in &r.modules {
            push_line!(
                o,
                "  {}  build-id {}{}: {}{}",
                m.path,
                m.build_id.as_deref().unwrap_or("unknown"),
                m.build_id_from
                    .as_ref()
                    .map(|f| format!(" (from {f})"))
                    .unwrap_or_default(),
                m.status.describe(),
                m.debug_file
                    .as_ref()
                    .map(|d| format!("; debug info {d}"))
                    .unwrap_or_default()
            );
        }
    }

    o.push('\n');
    push_line!(
        o,
        "notes ({} in {} PT_NOTE segment(s)):",
        r.elf.notes,
        r.elf.note_segments
    );
    for n in &r.notes {
        push_line!(
            o,
            "  {:<22} {:<9} x{:<5} {}",
            n.type_name,
            n.name,
            n.count,
            human_bytes(n.bytes)
        );
    }
    o.push('\n');
    push_line!(
        o,
        "ELF:        {} program headers{}, {} PT_LOAD",
        r.elf.program_headers,
        if r.elf.pn_xnum { " (PN_XNUM)" } else { "" },
        r.elf.load_segments
    );
    if !r.warnings.is_empty() {
        o.push('\n');
        push_line!(o, "warnings ({}):", r.warnings.len());
        for w in &r.warnings {
            push_line!(o, "  {w}");
        }
    }
    o
}
