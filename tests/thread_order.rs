//! Threads appear in a core in the order the kernel lists them in
//! `/proc/PID/task` (main thread first, then in order of creation), which
//! is the order in which `gdb -p` numbers them, also once thread ids have
//! wrapped around `pid_max` (issue #14: a Go server whose last thread got
//! id 894 was numbered 2 by gdb in coresnap's core, 6 when attached).
//!
//! The wrap is forced in a new pid namespace: its `ns_last_pid` is set just
//! below its `pid_max` before threads.c starts, so the main thread and the
//! first threads get the namespace's highest ids and the later threads
//! start again from the bottom. coresnap then dumps the target from inside
//! that namespace, where the core's ids are the wrapped ones and sorting
//! them would put the last threads first, and from outside it, in stop and
//! in cow mode; gdb must number the threads of every core as it numbers
//! them when it attaches to the live target in the namespace.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// threads.c started in a new pid namespace whose ids wrap after its first
/// threads. Dropping it kills the namespace's init, and with it the target.
struct WrappedNamespace {
    unshare: Child,
    /// The namespace's init (a shell), as the host numbers it.
    init: i32,
    /// The target, as the host numbers it.
    target: i32,
    /// The target, as its namespace numbers it.
    target_inside: i32,
}

impl WrappedNamespace {
    fn start(exe: &Path) -> WrappedNamespace {
        // Five ids below the top: the main thread and two more threads get
        // the highest ids (the target takes one id between its main
        // thread and its first thread), the last two wrap.
        let script = r#"max=$(cat /proc/sys/kernel/pid_max) || exit 1
            echo $((max - 5)) > /proc/sys/kernel/ns_last_pid || exit 1
            "$0" &
            wait"#;
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .args(["sh", "-c", script])
            .arg(exe)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start unshare");
        let stdout = unshare.stdout.take().expect("unshare's stdout");
        let mut namespace = WrappedNamespace {
            unshare,
            init: 0,
            target: 0,
            target_inside: 0,
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let ready = rx.recv_timeout(READY_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "threads.c in a new pid namespace printed no ready line within {READY_TIMEOUT:?} ({e}); unshare: {:?}",
                namespace.unshare.try_wait()
            )
        });
        namespace.target_inside = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid= in the ready line {ready:?}"));
        let unshare_pid = namespace.unshare.id() as i32;
        namespace.init = only_child(unshare_pid);
        namespace.target = only_child(namespace.init);
        assert_eq!(
            tid_inside(namespace.target, namespace.target),
            namespace.target_inside,
            "the namespace's child is not the target that printed {ready:?}"
        );
        namespace
    }

    /// `nsenter` into the namespace (its pids and its /proc) to run
    /// `program`.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.init.to_string())
            .args(["--pid", "--mount", "--"])
            .arg(program);
        cmd
    }
}

impl Drop for WrappedNamespace {
    fn drop(&mut self) {
        // unshare --kill-child passes the SIGKILL on to the namespace's
        // init, and the kernel kills every process in a namespace whose
        // init is gone.
        let _ = self.unshare.kill();
        let reaped = wait_until(Duration::from_secs(10), || {
            matches!(self.unshare.try_wait(), Ok(Some(_)) | Err(_))
        });
        if !reaped {
            eprintln!("warning: unshare (pid {}) not reaped", self.unshare.id());
        }
        if self.target > 0
            && !wait_until(Duration::from_secs(10), || {
                !Path::new(&format!("/proc/{}", self.target)).exists()
            })
        {
            eprintln!("warning: target {} still exists", self.target);
        }
    }
}

/// The one child of `pid`.
fn only_child(pid: i32) -> i32 {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let mut children = Vec::new();
    let found = wait_until(STATE_TIMEOUT, || {
        children = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
            .collect();
        children.len() == 1
    });
    assert!(found, "{path} does not list one child: {children:?}");
    children[0]
}

