//! No signal of the target is lost, duplicated or altered by a dump, in any
//! mode (issue #20). `testdata/signal_storm.c` counts every signal it gets,
//! per signal and per sequence number, and checks each siginfo; its sender
//! mode sends numbered signals at a steady rate and says what it sent. Each
//! test dumps the target over and over while the sender runs, loads some of
//! the cores in gdb, and at the end compares what was received with what
//! was sent.
//!
//! `CORESNAP_SIGNAL_DUMPS` changes the number of dumps per mode.

mod common;

use common::*;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Dumps per mode: the 200 take about half a minute per mode here.
const DUMPS: usize = 200;
/// One core in this many is loaded in gdb (a gdb run costs more than a dump).
const GDB_EVERY: usize = 40;
/// `--on-signal` sessions: each watches the storm for a while, then dumps.
const WATCH_SESSIONS: usize = 20;

fn dumps_per_mode() -> usize {
    std::env::var("CORESNAP_SIGNAL_DUMPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DUMPS)
}

/// The signals the sender numbers, in the order of the target's counters.
const KINDS: [&str; 4] = ["rt", "rt_thread", "usr1", "urg"];
const MAX_SEQ: usize = 1 << 20;

/// The target's counters, as laid out in `struct state` of signal_storm.c.
struct Counts {
    received: [u32; 4],
    bad_info: u32,
    usr1_outside_ppoll: u32,
    mask_changed: u32,
    forked: u32,
    reaped: u32,
    out_of_range: u32,
    triggers: u32,
    seen: Vec<Vec<u8>>,
}

impl Counts {
    /// Nothing the target received was unnumbered, had its siginfo altered,
    /// arrived while blocked, or changed its signal mask.
    #[track_caller]
    fn assert_intact(&self, what: &str) {
        assert_eq!(self.out_of_range, 0, "{what}: unnumbered signals");
        assert_eq!(self.bad_info, 0, "{what}: a siginfo was altered");
        assert_eq!(
            self.usr1_outside_ppoll, 0,
            "{what}: SIGUSR1 arrived while the target blocks it"
        );
        assert_eq!(self.mask_changed, 0, "{what}: the signal mask changed");
    }
}

fn read_counts(path: &Path) -> Counts {
    let bytes = std::fs::read(path).expect("read the target's counters");
    let word =
        |index: usize| u32::from_ne_bytes(bytes[index * 4..index * 4 + 4].try_into().unwrap());
    let seen_at = 12 * 4;
    Counts {
        received: [word(1), word(2), word(3), word(4)],
        bad_info: word(5),
        usr1_outside_ppoll: word(6),
        mask_changed: word(7),
        forked: word(8),
        reaped: word(9),
        out_of_range: word(10),
        triggers: word(11),
        seen: (0..4)
            .map(|k| bytes[seen_at + k * MAX_SEQ..seen_at + (k + 1) * MAX_SEQ].to_vec())
            .collect(),
    }
}

fn build_storm() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("coresnap-testdata");
            std::fs::create_dir_all(&cache).unwrap();
            let out = cache.join("signal_storm");
            let tmp = cache.join(format!(".signal_storm.tmp.{}", std::process::id()));
            let src = testdata_dir().join("signal_storm.c");
            let mut cmd = Command::new("cc");
            cmd.args(["-g", "-O0", "-fno-omit-frame-pointer", "-pthread", "-Wall"])
                .args(["-fPIE", "-pie", "-o"])
                .arg(&tmp)
                .arg(&src);
            let res = run_with_timeout(&mut cmd, COMPILE_TIMEOUT, false);
            assert!(
                res.success(),
                "compiling {}:\n{}",
                src.display(),
                res.describe()
            );
            std::fs::rename(&tmp, &out).unwrap();
            out
        })
        .clone()
}

/// A child process killed and reaped on drop.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = wait_until(Duration::from_secs(10), || {
            !matches!(self.0.try_wait(), Ok(None))
        });
    }
}

/// What was sent and what arrived, per numbered signal.
#[derive(Debug, Default)]
struct Tally {
    sent: [u32; 4],
    received: [u32; 4],
    lost: [u32; 4],
    duplicated: [u32; 4],
}

