//! Reading the target's memory: `process_vm_readv` for speed, falling back
//! page by page to `/proc/PID/mem` (which also reads PROT_NONE pages), and
//! recording whatever stays unreadable instead of inventing bytes.
//!
//! Memory whose pages may be shared copy-on-write with another process (a
//! forked worker and its parent, KSM, coresnap's own clone in copy-on-write
//! mode) is read only through `/proc/PID/mem`: `process_vm_readv` pins the
//! pages it reads, and since Linux 5.19 pinning a shared anonymous page
//! makes the kernel copy it into the process first ("unsharing"). Reading a
//! forked worker that way would give it a private copy of all the memory it
//! shared, and read at a sixth of the speed (measured: 1 GiB shared with a
//! parent took 1.4 to 1.6 s and 1 GiB of new memory through
//! `process_vm_readv`, 0.22 s and none through `/proc/PID/mem`).
//!
//! A read can wait for the target itself: a page of a FUSE file whose
//! server is the frozen target, or of any file on a hung network file
//! system. Such waits end only when the reading thread is killed, so files
//! on FUSE and network file systems are read on a helper thread into its
//! own buffer: a read that makes no progress for [`READ_TIMEOUT`] is
//! abandoned to that thread, its range and the rest of its mapping
//! recorded as unreadable with `ETIME`, and the dump goes on. Other memory
//! waits at most for a local disk (userfaultfd, the one other wait on the
//! target, is skipped when the mappings are selected) and is read directly,
//! without the copy and the hand-over.

use nix::errno::Errno;
use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;
use serde::Serialize;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use thiserror::Error;

use crate::elf::layout::PAGE_SIZE as PAGE;

/// A range of the target that could not be read; it is left as zeros in the
/// core and listed in the dump report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub start: u64,
    pub len: u64,
    /// The errno of the last attempt (`/proc/PID/mem`).
    pub errno: i32,
}

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("cannot open /proc/{pid}/mem: {source}")]
    Open { pid: i32, source: std::io::Error },
    #[error("process {pid} exited while its memory was being read")]
    ProcessGone { pid: i32 },
}

