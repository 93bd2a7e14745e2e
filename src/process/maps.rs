//! Parser for `/proc/PID/smaps`, byte-exact: mapped file names are bytes, not
//! UTF-8, and may contain spaces (the kernel escapes only `\n`, as `\012`).

use thiserror::Error;

/// One line of `/proc/PID/maps` plus the smaps fields the dump needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    /// `s` in the permissions: MAP_SHARED (else private, copy-on-write).
    pub shared: bool,
    /// Offset into the mapped file, in bytes.
    pub offset: u64,
    pub device: (u32, u32),
    pub inode: u64,
    /// The name as the kernel prints it: a path (with ` (deleted)` when
    /// unlinked), a pseudo name such as `[stack]` or `[vdso]`, or empty.
    pub name: Vec<u8>,
    /// `Anonymous:` in kB: private pages that have been written.
    pub anonymous_kb: u64,
    /// `Swap:` in kB.
    pub swap_kb: u64,
    /// `Rss:` in kB.
    pub rss_kb: u64,
    /// `Shared_Clean:` + `Shared_Dirty:` in kB: resident pages that other
    /// processes map too (for private memory: pages still shared
    /// copy-on-write with a parent or child since a fork, or merged by KSM).
    pub shared_kb: u64,
    /// Two-letter `VmFlags` mnemonics (`dd`, `io`, `pf`, `ht`...).
    pub vm_flags: Vec<[u8; 2]>,
}

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn has_vm_flag(&self, flag: &[u8; 2]) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }

    /// A mapping backed by a file (including shmem, memfd and deleted files).
    pub fn is_file(&self) -> bool {
        self.name.first() == Some(&b'/')
    }

    /// The file was unlinked: memfd, SysV shm, shared anonymous memory
    /// (`/dev/zero (deleted)`) and deleted files all look like this.
    pub fn is_deleted_file(&self) -> bool {
        self.is_file() && self.name.ends_with(b" (deleted)")
    }

    /// Pseudo mappings the kernel names in brackets (`[vdso]`, `[heap]`...).
    pub fn pseudo_name(&self) -> Option<&[u8]> {
        (self.name.first() == Some(&b'[')).then_some(&self.name[..])
    }

    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MapsError {
    #[error("line {line} of smaps is malformed: {what}")]
    Malformed { line: usize, what: &'static str },
}

/// Parses the whole text of `/proc/PID/smaps` (or `maps`, in which case the
/// smaps-only fields stay zero).
pub fn parse_smaps(text: &[u8]) -> Result<Vec<Mapping>, MapsError> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let line_no = index + 1;
        if is_mapping_header(line) {
            mappings.push(parse_header(line).map_err(|what| MapsError::Malformed {
                line: line_no,
                what,
            })?);
            continue;
        }
        let Some(current) = mappings.last_mut() else {
            return Err(MapsError::Malformed {
                line: line_no,
                what: "field before any mapping",
            });
        };
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        match key {
            b"Anonymous" => current.anonymous_kb = parse_kb(value),
            b"Swap" => current.swap_kb = parse_kb(value),
            b"Rss" => current.rss_kb = parse_kb(value),
            b"Shared_Clean" | b"Shared_Dirty" => current.shared_kb += parse_kb(value),
            b"VmFlags" => {
                current.vm_flags = value
                    .split(|&b| b == b' ')
                    .filter(|w| w.len() == 2)
                    .map(|w| [w[0], w[1]])
                    .collect();
            }
            _ => {}
        }
    }
    Ok(mappings)
}

/// A header starts with `start-end ` in lowercase hex; field lines start with
/// a capitalised key.
fn is_mapping_header(line: &[u8]) -> bool {
    let first_space = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let range = &line[..first_space];
    range.contains(&b'-') && range.iter().all(|&b| b == b'-' || b.is_ascii_hexdigit())
}