impl Tally {
    /// Fills in what the target counted against what was sent.
    fn compare(&mut self, counts: &Counts) {
        for k in 0..4 {
            let sent = self.sent[k] as usize;
            self.received[k] = counts.received[k];
            for seq in 1..MAX_SEQ {
                let times = counts.seen[k][seq] as u32;
                if seq <= sent && times == 0 {
                    self.lost[k] += 1;
                }
                self.duplicated[k] += times.saturating_sub(1);
                if seq > sent {
                    self.duplicated[k] += times;
                }
            }
        }
    }
}

/// The signal-storm target and its sender.
struct Storm {
    target: Target,
    sender: Option<Guarded>,
    sender_line: mpsc::Receiver<String>,
    state: PathBuf,
}

impl Storm {
    /// Starts the target, counting into `dir`/state, and the sender.
    fn start(dir: &Path) -> Storm {
        let exe = build_storm();
        let state = dir.join("state");
        let target = Target::spawn(&exe, &[OsStr::new("target"), state.as_os_str()]);
        let mut sender = Command::new(&exe)
            .arg("send")
            .arg(target.pid.to_string())
            .arg(&state)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start the sender");
        let stdout = sender.stdout.take().unwrap();
        let (tx, sender_line) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let storm = Storm {
            target,
            sender: Some(Guarded(sender)),
            sender_line,
            state,
        };
        // The storm is on once the target has counted its first signals.
        assert!(
            wait_until(READY_TIMEOUT, || storm.counts().received[0] > 10),
            "the target received no signals from the sender"
        );
        storm
    }

    fn counts(&self) -> Counts {
        read_counts(&self.state)
    }

    /// Stops the sender and returns what it says it sent, per kind.
    fn stop_sender(&mut self) -> [u32; 4] {
        let sender = self.sender.take().unwrap();
        // SAFETY: plain syscall on a child we own and have not reaped (it
        // may have ended by itself, when the target is gone).
        unsafe { libc::kill(sender.0.id() as i32, libc::SIGTERM) };
        let line = self
            .sender_line
            .recv_timeout(Duration::from_secs(10))
            .expect("the sender said what it sent");
        drop(sender);
        let mut sent = [0; 4];
        for (index, kind) in KINDS.iter().enumerate() {
            sent[index] = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{kind}="))?.parse().ok())
                .unwrap_or_else(|| panic!("no {kind}= in {line:?}"));
        }
        sent
    }

    /// Stops the sender, waits for everything it sent to arrive (or for
    /// the counts to stop moving), and compares.
    fn finish(&mut self, mode: &str) -> (Tally, Counts) {
        let mut tally = Tally {
            sent: self.stop_sender(),
            ..Tally::default()
        };
        // A signal still in the target's queue is not lost: wait for the
        // counts to reach what was sent, or to stay still for a second.
        let mut last = self.counts().received;
        let mut still_since = Instant::now();
        wait_until(Duration::from_secs(15), || {
            let now = self.counts().received;
            if now != last {
                last = now;
                still_since = Instant::now();
            }
            (0..4).all(|k| now[k] >= tally.sent[k])
                || still_since.elapsed() > Duration::from_secs(1)
        });
        let counts = self.counts();
        tally.compare(&counts);
        eprintln!(
            "signals per mode: {mode}: {}; children forked {} reaped {}; bad siginfo {}, SIGUSR1 outside ppoll {}, mask changed {}",
            (0..4)
                .map(|k| format!(
                    "{} sent {} received {} lost {} duplicated {}",
                    KINDS[k], tally.sent[k], tally.received[k], tally.lost[k], tally.duplicated[k]
                ))
                .collect::<Vec<_>>()
                .join(", "),
            counts.forked,
            counts.reaped,
            counts.bad_info,
            counts.usr1_outside_ppoll,
            counts.mask_changed,
        );
        (tally, counts)
    }

