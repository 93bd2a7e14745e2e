//! The note splitter and every note decoder on arbitrary bytes (a PT_NOTE
//! segment's contents).
#![no_main]

use coresnap::inspect::{elf, notes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (found, _problem) = elf::split_notes(data, 0, 4096);
    for note in &found {
        let d = &note.desc;
        let _ = notes::type_name(&note.name, note.n_type);
        let _ = notes::prstatus(d);
        let _ = notes::prpsinfo(d);
        let _ = notes::siginfo(d);
        let _ = notes::auxv(d);
        let _ = notes::nt_file(d);
        let x = notes::xstate(d);
        if let Some(xcr0) = x.xcr0 {
            let _ = notes::xcr0_features(xcr0);
        }
        if let Some(s) = notes::siginfo(d) {
            let _ = notes::signal_name(s.signo);
        }
    }
});
