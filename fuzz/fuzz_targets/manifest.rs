//! Manifest parsing on arbitrary bytes, as verify reads a manifest: the
//! schema and version checks, the integrity hash over the canonical form
//! and the typed model; and finding the CORESNAP note among a core's notes.
#![no_main]

use coresnap::manifest::{Manifest, note};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((manifest, _intact)) = Manifest::parse(data) {
        // What was parsed writes out as a manifest that parses again.
        let text = manifest.to_json();
        Manifest::parse(text.as_bytes()).expect("a manifest coresnap wrote parses");
    }
    let _ = note::find(data);
});