    /// Every numbered signal arrived exactly once with its siginfo as sent,
    /// every child was reaped, and the target's signal mask is its own.
    fn assert_nothing_lost(&mut self, mode: &str) {
        assert_running_untraced(self.target.pid);
        let (tally, counts) = self.finish(mode);
        for (kind, sent) in KINDS.iter().zip(tally.sent) {
            assert!(sent > 0, "{mode}: no {kind} was sent");
        }
        assert_eq!(tally.lost, [0; 4], "{mode}: lost signals: {tally:?}");
        assert_eq!(
            tally.duplicated, [0; 4],
            "{mode}: duplicated signals: {tally:?}"
        );
        counts.assert_intact(mode);
        let reaped = wait_until(Duration::from_secs(5), || {
            let c = self.counts();
            c.reaped == c.forked
        });
        let c = self.counts();
        assert!(
            reaped,
            "{mode}: {} children forked, {} reaped: a SIGCHLD was lost",
            c.forked, c.reaped
        );
    }
}

fn coresnap() -> Command {
    Command::new(Dumper::Coresnap.program())
}

/// Starts `coresnap ARGS -o PREFIX PID` under a guard, stdout discarded.
fn spawn_dump(args: &[&str], prefix: &Path, pid: i32, stderr: Stdio) -> Guarded {
    let mut cmd = coresnap();
    cmd.args(args)
        .arg("-o")
        .arg(prefix)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(stderr);
    Guarded(cmd.spawn().expect("start coresnap"))
}

fn core_path(prefix: &Path, pid: i32) -> PathBuf {
    let mut core = prefix.as_os_str().to_owned();
    core.push(format!(".{pid}"));
    PathBuf::from(core)
}

/// Dumps the storm target `dumps_per_mode()` times with `args`; checks
/// every `GDB_EVERY`th core in gdb and removes the cores as it goes.
fn dump_repeatedly(mode: &str, args: &[&str]) {
    let scratch = Scratch::new(&format!("signals-{mode}"));
    let mut storm = Storm::start(scratch.path());
    let pid = storm.target.pid;
    let threads = thread_ids(pid);
    let started = Instant::now();
    for round in 0..dumps_per_mode() {
        let prefix = scratch.path().join(format!("core-{round}"));
        let mut cmd = coresnap();
        cmd.args(args).arg("-o").arg(&prefix).arg(pid.to_string());
        let res = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
        assert!(
            res.success(),
            "{mode}: dump {round} failed:\n{}",
            res.describe()
        );
        // Without ptrace the registers are partial, and coresnap says so.
        let warnings: Vec<&str> = res
            .stderr
            .lines()
            .filter(|l| l.contains("warning") && !l.contains("the registers are partial"))
            .collect();
        assert!(
            warnings.is_empty(),
            "{mode}: dump {round} warned:\n{}",
            res.describe()
        );
        let core = core_path(&prefix, pid);
        if round % GDB_EVERY == 0 {
            assert_loads_in_gdb(pid, &core, &threads);
        }
        let _ = std::fs::remove_file(&core);
        let _ = std::fs::remove_file(core.with_extension(format!("{pid}.json")));
    }
    eprintln!(
        "{mode}: {} dumps in {:.1} s",
        dumps_per_mode(),
        started.elapsed().as_secs_f64()
    );
    storm.assert_nothing_lost(mode);
}

#[test]
fn stop_mode_loses_no_signal() {
    dump_repeatedly("stop", &[]);
}

#[test]
fn cow_mode_loses_no_signal() {
    dump_repeatedly("cow", &["--mode", "cow", "--no-fallback"]);
}

#[test]
fn no_ptrace_loses_no_signal() {
    dump_repeatedly("no-ptrace", &["--no-ptrace"]);
}

/// SIGINT reaches coresnap at a different moment of each dump: while it
/// attaches, while it writes, or after it is done.
#[test]
fn interrupted_dumps_lose_no_signal() {
    let scratch = Scratch::new("signals-interrupted");
    let mut storm = Storm::start(scratch.path());
    let pid = storm.target.pid;
    let threads = thread_ids(pid);
    let (mut interrupted, mut finished) = (0, 0);
    for round in 0..dumps_per_mode() {
        let prefix = scratch.path().join(format!("core-{round}"));
        let mode = if round % 2 == 0 { "stop" } else { "cow" };
        let mut child = spawn_dump(&["--mode", mode], &prefix, pid, Stdio::null());
        std::thread::sleep(Duration::from_micros(2500 * (round % 40) as u64));
        // SAFETY: plain syscall on a child we own and have not reaped.
        unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
        let status = wait_exit(
            &mut child.0,
            DUMP_TIMEOUT,
            "coresnap did not end after SIGINT",
        );
        // A SIGINT that comes after the core is complete (coresnap may then
        // still exit with failure) leaves that core; any other leaves none.
        let core = core_path(&prefix, pid);
        if core.exists() {
            finished += 1;
            if finished % GDB_EVERY == 1 {
                assert_loads_in_gdb(pid, &core, &threads);
            }
        } else if !status.success() {
            interrupted += 1;
        }
        let _ = std::fs::remove_file(&core);
        let _ = std::fs::remove_file(core.with_extension(format!("{pid}.json")));
    }
    eprintln!(
        "interrupted: {interrupted} of {} dumps ({finished} finished first)",
        dumps_per_mode()
    );
    assert!(interrupted > 0, "SIGINT never interrupted a dump");
    storm.assert_nothing_lost("interrupted");
}