/// `/proc/PID/task` in the order the kernel lists it (no sorting), as the
/// target's namespace numbers the threads.
fn kernel_order_inside(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/task: {e}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .map(|tid| tid_inside(pid, tid))
        .collect()
}

/// The LWPs of gdb's `info threads`, by gdb's thread number.
fn lwps_by_number(info_threads: &str) -> Vec<i32> {
    let mut rows = parse_info_threads(info_threads);
    rows.sort_by_key(|r| r.num);
    rows.iter().map(|r| r.lwp).collect()
}

fn gdb_args(cmd: &mut Command) -> &mut Command {
    cmd.args(["-nx", "-batch"])
        .args(["-iex", "set debuginfod enabled off"])
        .args(["-ex", "set pagination off"])
        .args(["-ex", "info threads"])
        .env("LC_ALL", "C")
}

#[test]
fn threads_in_the_core_keep_the_kernels_order_when_ids_wrap() {
    require!(
        ptrace_access(),
        capability(
            Capability::SysAdmin,
            "create a pid namespace and set its ns_last_pid"
        ),
        program("unshare", "--version", "util-linux"),
        program("nsenter", "--version", "util-linux"),
        program("gdb", "--version", "gdb"),
    );
    let scratch = Scratch::new("thread-order");
    let exe = build(Program::Threads);
    let namespace = WrappedNamespace::start(&exe);
    let target = namespace.target;
    wait_threads_sleeping(target, &[]);

    let kernel_order = kernel_order_inside(target);
    assert_eq!(kernel_order.len(), 5, "threads.c has five threads");
    assert!(
        !kernel_order.is_sorted(),
        "the setup did not wrap the thread ids: /proc/{target}/task lists {kernel_order:?}"
    );

    // The reference: gdb attached to the live target inside its namespace.
    let mut attach = namespace.command("gdb");
    gdb_args(&mut attach)
        .arg("-p")
        .arg(namespace.target_inside.to_string());
    let attached = lwps_by_number(&run_debugger(&mut attach));
    assert_eq!(
        attached, kernel_order,
        "gdb -p numbers the threads in /proc/PID/task order"
    );
    assert_running_untraced(target);

    for mode in ["stop", "cow"] {
        let mut args = vec!["--mode", mode];
        if mode == "cow" {
            args.push("--no-fallback");
        }
        let inside_prefix = scratch.path().join(format!("inside-{mode}"));
        let outside_prefix = scratch.path().join(format!("outside-{mode}"));
        let mut inside = namespace.command(Dumper::Coresnap.program());
        inside
            .args(&args)
            .arg("-o")
            .arg(&inside_prefix)
            .arg(namespace.target_inside.to_string());
        let mut outside = Command::new(Dumper::Coresnap.program());
        outside
            .args(&args)
            .arg("-o")
            .arg(&outside_prefix)
            .arg(target.to_string());
        let dumps = [
            (
                "inside the namespace",
                inside,
                format!("{}.{}", inside_prefix.display(), namespace.target_inside),
            ),
            (
                "outside the namespace",
                outside,
                format!("{}.{target}", outside_prefix.display()),
            ),
        ];
        for (where_, mut cmd, core) in dumps {
            let res = run_with_timeout(&mut cmd, DUMP_TIMEOUT, false);
            assert!(
                res.success(),
                "coresnap --mode {mode} {where_} failed:\n{}",
                res.describe()
            );
            assert_running_untraced(target);
            let mut load = Command::new("gdb");
            gdb_args(&mut load)
                .arg(PathBuf::from(format!("/proc/{target}/exe")))
                .arg(&core);
            let out = run_debugger(&mut load);
            assert_eq!(
                lwps_by_number(&out),
                attached,
                "gdb's thread numbers in the core coresnap --mode {mode} wrote {where_} ({core}), against gdb -p:\n{out}"
            );
        }
    }
}
