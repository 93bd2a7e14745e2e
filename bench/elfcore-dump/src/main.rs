// Minimal core writer around Microsoft's `elfcore` crate, used only as a
// comparison point in the coresnap benchmark.
// Usage: elfcore-dump PID OUTPUT
use std::{fs::File, io::BufWriter, process::exit};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: {} PID OUTPUT", args[0]);
        exit(2);
    }
    let pid: i32 = args[1].parse().expect("PID must be a number");
    let out = File::create(&args[2]).expect("cannot create output file");
    let builder = elfcore::CoreDumpBuilder::new(pid).unwrap_or_else(|e| {
        eprintln!("elfcore: cannot inspect pid {pid}: {e}");
        exit(1)
    });
    match builder.write(BufWriter::with_capacity(1 << 20, out)) {
        Ok(n) => eprintln!("elfcore: wrote {n} bytes"),
        Err(e) => {
            eprintln!("elfcore: dump failed: {e}");
            exit(1)
        }
    }
}