/// `--on-signal=USR2` watches while the storm passes through it; then the
/// test sends the trigger, which the target must get once, after the dump.
#[test]
fn on_signal_passes_the_storm_through() {
    let scratch = Scratch::new("signals-watch");
    let mut storm = Storm::start(scratch.path());
    let pid = storm.target.pid;
    let threads = thread_ids(pid);
    for session in 0..WATCH_SESSIONS {
        let prefix = scratch.path().join(format!("core-{session}"));
        let mut watcher = spawn_dump(
            &["--on-signal=USR2", "--every-signal"],
            &prefix,
            pid,
            Stdio::piped(),
        );
        let watcher_pid = watcher.0.id() as i32;
        assert!(
            wait_until(STATE_TIMEOUT, || {
                let all = all_task_status(pid);
                !all.is_empty() && all.iter().all(|s| s.tracer == watcher_pid)
            }),
            "coresnap --on-signal did not attach to every thread"
        );
        let before = storm.counts();
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            storm.counts().received[0] > before.received[0],
            "no signal passed through the watcher"
        );
        storm.target.signal(libc::SIGUSR2);
        let status = wait_exit(
            &mut watcher.0,
            DUMP_TIMEOUT,
            "coresnap --on-signal did not finish after the trigger",
        );
        let stderr = take_stderr(&mut watcher.0);
        assert!(
            status.success(),
            "coresnap --on-signal failed: {status:?}\n{stderr}"
        );
        let core = core_path(&prefix, pid);
        if session % 5 == 0 {
            assert_loads_in_gdb(pid, &core, &threads);
        }
        let _ = std::fs::remove_file(&core);
        let _ = std::fs::remove_file(core.with_extension(format!("{pid}.json")));
        assert!(
            wait_until(STATE_TIMEOUT, || storm.counts().triggers
                == session as u32 + 1),
            "the trigger of session {session} did not reach the target once after the dump (triggers: {})",
            storm.counts().triggers
        );
    }
    storm.assert_nothing_lost("on-signal");
}

/// Job control keeps its meaning: a SIGSTOP sent while coresnap holds the
/// target (or borrows its main thread for the clone, or has SIGSTOPped it
/// itself for --no-ptrace) still stops it once coresnap lets go, and
/// SIGCONT then continues it, with the storm going on.
#[test]
fn sigstop_during_a_dump_still_stops_the_target() {
    const ROUNDS: usize = 45;
    let scratch = Scratch::new("signals-sigstop");
    let mut storm = Storm::start(scratch.path());
    let pid = storm.target.pid;
    for round in 0..ROUNDS {
        let prefix = scratch.path().join(format!("core-{round}"));
        let mode: &[&str] = match round % 3 {
            0 => &["--mode", "cow"],
            1 => &["--mode", "stop"],
            _ => &["--no-ptrace"],
        };
        let mut child = spawn_dump(mode, &prefix, pid, Stdio::piped());
        std::thread::sleep(Duration::from_micros(1500 * (round % 20) as u64));
        storm.target.signal(libc::SIGSTOP);
        let status = wait_exit(&mut child.0, DUMP_TIMEOUT, "coresnap did not finish");
        let stderr = take_stderr(&mut child.0);
        assert!(
            status.success(),
            "round {round} ({mode:?}): coresnap failed: {status:?}\n{stderr}"
        );
        assert_stopped_untraced(pid);
        storm.target.signal(libc::SIGCONT);
        assert_running_untraced(pid);
        let core = core_path(&prefix, pid);
        let _ = std::fs::remove_file(&core);
        let _ = std::fs::remove_file(core.with_extension(format!("{pid}.json")));
    }
    storm.assert_nothing_lost("sigstop");
}

