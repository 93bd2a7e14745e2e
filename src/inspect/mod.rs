//! Reading cores: `coresnap inspect` and `coresnap extract`.
//!
//! The layers, bottom up:
//!
//! 1. [`source`]: the core's bytes, from a slice, a file, or a seekable
//!    `.zst` (only the frames needed are decompressed);
//! 2. [`elf`]: header, program headers (PN_XNUM included) and raw notes,
//!    checked against the file; damage becomes an error or a warning;
//! 3. [`notes`]: decoding of each note type; [`memory`]: memory by address;
//! 4. [`modules`]: the mapped ELF files, checked by build-id, with their
//!    symbols, debug info and CFI; [`unwind`]: framehop over them;
//! 5. [`model`]: the analysed facts, built by [`analyse`], rendered by
//!    [`render`] as text or JSON; [`extract`] copies memory out.
//!
//! ```no_run
//! use coresnap::inspect::{inspect_path, InspectOptions, render};
//! let report = inspect_path("core.1234".as_ref(), &InspectOptions { backtrace: true, ..Default::default() })?;
//! print!("{}", render::text(&report));
//! # Ok::<(), coresnap::inspect::InspectError>(())
//! ```

pub mod dwarf;
pub mod elf;
pub mod extract;
pub mod local_file;
pub mod memory;
pub mod model;
pub mod modules;
pub mod notes;
pub mod render;
pub mod source;
pub mod unwind;

use crate::manifest::buildid::{BuildIds, from_hex};
use elf::{CoreError, CoreFile, PT_LOAD, PT_NOTE};
use memory::Memory;
use model::*;
use modules::{FileOptions, Module};
use notes::*;
use source::{ByteSource, OpenError};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use unwind::{Method, StackWalker};

/// What to do besides reading the core.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// Unwind every thread.
    pub backtrace: bool,
    /// How mapped files are found.
    pub files: FileOptions,
    /// Check the core against its manifest when one is there: reads (and
    /// decompresses) every stored byte, so off by default; the report then
    /// says the manifest is present and not checked.
    pub verify: bool,
    /// The manifest, instead of `<FILE>.json`.
    pub manifest_path: Option<PathBuf>,
}

/// Why a core could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{path}: {source}")]
    Core { path: PathBuf, source: CoreError },
}

/// Opens and analyses the core (or `.zst`) at `path`.
pub fn inspect_path(path: &Path, options: &InspectOptions) -> Result<Report, InspectError> {
    let opened = source::open(path)?;
    let core = CoreFile::parse(&*opened.source).map_err(|source| InspectError::Core {
        path: path.to_path_buf(),
        source,
    })?;
    let facts = FileFacts {
        path: path.display().to_string(),
        format: opened.format,
        length: opened.file_len,
        disk_usage: opened.disk_usage,
        decompression: None,
    };
    let manifest = options.manifest_path.clone().unwrap_or_else(|| {
        let mut p = path.as_os_str().to_owned();
        p.push(".json");
        PathBuf::from(p)
    });
    let mut report = analyse(&core, facts, options);
    report.manifest = manifest_status(path, &manifest, options.verify);
    report.file.decompression = opened.source.decompression();
    Ok(report)
}

fn manifest_status(core: &Path, manifest: &Path, verify: bool) -> ManifestStatus {
    let mut status = ManifestStatus {
        path: manifest.display().to_string(),
        present: manifest.exists(),
        verification: "absent".into(),
        checks: Vec::new(),
    };
    if !status.present {
        return status;
    }
    if !verify {
        status.verification = "not-checked".into();
        return status;
    }
    let result =
        crate::archive::verify::verify(core, Some(manifest), &crate::cancel::CancelToken::new());
    status.verification = if result.verified() {
        "verified"
    } else {
        "failed"
    }
    .into();
    status.checks = result
        .checks
        .iter()
        .map(|c| Check {
            ok: c.ok,
            what: c.what.clone(),
        })
        .collect();
    status
}

/// One thread as found in the notes.
struct NoteThread {
    status: PrStatus,
    sets: Vec<String>,
}