fn parse_header(line: &[u8]) -> Result<Mapping, &'static str> {
    let mut rest = line;
    let mut field = || -> Result<&[u8], &'static str> {
        while rest.first() == Some(&b' ') {
            rest = &rest[1..];
        }
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let (word, tail) = rest.split_at(end);
        rest = tail;
        if word.is_empty() {
            Err("missing field")
        } else {
            Ok(word)
        }
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let device = field()?;
    let inode = field()?;
    let dash = range
        .iter()
        .position(|&b| b == b'-')
        .ok_or("no '-' in address range")?;
    let start = hex(&range[..dash]).ok_or("bad start address")?;
    let end = hex(&range[dash + 1..]).ok_or("bad end address")?;
    if end < start || perms.len() != 4 {
        return Err("bad range or permissions");
    }
    let colon = device.iter().position(|&b| b == b':').ok_or("bad device")?;
    let major = hex(&device[..colon]).ok_or("bad device major")? as u32;
    let minor = hex(&device[colon + 1..]).ok_or("bad device minor")? as u32;
    let inode = std::str::from_utf8(inode)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("bad inode")?;
    // The name is the rest of the line after the padding, spaces and all.
    let name_start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    Ok(Mapping {
        start,
        end,
        readable: perms[0] == b'r',
        writable: perms[1] == b'w',
        executable: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: hex(offset).ok_or("bad offset")?,
        device: (major, minor),
        inode,
        name: unescape_newlines(&rest[name_start..]),
        ..Mapping::default()
    })
}

fn hex(digits: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

fn parse_kb(value: &[u8]) -> u64 {
    value
        .split(|&b| b == b' ')
        .find(|w| !w.is_empty())
        .and_then(|w| std::str::from_utf8(w).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The kernel prints a `\n` in a path as `\012` (seq_file_path); undo it so
/// NT_FILE carries the real name, as the kernel's own cores do.
fn unescape_newlines(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        if name[i..].starts_with(b"\\012") {
            out.push(b'\n');
            i += 4;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
55d4c0a00000-55d4c0a02000 r--p 00000000 fe:00 1234                       /usr/bin/odd name\xff (deleted)
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me dw sd
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 
Size:               1024 kB
Rss:                  12 kB
Shared_Clean:          4 kB
Shared_Dirty:          4 kB
Private_Dirty:         4 kB
Anonymous:            12 kB
Swap:                  4 kB
VmFlags: rd wr mr mw me ac dd
7ffd1000-7ffd3000 r-xp 00000000 00:00 0                          [vdso]
VmFlags: rd ex mr mw me de sd
7f0000200000-7f0000201000 rw-s 00001000 00:05 77                         /tmp/new\\012line
VmFlags: rd wr sh mr mw me ms sd
";

    #[test]
    fn parses_names_as_bytes_with_spaces_and_fields() {
        let maps = parse_smaps(SAMPLE).unwrap();
        assert_eq!(maps.len(), 4);
        let exe = &maps[0];
        assert_eq!((exe.start, exe.end), (0x55d4c0a00000, 0x55d4c0a02000));
        assert!(exe.readable && !exe.writable && !exe.shared);
        assert_eq!(exe.name, b"/usr/bin/odd name\xff (deleted)".to_vec());
        assert!(exe.is_deleted_file());
        assert_eq!(exe.device, (0xfe, 0));
        let anon = &maps[1];
        assert!(anon.name.is_empty() && !anon.is_file());
        assert_eq!((anon.rss_kb, anon.anonymous_kb, anon.swap_kb), (12, 12, 4));
        assert_eq!(anon.shared_kb, 8);
        assert!(anon.has_vm_flag(b"dd"));
        assert_eq!(maps[2].pseudo_name(), Some(&b"[vdso]"[..]));
        assert!(maps[3].shared);
        assert_eq!(maps[3].offset, 0x1000);
        assert_eq!(maps[3].name, b"/tmp/new\nline".to_vec());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(parse_smaps(b"Size: 4 kB\n").is_err());
        assert!(parse_smaps(b"zz-10 r--p 0 0:0 0\n").is_err());
        assert!(parse_smaps(b"10-0 r--p 0 0:0 0\n").is_err());
        assert!(parse_smaps(b"0-10 r--p\n").is_err());
    }

    #[test]
    fn reads_own_smaps() {
        let text = std::fs::read("/proc/self/smaps").unwrap();
        let maps = parse_smaps(&text).unwrap();
        assert!(maps.iter().any(|m| m.pseudo_name() == Some(b"[stack]")));
        assert!(maps.windows(2).all(|w| w[0].end <= w[1].start));
    }
}
