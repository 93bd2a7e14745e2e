//! `coresnap extract`: copying memory out of a core (or `.zst`).
//!
//! - [`raw`]: every PT_LOAD's bytes into its own file, named by the address
//!   range it holds, plus `index.tsv` listing address, size, permissions and
//!   mapped file of each, like memfetch's `mfetch.lst`; every file is
//!   created through [`crate::output::OutputDir`] (never through an
//!   existing name, mode 0600), and names from the core are escaped in the
//!   index ([`crate::escape::escape_tsv_field`]);
//! - [`range`]: the bytes of one address range, checked to be wholly present
//!   before anything is written.

use super::elf::CoreFile;
use super::memory::{MemError, Memory};
use super::notes::{NT_FILE, nt_file};
use super::source::ByteSource;
use crate::escape::escape_tsv_field;
use crate::output::{OutputDir, OutputError};
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes copied per read.
const CHUNK: usize = 1 << 20;
const PAGE: usize = crate::elf::layout::PAGE_SIZE as usize;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{0}")]
    Memory(#[from] MemError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not empty; pass --force to write into it")]
    NotEmpty { path: PathBuf },
    #[error("reading the core at file offset {offset:#x}: {source}")]
    Read { offset: u64, source: io::Error },
    #[error("writing to standard output: {0}")]
    Stdout(io::Error),
    #[error(
        "the core has {count} segments with data, more files than extract --raw creates ({limit}); nothing was written: copy the ranges you need with --addr and --len"
    )]
    TooManyFiles { count: usize, limit: usize },
}

/// Most files `extract --raw` creates (one per segment with data): a core
/// can list any number of segments, one byte each. Real processes have at
/// most `vm.max_map_count` mappings, 65,530 by default.
pub const MAX_RAW_FILES: usize = 100_000;

/// One file written by [`raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFile {
    pub start: u64,
    /// Mapping size (`p_memsz`).
    pub mem_size: u64,
    /// Bytes in the file (`p_filesz`, less what a truncated core lacks).
    pub size: u64,
    pub perms: String,
    pub mapped_file: Option<String>,
    /// File name inside the directory (`None`: nothing in the core).
    pub name: Option<String>,
}

/// Writes each PT_LOAD's bytes to `dir/START-END.bin` (END = START + bytes
/// present; zero pages become holes) and `dir/index.tsv`. On an error the
/// files it created are removed again (and the directory, if it created
/// it).
pub fn raw<S: ByteSource>(
    core: &CoreFile<S>,
    dir: &Path,
    force: bool,
) -> Result<Vec<RawFile>, ExtractError> {
    let count = core
        .loads()
        .filter(|seg| core.present(seg).min(seg.memsz) > 0)
        .count();
    if count > MAX_RAW_FILES {
        return Err(ExtractError::TooManyFiles {
            count,
            limit: MAX_RAW_FILES,
        });
    }
    let out_dir = OutputDir::create_or_open(dir)?;
    if !out_dir.created() && !force && !out_dir.is_empty()? {
        return Err(ExtractError::NotEmpty {
            path: dir.to_path_buf(),
        });
    }
    let mut created = Vec::new();
    let result = write_raw(core, &out_dir, force, &mut created);
    if result.is_err() {
        for name in &created {
            let _ = out_dir.remove_file(name);
        }
        out_dir.remove_if_created();
    }
    result
}

fn write_raw<S: ByteSource>(
    core: &CoreFile<S>,
    out_dir: &OutputDir,
    force: bool,
    created: &mut Vec<String>,
) -> Result<Vec<RawFile>, ExtractError> {
    let dir = out_dir.path();
    // Without --force the directory was empty: a name that exists when a
    // file is created was put there by someone else meanwhile.
    let create = |name: &str| {
        out_dir.create_file(name, force).map_err(|e| match e {
            OutputError::Exists { path } => OutputError::Raced {
                path,
                dir: dir.to_path_buf(),
            },
            other => other,
        })
    };
    let files = core
        .notes
        .iter()
        .find(|n| n.name == "CORE" && n.n_type == NT_FILE)
        .map(|n| nt_file(&n.desc).0)
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    for seg in core.loads() {
        let present = core.present(seg).min(seg.memsz);
        let mapped_file = files
            .iter()
            .find(|f| f.start <= seg.vaddr && seg.vaddr < f.end)
            .map(|f| f.path.clone());
        let mut entry = RawFile {
            start: seg.vaddr,
            mem_size: seg.memsz,
            size: present,
            perms: seg.perms(),
            mapped_file,
            name: None,
        };
        if present > 0 {
            let name = format!(
                "{:016x}-{:016x}.bin",
                seg.vaddr,
                seg.vaddr.saturating_add(present)
            );
            let path = dir.join(&name);
            let mut file = create(&name)?;
            created.push(name.clone());
            copy_sparse(
                core.source(),
                seg.offset,
                present,
                &mut file,
                &mut buf,
                &path,
            )?;
            entry.name = Some(name);
        }
        out.push(entry);
    }
    let mut text = String::from("# start\tend\tsize_in_core\tperms\tfile\tmapped_file\n");
    for e in &out {
        text.push_str(&format!(
            "{:#x}\t{:#x}\t{}\t{}\t{}\t{}\n",
            e.start,
            e.start.saturating_add(e.mem_size),
            e.size,
            e.perms,
            e.name.as_deref().unwrap_or("-"),
            e.mapped_file
                .as_deref()
                .map_or("-".into(), escape_tsv_field)
        ));
    }
    let index = dir.join("index.tsv");
    let mut index_file = create("index.tsv")?;
    created.push("index.tsv".into());
    index_file
        .write_all(text.as_bytes())
        .map_err(|source| ExtractError::Write {
            path: index,
            source,
        })?;
    Ok(out)
}

fn copy_sparse<S: ByteSource>(
    source: &S,
    offset: u64,
    len: u64,
    file: &mut File,
    buf: &mut [u8],
    path: &Path,
) -> Result<(), ExtractError> {
    let werr = |source| ExtractError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        source
            .read_exact_at(offset + done, &mut buf[..n])
            .map_err(|source| ExtractError::Read {
                offset: offset + done,
                source,
            })?;
        for (i, page) in buf[..n].chunks(PAGE).enumerate() {
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            file.seek(SeekFrom::Start(done + (i * PAGE) as u64))
                .map_err(werr)?;
            file.write_all(page).map_err(werr)?;
        }
        done += n as u64;
    }
    file.set_len(len).map_err(werr)?;
    Ok(())
}

/// Writes `len` bytes of memory at `addr` to `out`; fails, writing nothing,
/// when any of them is not in the core.
pub fn range<S: ByteSource>(
    core: &CoreFile<S>,
    addr: u64,
    len: u64,
    out: &mut impl Write,
) -> Result<(), ExtractError> {
    let memory = Memory::new(core);
    if addr.checked_add(len).is_none() {
        return Err(ExtractError::Memory(MemError::Unmapped { addr: u64::MAX }));
    }
    memory.check(addr, len)?;
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        memory.read(addr + done, &mut buf[..n])?;
        out.write_all(&buf[..n]).map_err(ExtractError::Stdout)?;
        done += n as u64;
    }
    out.flush().map_err(ExtractError::Stdout)?;
    Ok(())
}
