//! `coresnap demo`: dump a bundled multi-threaded program and show the core.

use coresnap::{CancelToken, DumpOptions};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TARGET_NAME: &str = "coresnap-demo-target";

/// Kills the demo process on every path out of `run`.
struct DemoProcess(Child);

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_target() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    // `cargo run` puts both binaries side by side; `cargo test` runs us from
    // target/<profile>/, examples from target/<profile>/examples/.
    [dir.join(TARGET_NAME), dir.parent()?.join(TARGET_NAME)]
        .into_iter()
        .find(|p| p.is_file())
}

pub fn run(cancel: &CancelToken) -> ExitCode {
    match run_demo(cancel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("coresnap demo: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo(cancel: &CancelToken) -> Result<(), String> {
    let target = find_target()
        .ok_or_else(|| format!("cannot find {TARGET_NAME} next to this binary; build it with `cargo build --release` first"))?;
    let child = Command::new(&target)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", target.display()))?;
    let mut demo = DemoProcess(child);
    let pid = demo.0.id() as i32;
    let stdout = demo.0.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the demo program did not start within 10 s".to_string())?;
    println!(
        "demo program {} is running as pid {pid}: {}",
        target.display(),
        ready.trim()
    );

    let dir = tempfile::Builder::new()
        .prefix("coresnap-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create a directory: {e}"))?
        .keep();
    let core = dir.join(format!("core.{pid}"));
    let options = DumpOptions {
        cancel: cancel.clone(),
        ..DumpOptions::default()
    };
    let report = coresnap::dump_to_path(pid, &core, &options).map_err(|e| e.to_string())?;
    println!(
        "wrote {} ({} on disk, {} logical): {} threads, {} mappings dumped, demo paused {:.1} ms",
        core.display(),
        crate::human_bytes(report.disk_usage.unwrap_or(0)),
        crate::human_bytes(report.core_len),
        report.threads,
        report.mappings_dumped,
        report.pause.as_secs_f64() * 1000.0
    );
    println!(
        "open it with:\n  gdb {} {}",
        target.display(),
        core.display()
    );

    let gdb = Command::new("gdb")
        .args([
            "-nx",
            "-batch",
            "-ex",
            "info threads",
            "-ex",
            "thread apply all bt",
        ])
        .arg(&target)
        .arg(&core)
        .stdin(Stdio::null())
        .output();
    match gdb {
        Ok(out) => {
            println!(
                "\n$ gdb -nx -batch -ex 'info threads' -ex 'thread apply all bt' {} {}",
                target.display(),
                core.display()
            );
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
        Err(_) => println!("(gdb is not installed, so the backtraces are not shown here)"),
    }
    drop(demo);
    println!(
        "\nthe demo program has been stopped; the core stays in {}",
        dir.display()
    );
    Ok(())
}