/// The target ends while coresnap dumps it, at a different moment of each
/// dump: SIGKILLed, or calling exit() itself on the SIGTERM the test sends
/// (in stop mode it can only do so once coresnap lets it go). Either the
/// dump finished first and the core is whole (both ELF readers read the
/// same notes and segments from it), or coresnap fails saying that the
/// process exited and leaves no file behind. It never hangs, the target
/// does end (it was not left stopped), and until then no signal was
/// duplicated, altered or invented. Signals still queued when the target
/// died are lost with it, as they would be without a dump.
#[test]
fn target_exiting_mid_dump() {
    const ROUNDS: usize = 20;
    let scratch = Scratch::new("signals-exit");
    let mut outcomes = std::collections::BTreeMap::<String, [usize; 2]>::new();
    let (mut sent_total, mut received_total) = (0u64, 0u64);
    for round in 0..ROUNDS {
        for mode in ["stop", "cow"] {
            let (how, signal) = if round % 2 == 0 {
                ("SIGKILL", libc::SIGKILL)
            } else {
                ("exit()", libc::SIGTERM)
            };
            let run = scratch.path().join(format!("{mode}-{round}"));
            let out = run.join("out");
            std::fs::create_dir_all(&out).expect("create the round's directory");
            let mut storm = Storm::start(&run);
            let pid = storm.target.pid;
            let prefix = out.join("core");
            let mut child = spawn_dump(&["--mode", mode], &prefix, pid, Stdio::piped());
            let stderr = spawn_reader(child.0.stderr.take().unwrap());
            std::thread::sleep(Duration::from_micros(2000 * round as u64));
            storm.target.signal(signal);
            let status = wait_exit(
                &mut child.0,
                DUMP_TIMEOUT,
                &format!("{mode} round {round}: coresnap did not end after the target's {how}"),
            );
            let stderr = stderr
                .recv_timeout(Duration::from_secs(10))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let what = format!("{mode} round {round} ({how}): coresnap {status:?}:\n{stderr}");
            assert!(
                wait_until(STATE_TIMEOUT, || {
                    process_status(pid).is_none_or(|s| matches!(s.state, 'Z' | 'X'))
                }),
                "{what}\nthe target did not end: {:?}",
                all_task_status(pid)
                    .iter()
                    .map(|s| (s.tid, s.state, s.tracer))
                    .collect::<Vec<_>>()
            );
            let mut left: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            let finished = status.success();
            if finished {
                assert!(!stderr.contains("warning"), "{what}");
                let core = core_path(&prefix, pid);
                assert_eq!(
                    left,
                    [format!("core.{pid}"), format!("core.{pid}.json")],
                    "{what}"
                );
                common::elf_readers::assert_readers_agree(&core);
            } else {
                assert!(left.is_empty(), "{what}\nleft behind: {left:?}");
                assert!(
                    stderr.contains("exited"),
                    "{what}\nthe error does not say that the process exited"
                );
            }
            outcomes.entry(format!("{mode} {how}")).or_default()[usize::from(!finished)] += 1;

            // The target is gone: what it counted is final.
            let mut tally = Tally {
                sent: storm.stop_sender(),
                ..Tally::default()
            };
            let counts = storm.counts();
            tally.compare(&counts);
            assert_eq!(tally.duplicated, [0; 4], "{what}\n{tally:?}");
            counts.assert_intact(&what);
            sent_total += tally.sent.iter().map(|&n| u64::from(n)).sum::<u64>();
            received_total += tally.received.iter().map(|&n| u64::from(n)).sum::<u64>();
        }
    }
    eprintln!(
        "target exiting mid-dump: (finished, failed) per mode and exit: {outcomes:?}; numbered signals sent {sent_total}, received before the exit {received_total}"
    );
    assert!(
        outcomes
            .iter()
            .any(|(key, [_, failed])| key.starts_with("stop") && *failed > 0),
        "no stop-mode dump was interrupted by the target's exit: {outcomes:?}"
    );
}
