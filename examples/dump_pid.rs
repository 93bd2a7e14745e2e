//! Dump a process with the library: `cargo run --example dump_pid -- PID [PATH]`.
//! Writes a sparse core file, then the same core into an in-memory buffer
//! through the `Write` API, and prints what was captured.

use coresnap::{DumpOptions, dump_to_path, dump_to_writer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let pid: i32 = args.next().ok_or("usage: dump_pid PID [PATH]")?.parse()?;
    let path = args.next().unwrap_or_else(|| format!("core.{pid}"));

    let options = DumpOptions {
        overwrite: true,
        ..DumpOptions::default()
    };
    let report = dump_to_path(pid, path.as_ref(), &options)?;
    println!(
        "{path}: {} threads, {} of {} mappings, {} bytes ({} on disk), target paused {:?}",
        report.threads,
        report.mappings_dumped,
        report.mappings,
        report.core_len,
        report.disk_usage.unwrap_or(0),
        report.pause
    );
    for range in &report.unreadable {
        println!(
            "unreadable: {:#x}+{:#x} (errno {})",
            range.start, range.len, range.errno
        );
    }

    // Any `Write` works too: here a Vec, elsewhere a socket or a pipe.
    let mut buffer = Vec::new();
    // No manifest for a throwaway copy: nothing would be written, only hashed.
    let in_memory = DumpOptions {
        manifest: false,
        ..DumpOptions::default()
    };
    let report = dump_to_writer(pid, &mut buffer, &in_memory)?;
    assert_eq!(buffer.len() as u64, report.core_len);
    println!(
        "in memory: {} bytes, starting with {:?}",
        buffer.len(),
        &buffer[..4]
    );
    Ok(())
}