/// Analyses a parsed core. Never panics on any input; problems end up in
/// `warnings`. The manifest is not looked at here (see [`inspect_path`]).
pub fn analyse<S: ByteSource>(
    core: &CoreFile<S>,
    file: FileFacts,
    options: &InspectOptions,
) -> Report {
    let mut warnings = core.warnings.clone();

    // Notes: counts, threads, process-wide notes.
    let mut counts: BTreeMap<(String, u32), (usize, u64)> = BTreeMap::new();
    let mut threads: Vec<NoteThread> = Vec::new();
    let mut psinfo = None;
    let mut sig = None;
    let mut auxv_pairs: Vec<(u64, u64)> = Vec::new();
    let mut files: Vec<FileMapping> = Vec::new();
    let mut coresnap_note: Option<serde_json::Value> = None;
    let mut seen_auxv = false;
    let mut seen_file = false;
    for note in &core.notes {
        let c = counts.entry((note.name.clone(), note.n_type)).or_default();
        c.0 += 1;
        c.1 += note.desc.len() as u64;
        match (note.name.as_str(), note.n_type) {
            ("CORE", NT_PRSTATUS) => match prstatus(&note.desc) {
                Some(status) => threads.push(NoteThread {
                    status,
                    sets: Vec::new(),
                }),
                None => warnings.push(format!(
                    "an NT_PRSTATUS note of {} bytes is too short (336 expected): that thread is left out",
                    note.desc.len()
                )),
            },
            ("CORE", NT_PRPSINFO) if psinfo.is_none() => {
                psinfo = prpsinfo(&note.desc);
                if psinfo.is_none() {
                    warnings.push(format!(
                        "the NT_PRPSINFO note of {} bytes is too short (136 expected)",
                        note.desc.len()
                    ));
                }
            }
            ("CORE", NT_SIGINFO) if sig.is_none() => sig = siginfo(&note.desc),
            ("CORE", NT_AUXV) if !seen_auxv => {
                seen_auxv = true;
                auxv_pairs = auxv(&note.desc);
            }
            ("CORE", NT_FILE) if !seen_file => {
                seen_file = true;
                let (entries, problem) = nt_file(&note.desc);
                files = entries;
                if let Some(p) = problem {
                    warnings.push(p);
                }
            }
            ("CORESNAP", NT_CORESNAP_MANIFEST) if coresnap_note.is_none() => {
                match serde_json::from_slice::<serde_json::Value>(&note.desc) {
                    Ok(v) => coresnap_note = Some(v),
                    Err(e) => warnings.push(format!("the CORESNAP note is not valid JSON: {e}")),
                }
            }
            _ => {}
        }
        if matches!(
            (note.name.as_str(), note.n_type),
            ("CORE", NT_PRFPREG) | ("LINUX", _) | ("CORE", NT_SIGINFO)
        ) && let Some(t) = threads.last_mut()
        {
            let mut name = type_name(&note.name, note.n_type);
            if note.n_type == NT_X86_XSTATE {
                let x = xstate(&note.desc);
                if let Some(xcr0) = x.xcr0 {
                    name = format!(
                        "{name} ({} bytes, XCR0 {xcr0:#x}: {})",
                        x.size,
                        xcr0_features(xcr0).join(" ")
                    );
                }
            }
            t.sets.push(name);
        }
    }
    if !seen_file && !core.notes.is_empty() {
        warnings.push("no NT_FILE note: the mapped files are unknown, so no symbols or CFI".into());
    }
    if threads.is_empty() && !core.notes.is_empty() {
        warnings.push("no readable NT_PRSTATUS note: no threads".into());
    }
    files.sort_by_key(|f| (f.start, f.end));

    // Process.
    let note_str = |path: &[&str]| -> Option<String> {
        let mut v = coresnap_note.as_ref()?;
        for key in path {
            v = v.get(key)?;
        }
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        }
    };
    let entry = auxv_pairs.iter().find(|(k, _)| *k == AT_ENTRY).map(|p| p.1);
    let exe_from_files = entry.and_then(|e| {
        files
            .iter()
            .find(|f| f.start <= e && e < f.end)
            .map(|f| f.path.clone())
    });
    let signal = {
        let from_siginfo = sig.as_ref().filter(|s| s.signo != 0);
        let from_prstatus = threads.iter().find(|t| t.status.cursig != 0);
        let number = from_siginfo
            .map(|s| s.signo)
            .or(from_prstatus.map(|t| i32::from(t.status.cursig)));
        number.map(|number| Signal {
            number,
            name: signal_name(number),
            code: from_siginfo.map(|s| s.code),
            errno: from_siginfo.map(|s| s.errno),
            address: from_siginfo.and_then(|s| s.addr),
            sender_pid: from_siginfo.and_then(|s| s.sender_pid),
            sender_uid: from_siginfo.and_then(|s| s.sender_uid),
            thread: threads
                .iter()
                .find(|t| i32::from(t.status.cursig) == number)
                .map(|t| t.status.pid),
        })
    };
    let first = threads.first().map(|t| &t.status);
    let process = if psinfo.is_some() || first.is_some() {
        let argv = coresnap_note
            .as_ref()
            .and_then(|v| v.get("target")?.get("cmdline")?.as_array().cloned())
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect()
            });
        Some(Process {
            pid: psinfo
                .as_ref()
                .map(|p| p.pid)
                .or(first.map(|s| s.pid))
                .unwrap_or(0),
            ppid: psinfo.as_ref().map(|p| p.ppid).or(first.map(|s| s.ppid)),
            pgrp: psinfo.as_ref().map(|p| p.pgrp).or(first.map(|s| s.pgrp)),
            sid: psinfo.as_ref().map(|p| p.sid).or(first.map(|s| s.sid)),
            uid: psinfo.as_ref().map(|p| p.uid),
            gid: psinfo.as_ref().map(|p| p.gid),
            name: psinfo.as_ref().map(|p| p.fname.clone()),
            command_line: psinfo.as_ref().map(|p| p.psargs.clone()),
            argv,
            executable: exe_from_files.or_else(|| note_str(&["target", "exe"])),
            state: psinfo.as_ref().map(|p| p.sname.to_string()),
            signal,
        })
    } else {
        None
    };
    let capture = coresnap_note.as_ref().map(|_| Capture {
        tool: note_str(&["tool", "name"]),
        tool_version: note_str(&["tool", "version"]),
        time_utc: note_str(&["capture", "time_utc"]),
        mode: note_str(&["capture", "mode"]),
        freeze: note_str(&["capture", "freeze"]),
        registers: note_str(&["capture", "registers"]),
        filter: note_str(&["capture", "filter"]),
        all: coresnap_note
            .as_ref()
            .and_then(|v| v.get("capture")?.get("all")?.as_bool()),
        state_before: note_str(&["capture", "state_before"]),
        hostname: note_str(&["host", "hostname"]),
        kernel_release: note_str(&["host", "kernel_release"]),
        boot_id: note_str(&["host", "boot_id"]),
        process_start_utc: note_str(&["target", "start_time_utc"]),
    });
    let manifest_build_ids: HashMap<u64, BuildIds> = coresnap_note
        .as_ref()
        .and_then(|v| v.get("mappings")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let start = m.get("start")?.as_str()?.strip_prefix("0x")?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let text = |key: &str| Some(m.get(key)?.as_str()?.to_string());
            let ids = BuildIds {
                gnu: text("build_id").and_then(|hex| from_hex(&hex)),
                go: text("go_build_id"),
            };
            (!ids.is_empty()).then_some((start, ids))
        })
        .collect();

    // Mappings.
    let mappings = mappings(core, &files);

    // Modules, names, stacks.
    let memory = Memory::new(core);
    let modules: Vec<Module> = modules::discover(
        core,
        &memory,
        &files,
        &auxv_pairs,
        &manifest_build_ids,
        &options.files,
        &mut warnings,
    );
    let walker = StackWalker::new(&modules);
    let symbolizer = walker.symbolizer();
    let threads: Vec<Thread> = threads
        .iter()
        .enumerate()
        .map(|(index, t)| {
            let s = &t.status;
            let location = CodeLocation::from(&symbolizer.symbolize(s.pc(), false));
            let backtrace = options.backtrace.then(|| {
                let raw = walker.walk(&memory, s.pc(), s.sp(), s.fp());
                let mut physical = Vec::with_capacity(raw.frames.len());
                for (i, f) in raw.frames.iter().enumerate() {
                    physical.push(f.clone());
                    if let Some(caller) = raw.frames.get(i + 1).filter(|c| c.caller) {
                        for address in symbolizer.tail_calls(f.address, f.caller, caller.address) {
                            physical.push(unwind::RawFrame {
                                address,
                                caller: true,
                                method: Method::TailCall,
                            });
                        }
                    }
                }
                let mut frames = Vec::new();
                for f in &physical {
                    let sym = symbolizer.symbolize(f.address, f.caller);
                    let symbol = sym.symbol.as_ref().map(|x| x.0.clone());
                    let offset = sym.symbol.as_ref().map(|x| x.1);
                    if sym.frames.is_empty() {
                        frames.push(Frame {
                            index: frames.len(),
                            address: f.address,
                            method: f.method,
                            function: symbol.clone(),
                            symbol,
                            offset,
                            module: sym.module.clone(),
                            file: None,
                            line: None,
                        });
                        continue;
                    }
                    let last = sym.frames.len() - 1;
                    for (j, ff) in sym.frames.iter().enumerate() {
                        let function = ff
                            .function
                            .clone()
                            .or_else(|| if j == last { symbol.clone() } else { None });
                        frames.push(Frame {
                            index: frames.len(),
                            address: f.address,
                            method: if j == 0 { f.method } else { Method::Inline },
                            function,
                            symbol: symbol.clone(),
                            offset,
                            module: sym.module.clone(),
                            file: ff.file.clone(),
                            line: ff.line,
                        });
                    }
                }
                Backtrace {
                    frames,
                    end: raw.end,
                    complete: raw.complete,
                }
            });
            Thread {
                index,
                tid: s.pid,
                signal: (s.cursig != 0).then_some(i32::from(s.cursig)),
                pc: s.pc(),
                sp: s.sp(),
                fp: s.fp(),
                location,
                notes: t.sets.clone(),
                backtrace,
            }
        })
        .collect();

    let notes = counts
        .into_iter()
        .map(|((name, n_type), (count, bytes))| NoteCount {
            type_name: type_name(&name, n_type),
            name,
            n_type,
            count,
            bytes,
        })
        .collect();
    let holes: Option<u64> = mappings
        .iter()
        .filter(|m| m.bytes_present > 0)
        .try_fold(0u64, |sum, m| m.hole_bytes.map(|h| sum.saturating_add(h)));
    let sizes = Sizes {
        logical: core.source().len(),
        on_disk: file.disk_usage,
        file_length: file.length,
        mapped: mappings
            .iter()
            .fold(0u64, |sum, m| sum.saturating_add(m.end - m.start)),
        present: mappings
            .iter()
            .fold(0u64, |sum, m| sum.saturating_add(m.bytes_present)),
        holes,
    };
    Report {
        schema: SCHEMA,
        version: VERSION,
        elf: ElfFacts {
            program_headers: core.header.phnum,
            pn_xnum: core.header.phnum_raw == elf::PN_XNUM,
            load_segments: core.segments.iter().filter(|s| s.p_type == PT_LOAD).count(),
            note_segments: core.segments.iter().filter(|s| s.p_type == PT_NOTE).count(),
            notes: core.notes.len(),
        },
        file,
        process,
        capture,
        manifest: ManifestStatus {
            path: String::new(),
            present: false,
            verification: "unavailable".into(),
            checks: Vec::new(),
        },
        threads,
        mappings,
        modules: modules.iter().map(|m| m.info.clone()).collect(),
        notes,
        sizes,
        backtraces: options.backtrace,
        warnings,
    }
}

