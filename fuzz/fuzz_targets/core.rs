//! The whole core reader on arbitrary bytes: ELF header, program headers
//! (PN_XNUM), notes, memory, module discovery from the core's own bytes,
//! unwinding (no files are read), and both renderings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = coresnap::inspect::fuzz_one(data);
});
