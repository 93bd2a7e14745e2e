//! Building the manifest: [`begin`] while the target is frozen, from the
//! snapshot and `/proc` (everything the CORESNAP note holds), then
//! [`Manifest::record_outcome`] once the core is written and
//! [`Manifest::record_file`] once the file is complete.

use super::{
    Capture, CoreEntry, FileEntry, Hex, Host, Manifest, MappingEntry, SCHEMA, Target, Tool,
    UnreadableEntry, VERSION, buildid,
};
use crate::elf::layout::CoreLayout;
use crate::process::memory::Unreadable;
use crate::sink::hashing::{Digests, hex};
use crate::snapshot::Snapshot;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How the capture was taken (what the snapshot does not say).
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// When every thread had stopped.
    pub captured_at: SystemTime,
    pub mode: &'a str,
    pub left_stopped: bool,
    /// The signal or exit the dump was taken on, if any.
    pub trigger: Option<&'a crate::watch::Trigger>,
    /// How the target was held (`ptrace`, `sigstop`...); without ptrace
    /// the registers are only what `/proc` shows.
    pub freeze: &'a str,
}

/// The target's pid and mount namespaces, when either differs from ours.
fn namespaces(pid: i32) -> Option<super::Namespaces> {
    let link = |who: &str, ns: &str| {
        std::fs::read_link(format!("/proc/{who}/ns/{ns}"))
            .ok()
            .map(|l| l.to_string_lossy().into_owned())
    };
    let (pid_ns, mnt_ns) = (
        link(&pid.to_string(), "pid")?,
        link(&pid.to_string(), "mnt")?,
    );
    if Some(&pid_ns) == link("self", "pid").as_ref()
        && Some(&mnt_ns) == link("self", "mnt").as_ref()
    {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let pids: Vec<i32> = crate::process::info::status_field(&status, "NSpid:")
        .map(|v| {
            v.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![pid]);
    let pid_inside = *pids.last().unwrap_or(&pid);
    Some(super::Namespaces {
        pid_ns,
        mnt_ns,
        pids,
        pid_inside,
    })
}

/// The manifest's record of a trigger.
fn trigger_entry(trigger: &crate::watch::Trigger) -> super::Trigger {
    use crate::process::signals::{ExitStatus, signal_name};
    use crate::watch::Trigger;
    let mut entry = super::Trigger {
        kind: "signal".into(),
        tid: trigger.tid(),
        signal: None,
        signal_name: None,
        will_end_process: None,
        si_code: None,
        si_code_name: None,
        sent_by: None,
        sender_pid: None,
        sender_uid: None,
        fault_address: None,
        exit_status: None,
    };
    match trigger {
        Trigger::Signal(signal) => {
            let origin = signal.origin();
            entry.signal = Some(signal.signal);
            entry.signal_name = Some(signal_name(signal.signal));
            entry.will_end_process = Some(signal.will_end_process);
            entry.si_code = Some(origin.si_code);
            entry.si_code_name = Some(origin.si_code_name);
            entry.sent_by = Some(
                if origin.from_kernel {
                    "kernel"
                } else {
                    "process"
                }
                .into(),
            );
            entry.sender_pid = origin.sender_pid;
            entry.sender_uid = origin.sender_uid;
            entry.fault_address = origin.fault_address.map(Hex);
        }
        Trigger::Exit(exit) => {
            entry.kind = "exit".into();
            match exit.status {
                ExitStatus::Exited(code) => entry.exit_status = Some(code),
                ExitStatus::Killed { signal, .. } => {
                    entry.signal = Some(signal);
                    entry.signal_name = Some(signal_name(signal));
                }
            }
        }
    }
    entry
}

/// The pre-copy manifest of `snapshot`: reads the host facts, the
/// executable link and the build-ids of the mapped files.
pub fn begin(snapshot: &Snapshot, context: &Context) -> Manifest {
    let pid = snapshot.process.pid;
    // Opening or reading a mapped file can wait for the frozen target
    // itself (a FUSE file it serves): given up after the read time limit,
    // leaving those build-ids out.
    use crate::process::memory::{READ_TIMEOUT, with_time_limit};
    let mappings: Vec<_> = snapshot.regions.iter().map(|r| r.mapping.clone()).collect();
    let build_ids = with_time_limit(READ_TIMEOUT, move || {
        buildid::mapped_ids(pid, &mappings.iter().collect::<Vec<_>>())
    })
    .unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let exe_build_ids = with_time_limit(READ_TIMEOUT, move || {
        std::fs::File::open(format!("/proc/{pid}/exe"))
            .ok()
            .map(|f| buildid::read_build_ids(&f))
            .unwrap_or_default()
    })
    .unwrap_or_default();
    let hz = procfs::ticks_per_second().max(1);
    let start_time_utc = procfs::boot_time_secs().ok().map(|boot| {
        let ticks = snapshot.process.start_time_ticks;
        let since_boot = Duration::from_secs(ticks / hz)
            + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz);
        rfc3339(UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
    });
    let cmdline = {
        let raw = snapshot
            .process
            .cmdline
            .strip_suffix(b"\0")
            .unwrap_or(&snapshot.process.cmdline);
        if raw.is_empty() {
            Vec::new()
        } else {
            raw.split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        }
    };
    Manifest {
        schema: SCHEMA.into(),
        version: VERSION,
        tool: Tool {
            name: "coresnap".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        host: Host {
            hostname: proc_text("/proc/sys/kernel/hostname"),
            kernel_release: proc_text("/proc/sys/kernel/osrelease"),
            boot_id: proc_text("/proc/sys/kernel/random/boot_id"),
            machine: std::env::consts::ARCH.into(),
        },
        target: Target {
            pid,
            start_time_ticks: snapshot.process.start_time_ticks,
            clock_ticks_per_second: hz,
            start_time_utc,
            exe: exe.map(|p| p.to_string_lossy().into_owned()),
            exe_build_id: exe_build_ids.gnu.as_deref().map(hex),
            exe_go_build_id: exe_build_ids.go,
            comm: String::from_utf8_lossy(&snapshot.process.comm).into_owned(),
            cmdline,
            uid: snapshot.process.uid,
            gid: snapshot.process.gid,
            threads: snapshot.threads.iter().map(|t| t.tid).collect(),
            namespaces: namespaces(pid),
        },
        capture: Capture {
            time_utc: rfc3339(context.captured_at),
            mode: context.mode.into(),
            filter: format!("{:#x}", snapshot.policy.filter),
            all: snapshot.policy.all,
            state_before: char::from(snapshot.process.state).to_string(),
            left_stopped: context.left_stopped,
            trigger: context.trigger.map(trigger_entry),
            pause_us: None,
            cow: None,
            cow_fallback: None,
            freeze: context.freeze.into(),
            registers: if context.freeze != "ptrace" {
                "partial"
            } else {
                "complete"
            }
            .into(),
        },
        mappings: snapshot
            .regions
            .iter()
            .map(|r| {
                let m = &r.mapping;
                MappingEntry {
                    start: Hex(m.start),
                    end: Hex(m.end),
                    perms: format!(
                        "{}{}{}{}",
                        if m.readable { 'r' } else { '-' },
                        if m.writable { 'w' } else { '-' },
                        if m.executable { 'x' } else { '-' },
                        if m.shared { 's' } else { 'p' }
                    ),
                    offset: m.offset,
                    name: (!m.name.is_empty()).then(|| m.display_name()),
                    decision: r.decision,
                    dumped_bytes: r.dumped_len(),
                    in_core: r.listed_in_core(),
                    build_id: build_ids
                        .get(&m.start)
                        .and_then(|ids| ids.gnu.as_deref())
                        .map(hex),
                    go_build_id: build_ids.get(&m.start).and_then(|ids| ids.go.clone()),
                    core_offset: None,
                    written_bytes: None,
                    hole_bytes: None,
                    read_after_release: r.read_after_release,
                }
            })
            .collect(),
        unreadable: None,
        core: None,
        file: None,
        integrity: None,
    }
}

/// What the copy did.
pub struct Outcome<'a> {
    pub pause: Duration,
    pub layout: &'a CoreLayout,
    /// Bytes written into each segment (listed mapping), in order.
    pub written: &'a [u64],
    pub unreadable: &'a [Unreadable],
    /// Hashes of the core's bytes, if they were computed.
    pub core: Option<Digests>,
}

impl Manifest {
    /// Adds what is known once the core is written.
    pub fn record_outcome(&mut self, outcome: &Outcome) {
        self.capture.pause_us = Some(outcome.pause.as_micros() as u64);
        let mut segment = 0;
        for entry in &mut self.mappings {
            if !entry.in_core {
                continue;
            }
            let written = outcome.written.get(segment).copied().unwrap_or(0);
            entry.core_offset = outcome.layout.segment_offsets.get(segment).copied();
            entry.written_bytes = Some(written);
            entry.hole_bytes = Some(entry.dumped_bytes.saturating_sub(written));
            segment += 1;
        }
        self.unreadable = Some(
            outcome
                .unreadable
                .iter()
                .map(|u| UnreadableEntry {
                    start: Hex(u.start),
                    len: u.len,
                    errno: u.errno,
                    error: nix::errno::Errno::from_raw(u.errno).desc().to_string(),
                })
                .collect(),
        );
        self.core = Some(CoreEntry {
            length: outcome.layout.total_len,
            segments: outcome.layout.segment_offsets.len() as u64,
            notes_offset: outcome.layout.notes_offset,
            written_bytes: outcome.written.iter().sum(),
            chunk_size: None,
            leaf_size: None,
            blake3_chunked: None,
            sha256_chunked: None,
            blake3: None,
            sha256: None,
        });
        if let Some(digests) = &outcome.core {
            self.record_core_digests(digests);
        }
    }

    /// Sets the hashes of the core's bytes (computed after the copy).
    pub fn record_core_digests(&mut self, digests: &Digests) {
        if let Some(core) = &mut self.core {
            if let Some(chunked) = &digests.chunked {
                core.chunk_size = Some(chunked.chunking.chunk_size);
                core.leaf_size = chunked.chunking.leaf_size;
                core.blake3_chunked = Some(chunked.root.blake3_hex());
                core.sha256_chunked = Some(chunked.root.sha256_hex());
            }
            if let Some(flat) = &digests.flat {
                core.blake3 = Some(flat.blake3_hex());
                core.sha256 = Some(flat.sha256_hex());
            }
        }
    }

    /// Adds the file as written.
    pub fn record_file(&mut self, file: FileEntry) {
        self.file = Some(file);
    }

    /// The CORESNAP note's view: only what was known before the copy.
    pub fn pre_copy(&self) -> Manifest {
        let mut m = self.clone();
        m.capture.pause_us = None;
        if let Some(cow) = &mut m.capture.cow {
            cow.duplicated_bytes = None;
        }
        for entry in &mut m.mappings {
            entry.core_offset = None;
            entry.written_bytes = None;
            entry.hole_bytes = None;
        }
        m.unreadable = None;
        m.core = None;
        m.file = None;
        m.integrity = None;
        m
    }
}

fn proc_text(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

/// `2026-11-29T14:19:00.123456Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_micros(951_782_400_000_001)),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40.000000Z"
        );
    }
}