/// The mappings: every PT_LOAD with its NT_FILE name, then the NT_FILE
/// mappings no PT_LOAD covers, in address order.
fn mappings<S: ByteSource>(core: &CoreFile<S>, files: &[FileMapping]) -> Vec<Mapping> {
    let file_at = |addr: u64| -> Option<&FileMapping> {
        let i = files.partition_point(|f| f.start <= addr);
        files[..i].last().filter(|f| addr < f.end)
    };
    let mut out: Vec<Mapping> = core
        .loads()
        .filter(|s| s.memsz > 0)
        .map(|s| {
            let present = core.present(s).min(s.memsz);
            let f = file_at(s.vaddr);
            Mapping {
                start: s.vaddr,
                end: s.end(),
                perms: s.perms(),
                file: f.map(|f| f.path.clone()),
                file_offset: f.map(|f| f.offset.saturating_add(s.vaddr - f.start)),
                in_core: true,
                bytes_present: present,
                hole_bytes: if present > 0 {
                    core.source().hole_bytes(s.offset, present)
                } else {
                    Some(0)
                },
                bytes_absent: s.memsz - present,
                core_offset: (present > 0).then_some(s.offset),
            }
        })
        .collect();
    out.sort_by_key(|m| (m.start, m.end));
    let mut only_in_file_note = Vec::new();
    for f in files {
        let i = out.partition_point(|m| m.start < f.end);
        let covered = out[..i].iter().rev().take(8).any(|m| m.end > f.start);
        if !covered {
            only_in_file_note.push(Mapping {
                start: f.start,
                end: f.end,
                perms: "?".into(),
                file: Some(f.path.clone()),
                file_offset: Some(f.offset),
                in_core: false,
                bytes_present: 0,
                hole_bytes: None,
                bytes_absent: f.end - f.start,
                core_offset: None,
            });
        }
    }
    out.extend(only_in_file_note);
    out.sort_by_key(|m| (m.start, m.end));
    out
}

/// Parses `data` as a core and analyses it without touching any file:
/// the entry point of the fuzz target and of the robustness tests.
pub fn fuzz_one(data: &[u8]) -> Option<Report> {
    let core = CoreFile::parse(source::Bytes(data)).ok()?;
    let facts = FileFacts {
        path: "<memory>".into(),
        format: source::FileFormat::ElfCore,
        length: data.len() as u64,
        disk_usage: 0,
        decompression: None,
    };
    let options = InspectOptions {
        backtrace: true,
        files: FileOptions {
            use_files: false,
            debug_info: true,
            ..FileOptions::default()
        },
        verify: false,
        manifest_path: None,
    };
    let report = analyse(&core, facts, &options);
    let _ = render::text(&report);
    let _ = render::json(&report);
    Some(report)
}
