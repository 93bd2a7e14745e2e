//! Reading what lldb and eu-stack print about a core.

use std::collections::BTreeMap;

/// Parses `eu-stack` output: "TID n:" then "#k 0x... function" lines.
pub fn parse_eu_stack(text: &str) -> BTreeMap<i32, Vec<String>> {
    let mut m: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut cur = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("TID ") {
            cur = rest.trim_end_matches(':').trim().parse().ok();
            if let Some(tid) = cur {
                m.entry(tid).or_default();
            }
            continue;
        }
        let Some(tid) = cur else { continue };
        let l = line.trim_start();
        if !l.starts_with('#') {
            continue;
        }
        let mut w = l.split_whitespace();
        let _idx = w.next();
        let _pc = w.next();
        if let Some(f) = w.next() {
            m.get_mut(&tid).unwrap().push(f.to_string());
        }
    }
    m
}

/// Parses lldb's `thread list` (thread index -> tid) and `bt all` (thread
/// index -> function names) output.
pub fn parse_lldb(text: &str) -> (BTreeMap<u32, i32>, BTreeMap<u32, Vec<String>>) {
    let mut tids = BTreeMap::new();
    let mut frames: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut cur: Option<u32> = None;
    for line in text.lines() {
        let l = line.trim_start().trim_start_matches('*').trim_start();
        if let Some(rest) = l.strip_prefix("thread #") {
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let Ok(idx) = rest[..end].parse::<u32>() else {
                continue;
            };
            let rest = &rest[end..];
            if let Some(p) = rest.find("tid = ") {
                // `thread list` line.
                let r = &rest[p + 6..];
                let e = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                if let Ok(tid) = r[..e].parse() {
                    tids.insert(idx, tid);
                }
                cur = None;
            } else {
                // `bt all` thread header.
                cur = Some(idx);
                frames.entry(idx).or_default();
            }
            continue;
        }
        if let (Some(idx), Some(rest)) = (cur, l.strip_prefix("frame #")) {
            // frame #2: 0x... threads`main_wait at threads.c:109:13
            if let Some(tick) = rest.find('`') {
                let f = &rest[tick + 1..];
                let end = f.find([' ', '(']).unwrap_or(f.len());
                frames.get_mut(&idx).unwrap().push(f[..end].to_string());
            }
        }
    }
    (tids, frames)
}
