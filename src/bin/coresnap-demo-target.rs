//! The program `coresnap demo` dumps: a few threads, each parked in its own
//! named function with recognisable data on its stack and in the heap, so
//! the core shows something worth looking at. Prints one `ready` line with
//! its pid and thread ids, then waits until killed.

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

#[inline(never)]
fn park_forever(label: &str) -> ! {
    let marker = format!("coresnap demo thread: {label}");
    loop {
        std::thread::park_timeout(Duration::from_secs(3600));
        std::hint::black_box(&marker);
    }
}

#[inline(never)]
fn checksum_worker(ready: mpsc::Sender<i32>) -> ! {
    let table: Vec<u64> = (0..4096u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    ready.send(nix_gettid()).expect("main thread waits");
    std::hint::black_box(&table);
    park_forever("checksum_worker")
}

#[inline(never)]
fn network_poller(ready: mpsc::Sender<i32>) -> ! {
    ready.send(nix_gettid()).expect("main thread waits");
    park_forever("network_poller")
}

#[inline(never)]
fn log_flusher(ready: mpsc::Sender<i32>) -> ! {
    ready.send(nix_gettid()).expect("main thread waits");
    park_forever("log_flusher")
}

fn nix_gettid() -> i32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let (tx, rx) = mpsc::channel();
    let workers: [fn(mpsc::Sender<i32>) -> !; 3] = [checksum_worker, network_poller, log_flusher];
    let names = ["checksum", "poller", "flusher"];
    for (worker, name) in workers.into_iter().zip(names) {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || worker(tx))
            .expect("spawn demo thread");
    }
    let mut tids: Vec<i32> = (0..3).map(|_| rx.recv().expect("worker reports")).collect();
    tids.sort_unstable();
    let greeting = String::from("hello from the coresnap demo heap");
    let tids: Vec<String> = tids.iter().map(i32::to_string).collect();
    println!(
        "ready pid={} tids={} greeting={:p}",
        std::process::id(),
        tids.join(","),
        greeting.as_ptr()
    );
    std::io::stdout().flush().expect("stdout");
    std::hint::black_box(&greeting);
    park_forever("main")
}
