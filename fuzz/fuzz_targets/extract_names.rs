//! extract --raw on arbitrary cores: whatever the core's segments and
//! NT_FILE names, it creates only `index.tsv` and `START-END.bin` files,
//! all regular, inside the directory it is given, and every row of the
//! index has its six fields (names from the core cannot add tabs, lines or
//! control characters).
#![no_main]

use coresnap::inspect::elf::CoreFile;
use coresnap::inspect::extract;
use coresnap::inspect::source::Bytes;
use libfuzzer_sys::fuzz_target;

fn is_region_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".bin") else {
        return false;
    };
    let Some((start, end)) = stem.split_once('-') else {
        return false;
    };
    [start, end]
        .iter()
        .all(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(core) = CoreFile::parse(Bytes(data)) else {
        return;
    };
    // Keep each run short: the names matter, not the count.
    if core.loads().count() > 256 {
        return;
    }
    let dir = std::path::PathBuf::from(format!(
        "/dev/shm/coresnap-fuzz-extract-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let result = extract::raw(&core, &dir, false);
    if let Ok(files) = &result {
        let index = std::fs::read_to_string(dir.join("index.tsv")).expect("index.tsv");
        let rows: Vec<&str> = index.lines().collect();
        assert_eq!(rows.len(), files.len() + 1, "{index:?}");
        for row in rows {
            assert_eq!(row.split('\t').count(), 6, "{row:?}");
            assert!(!row.chars().any(|c| c.is_control() && c != '\t'), "{row:?}");
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries {
            let entry = entry.expect("entry");
            let name = entry.file_name().into_string().expect("UTF-8 name");
            assert!(name == "index.tsv" || is_region_name(&name), "{name:?}");
            assert!(entry.file_type().expect("type").is_file(), "{name:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});