/// Where the writer gets the target's memory from: the live process, or a
/// frozen copy of it.
pub trait MemorySource: Sync {
    /// Fills `buf` with the bytes at `addr`; pages that cannot be read are
    /// zeroed and appended to `unreadable`.
    fn read(
        &self,
        addr: u64,
        buf: &mut [u8],
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<(), MemoryError>;

    /// Reads several ranges into one buffer: `pieces` are (address, offset
    /// in `buf`, length), in increasing, non-overlapping offsets; bytes of
    /// `buf` outside them are left alone. Many small mappings are then one
    /// system call instead of one each.
    fn read_pieces(
        &self,
        pieces: &[(u64, usize, usize)],
        buf: &mut [u8],
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<(), MemoryError> {
        read_each(self, pieces, buf, unreadable)
    }
}

/// [`MemorySource::read_pieces`] one piece at a time.
pub fn read_each<S: MemorySource + ?Sized>(
    source: &S,
    pieces: &[(u64, usize, usize)],
    buf: &mut [u8],
    unreadable: &mut Vec<Unreadable>,
) -> Result<(), MemoryError> {
    for &(addr, at, len) in pieces {
        source.read(addr, &mut buf[at..at + len], unreadable)?;
    }
    Ok(())
}

impl MemorySource for MemoryReader {
    fn read(
        &self,
        addr: u64,
        buf: &mut [u8],
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<(), MemoryError> {
        MemoryReader::read(self, addr, buf, unreadable)
    }

    fn read_pieces(
        &self,
        pieces: &[(u64, usize, usize)],
        buf: &mut [u8],
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<(), MemoryError> {
        // One vectored read for all of them; where it stops short (a piece
        // that cannot be read), the rest goes piece by piece.
        if pieces
            .iter()
            .any(|&(addr, _, len)| self.may_be_shared(addr, len) || self.is_timed(addr, len))
        {
            return read_each(self, pieces, buf, unreadable);
        }
        let remote: Vec<RemoteIoVec> = pieces
            .iter()
            .map(|&(base, _, len)| RemoteIoVec {
                base: base as usize,
                len,
            })
            .collect();
        let got = {
            let mut local = Vec::with_capacity(pieces.len());
            let mut rest: &mut [u8] = buf;
            let mut consumed = 0;
            for &(_, at, len) in pieces {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(at - consumed);
                let (piece, tail) = tail.split_at_mut(len);
                local.push(IoSliceMut::new(piece));
                rest = tail;
                consumed = at + len;
            }
            match process_vm_readv(Pid::from_raw(self.pid), &mut local, &remote) {
                Ok(n) => n,
                Err(Errno::ESRCH) => return Err(MemoryError::ProcessGone { pid: self.pid }),
                Err(_) => 0,
            }
        };
        let mut before = 0;
        for &(addr, at, len) in pieces {
            if before + len > got {
                let done = got.saturating_sub(before);
                self.read(
                    addr + done as u64,
                    &mut buf[at + done..at + len],
                    unreadable,
                )?;
            }
            before += len;
        }
        Ok(())
    }
}

/// How long one read of a file or shared mapping may make no progress
/// before it is given up (recorded as unreadable with `ETIME`).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes asked of the helper thread per read: at least 200 KiB/s keeps a
/// slow but working file system within [`READ_TIMEOUT`].
const TIMED_STEP: usize = 1 << 20;

/// Reads one process's memory; usable from any thread (unlike ptrace).
pub struct MemoryReader {
    pid: i32,
    mem: Arc<File>,
    /// Sorted, disjoint address ranges whose pages may be shared
    /// copy-on-write with another process: read through `/proc/PID/mem`
    /// only.
    shared_ranges: Vec<(u64, u64)>,
    /// Mappings (sorted, disjoint) whose reads may wait for somebody else:
    /// read on the helper thread, with a time limit. The flag is set once
    /// a read there timed out: the rest of it is not tried again.
    timed_ranges: Vec<(u64, u64, AtomicBool)>,
    helper: Mutex<Option<TimedReader>>,
}

/// A thread that reads `/proc/PID/mem` into its own buffer, so that a read
/// that never returns can be left behind without anything pointing into
/// the caller's memory.
struct TimedReader {
    requests: mpsc::Sender<(u64, usize)>,
    results: mpsc::Receiver<TimedRead>,
}

/// What the helper read: the bytes from the start, and why it stopped short.
struct TimedRead {
    bytes: Vec<u8>,
    error: Option<Errno>,
}

impl TimedReader {
    fn start(mem: Arc<File>) -> Option<TimedReader> {
        let (requests, incoming) = mpsc::channel::<(u64, usize)>();
        let (outgoing, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("coresnap-timed-read".into())
            .spawn(move || {
                let mut buf = Vec::new();
                for (addr, len) in incoming {
                    buf.resize(len, 0);
                    let mut done = 0;
                    let mut error = None;
                    while done < len {
                        match mem.read_at(&mut buf[done..], addr + done as u64) {
                            Ok(0) => {
                                error = Some(Errno::EIO);
                                break;
                            }
                            Ok(n) => done += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                error =
                                    Some(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)));
                                break;
                            }
                        }
                    }
                    let bytes = buf[..done].to_vec();
                    if outgoing.send(TimedRead { bytes, error }).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(TimedReader { requests, results })
    }
}

/// Runs `work` on a thread of its own and waits at most `limit` for it:
/// for reads of files that may wait for the frozen target (a FUSE file it
/// serves). `None` when it did not finish in time; the thread is then left
/// to finish (or to end with coresnap).
pub fn with_time_limit<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (done, result) = mpsc::channel();
    std::thread::Builder::new()
        .name("coresnap-timed".into())
        .spawn(move || {
            let _ = done.send(work());
        })
        .ok()?;
    result.recv_timeout(limit).ok()
}

/// The file mappings of `pid` whose reads may wait for a process, maybe
/// the frozen target itself: files on FUSE and on network file systems.
/// Files on local disks, shared memory and private anonymous memory wait
/// at most for the disk, and are read directly. Without the target's
/// mount table, every file and shared mapping counts.
fn mappings_that_may_wait(pid: i32) -> Vec<(u64, u64, AtomicBool)> {
    let Ok(text) = std::fs::read(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let Ok(mappings) = crate::process::maps::parse_smaps(&text) else {
        return Vec::new();
    };
    let served = served_devices(pid);
    mappings
        .iter()
        .filter(|m| match &served {
            Some(devices) => m.is_file() && devices.contains(&m.device),
            None => m.shared || m.is_file(),
        })
        .map(|m| (m.start, m.end, AtomicBool::new(false)))
        .collect()
}

/// Devices (major, minor) of the file systems in `pid`'s mount namespace
/// whose data comes from another process or machine: FUSE (`fuse`,
/// `fuse.*`, `fuseblk`, virtiofs) and network file systems.
fn served_devices(pid: i32) -> Option<Vec<(u32, u32)>> {
    const SERVED: &[&str] = &[
        "fuse",
        "fuseblk",
        "virtiofs",
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "9p",
        "ceph",
        "afs",
        "glusterfs",
        "ncpfs",
        "coda",
        "orangefs",
        "lustre",
        "gfs2",
        "ocfs2",
    ];
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    let mut devices = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(device), Some(fstype)) = (fields.get(2), fields.get(dash + 1)) else {
            continue;
        };
        let base = fstype.split('.').next().unwrap_or(fstype);
        if !SERVED.contains(&base) {
            continue;
        }
        if let Some((major, minor)) = device.split_once(':')
            && let (Ok(major), Ok(minor)) = (major.parse(), minor.parse())
        {
            devices.push((major, minor));
        }
    }
    Some(devices)
}

impl MemoryReader {
    pub fn open(pid: i32) -> Result<MemoryReader, MemoryError> {
        // ESRCH: the process exited (or is exiting) since it was frozen.
        let mem = File::open(format!("/proc/{pid}/mem")).map_err(|source| {
            if source.raw_os_error() == Some(libc::ESRCH) {
                MemoryError::ProcessGone { pid }
            } else {
                MemoryError::Open { pid, source }
            }
        })?;
        Ok(MemoryReader {
            pid,
            mem: Arc::new(mem),
            shared_ranges: Vec::new(),
            timed_ranges: mappings_that_may_wait(pid),
            helper: Mutex::new(None),
        })
    }

    /// A reader for a process made with fork/clone from the target, whose
    /// private memory is all shared copy-on-write with it.
    pub fn open_clone(pid: i32) -> Result<MemoryReader, MemoryError> {
        let mut reader = MemoryReader::open(pid)?;
        reader.shared_ranges = vec![(0, u64::MAX)];
        Ok(reader)
    }

    /// Declares the ranges whose pages other processes may share
    /// copy-on-write (smaps `Shared_*` of private memory); from then on
    /// they are read without pinning.
    pub fn avoid_unsharing(&mut self, mut ranges: Vec<(u64, u64)>) {
        ranges.sort_unstable();
        self.shared_ranges = ranges;
    }

    fn may_be_shared(&self, addr: u64, len: usize) -> bool {
        let end = addr + len as u64;
        // The first range that ends after `addr` is the only candidate.
        let i = self.shared_ranges.partition_point(|&(_, e)| e <= addr);
        self.shared_ranges.get(i).is_some_and(|&(s, _)| s < end)
    }

    /// Fills `buf` with the bytes at `addr`. Pages that cannot be read are
    /// zeroed and appended to `unreadable` (adjacent ones merged).
    pub fn read(
        &self,
        addr: u64,
        buf: &mut [u8],
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<(), MemoryError> {
        let mut done = 0usize;
        while done < buf.len() {
            let here = addr + done as u64;
            let rest = &mut buf[done..];
            let end = here + rest.len() as u64;
            let i = self.timed_ranges.partition_point(|(_, e, _)| *e <= here);
            let n = match self.timed_ranges.get(i) {
                Some((s, e, stalled)) if *s <= here => {
                    let n = ((*e).min(end) - here) as usize;
                    self.read_timed(here, &mut rest[..n], stalled, unreadable)?;
                    n
                }
                Some((s, _, _)) if *s < end => {
                    let n = (*s - here) as usize;
                    self.read_direct(here, &mut rest[..n], unreadable)?;
                    n
                }
                _ => {
                    self.read_direct(here, rest, unreadable)?;
                    rest.len()
                }
            };
            done += n;
        }
        Ok(())
    }

    /// Whether any of `addr..addr + len` is read on the helper thread.
    fn is_timed(&self, addr: u64, len: usize) -> bool {
        let end = addr + len as u64;
        let i = self.timed_ranges.partition_point(|(_, e, _)| *e <= addr);
        self.timed_ranges.get(i).is_some_and(|(s, _, _)| *s < end)
    }

    /// Reads a range of one mapping that may wait for somebody else, on the
    /// helper thread, [`TIMED_STEP`] at a time, each within [`READ_TIMEOUT`].
    fn read_timed(
        &self,
        addr: u64,
        buf: &mut [u8],
        stalled: &AtomicBool,
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<(), MemoryError> {
        let mut done = 0usize;
        while done < buf.len() {
            let here = addr + done as u64;
            let len = (buf.len() - done).min(TIMED_STEP);
            let chunk = &mut buf[done..done + len];
            let timed_out = |chunk: &mut [u8], unreadable: &mut Vec<Unreadable>| {
                chunk.fill(0);
                record(
                    unreadable,
                    Unreadable {
                        start: here,
                        len: chunk.len() as u64,
                        errno: libc::ETIME,
                    },
                );
            };
            if stalled.load(Ordering::Relaxed) {
                timed_out(chunk, unreadable);
                done += len;
                continue;
            }
            let mut helper = self.helper.lock().unwrap_or_else(|e| e.into_inner());
            if helper.is_none() {
                *helper = TimedReader::start(Arc::clone(&self.mem));
            }
            let Some(reader) = helper.as_ref() else {
                // No thread to spare: read here, without a time limit.
                drop(helper);
                self.read_direct(here, chunk, unreadable)?;
                done += len;
                continue;
            };
            let answer = reader
                .requests
                .send((here, len))
                .ok()
                .and_then(|()| reader.results.recv_timeout(READ_TIMEOUT).ok());
            let Some(TimedRead { bytes, error }) = answer else {
                // Left to finish (or not) on its own; the next read starts
                // a new helper.
                *helper = None;
                stalled.store(true, Ordering::Relaxed);
                timed_out(chunk, unreadable);
                done += len;
                continue;
            };
            drop(helper);
            let got = bytes.len();
            chunk[..got].copy_from_slice(&bytes);
            done += got;
            if let Some(errno) = error.filter(|_| got < len) {
                if got == 0 && self.gone() {
                    return Err(MemoryError::ProcessGone { pid: self.pid });
                }
                // Stopped at a page it cannot read: that page is lost, the
                // next one is tried again.
                let page_end = ((here + got as u64) / PAGE + 1) * PAGE;
                let skip = ((page_end - (here + got as u64)) as usize).min(len - got);
                buf[done..done + skip].fill(0);
                record(
                    unreadable,
                    Unreadable {
                        start: here + got as u64,
                        len: skip as u64,
                        errno: errno as i32,
                    },
                );
                done += skip;
            }
        }
        Ok(())
    }

    /// Reads memory that cannot wait for anybody, on the calling thread.
    fn read_direct(
        &self,
        addr: u64,
        buf: &mut [u8],
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<(), MemoryError> {
        let pin = !self.may_be_shared(addr, buf.len());
        let mut done = 0usize;
        while done < buf.len() {
            let here = addr + done as u64;
            let got = if pin {
                self.read_vm(here, &mut buf[done..])?
            } else {
                self.read_proc_mem_prefix(here, &mut buf[done..])?
            };
            done += got;
            if done == buf.len() {
                break;
            }
            // Both reads stop at the first page they cannot read; try that
            // one page through /proc/PID/mem before giving up on it.
            let here = addr + done as u64;
            let page_end = ((here / PAGE) + 1) * PAGE;
            let len = ((page_end - here) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + len];
            if let Err(errno) = self.read_proc_mem(here, chunk) {
                chunk.fill(0);
                record(
                    unreadable,
                    Unreadable {
                        start: here,
                        len: len as u64,
                        errno: errno as i32,
                    },
                );
            }
            done += len;
        }
        Ok(())
    }

    /// Reads as much as `process_vm_readv` gives from the start of `buf`.
    fn read_vm(&self, addr: u64, buf: &mut [u8]) -> Result<usize, MemoryError> {
        let len = buf.len();
        let remote = [RemoteIoVec {
            base: addr as usize,
            len,
        }];
        match process_vm_readv(
            Pid::from_raw(self.pid),
            &mut [IoSliceMut::new(buf)],
            &remote,
        ) {
            Ok(n) => Ok(n),
            Err(Errno::ESRCH) => Err(MemoryError::ProcessGone { pid: self.pid }),
            Err(_) => Ok(0),
        }
    }

    /// Reads as much as `/proc/PID/mem` gives from the start of `buf`.
    fn read_proc_mem_prefix(&self, addr: u64, buf: &mut [u8]) -> Result<usize, MemoryError> {
        let mut done = 0;
        while done < buf.len() {
            match self.mem.read_at(&mut buf[done..], addr + done as u64) {
                Ok(n) if n > 0 => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A process without memory any more reads as nothing at all;
                // that is not an unreadable page.
                _ if done == 0 && self.gone() => {
                    return Err(MemoryError::ProcessGone { pid: self.pid });
                }
                _ => break,
            }
        }
        Ok(done)
    }

    /// The process has exited (or is exiting) and has no memory left.
    fn gone(&self) -> bool {
        !matches!(
            crate::process::info::process_state(self.pid),
            Some(state) if state != 'Z' && state != 'X'
        )
    }

    fn read_proc_mem(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0;
        while done < buf.len() {
            match self.mem.read_at(&mut buf[done..], addr + done as u64) {
                Ok(0) => return Err(Errno::EIO),
                Ok(n) => done += n,
                Err(e) => return Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
            }
        }
        Ok(())
    }
}

fn record(list: &mut Vec<Unreadable>, range: Unreadable) {
    match list.last_mut() {
        Some(last) if last.start + last.len == range.start && last.errno == range.errno => {
            last.len += range.len
        }
        _ => list.push(range),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PROT_NONE page between two readable ones: process_vm_readv stops
    /// there, /proc/PID/mem still reads it (FOLL_FORCE), so nothing is
    /// unreadable and the bytes are the real ones.
    #[test]
    fn reads_across_a_prot_none_page_of_own_process() {
        let len = 3 * PAGE as usize;
        // SAFETY: fresh private anonymous mapping, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: writing inside the mapping, then changing protection of
        // its middle page, which we own.
        unsafe {
            std::ptr::write_bytes(base as *mut u8, 0xab, len);
            assert_eq!(
                libc::mprotect(
                    (base as *mut u8).add(PAGE as usize).cast(),
                    PAGE as usize,
                    libc::PROT_NONE
                ),
                0
            );
        }
        let reader = MemoryReader::open(std::process::id() as i32).unwrap();
        let mut buf = vec![0u8; len];
        let mut bad = Vec::new();
        reader.read(base as u64, &mut buf, &mut bad).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert!(buf.iter().all(|&b| b == 0xab));
        // SAFETY: unmapping exactly what we mapped.
        unsafe { libc::munmap(base, len) };
        // Nothing can be mapped below mmap_min_addr: every page there is
        // unreadable, recorded as one range, and left as zeros.
        buf.fill(0x55);
        let mut bad = Vec::new();
        reader.read(0x1000, &mut buf, &mut bad).unwrap();
        assert_eq!(
            bad,
            vec![Unreadable {
                start: 0x1000,
                len: len as u64,
                errno: libc::EIO
            }]
        );
        assert!(buf.iter().all(|&b| b == 0));
    }
}
