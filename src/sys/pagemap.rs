//! Which pages of a range are populated (present in RAM or in swap), so that
//! never-touched private anonymous memory can become holes without being read.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
const PAGE_IS_GUARD: u64 = 1 << 8;
/// `_IOWR('f', 16, struct pm_scan_arg)`. The request's C type differs
/// between glibc (unsigned long) and musl (int); the kernel reads 32 bits.
const PAGEMAP_SCAN: libc::Ioctl = 0xC060_6610_u32 as libc::Ioctl;

/// `struct pm_scan_arg` from `include/uapi/linux/fs.h`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// Answers "which pages hold data" for one process, through `PAGEMAP_SCAN`
/// (Linux 6.7+) or, where the kernel lacks it, the 8-bytes-per-page
/// `/proc/PID/pagemap` table.
pub struct PageMap {
    file: File,
    scan_supported: bool,
}

impl PageMap {
    pub fn open(pid: i32) -> io::Result<PageMap> {
        let file = File::open(format!("/proc/{pid}/pagemap"))?;
        Ok(PageMap {
            file,
            scan_supported: true,
        })
    }

    /// The populated sub-ranges of `[start, end)` (page-aligned), in order.
    /// The shared zero page counts as not populated: it reads as zeros.
    pub fn populated(&mut self, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
        if self.scan_supported {
            match self.scan(start, end) {
                Ok(ranges) => return Ok(ranges),
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOTTY)
                        || e.raw_os_error() == Some(libc::EINVAL) =>
                {
                    self.scan_supported = false;
                }
                Err(e) => return Err(e),
            }
        }
        self.read_table(start, end)
    }

    /// [`populated`](Self::populated) for many sorted, disjoint ranges at
    /// once: with `PAGEMAP_SCAN`, one walk over the span they cover (the
    /// kernel skips unmapped gaps), instead of a system call per range, which
    /// matters for processes with tens of thousands of mappings.
    pub fn populated_in(&mut self, ranges: &[(u64, u64)]) -> io::Result<Vec<Vec<(u64, u64)>>> {
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return Ok(Vec::new());
        };
        if ranges.len() > 1 && self.scan_supported {
            match self.scan(first.0, last.1) {
                Ok(found) => return Ok(distribute(ranges, &found)),
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOTTY)
                        || e.raw_os_error() == Some(libc::EINVAL) =>
                {
                    self.scan_supported = false;
                }
                Err(e) => return Err(e),
            }
        }
        ranges
            .iter()
            .map(|&(start, end)| self.populated(start, end))
            .collect()
    }

    fn scan(&mut self, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut regions = vec![PageRegion::default(); 512];
        let mut cursor = start;
        while cursor < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: cursor,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                // Anonymous pages only: the callers ask about private
                // anonymous memory, and file pages there are not data.
                category_inverted: PAGE_IS_PFNZERO | PAGE_IS_GUARD | PAGE_IS_FILE,
                category_mask: PAGE_IS_PFNZERO | PAGE_IS_GUARD | PAGE_IS_FILE,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                ..Default::default()
            };
            // SAFETY: `arg` is a correctly sized pm_scan_arg (its `size`
            // field says so) and `vec`/`vec_len` describe `regions`, which
            // stays alive and writable for the call; the kernel writes at
            // most vec_len page_region entries and updates `walk_end`.
            let rc = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    PAGEMAP_SCAN,
                    &mut arg as *mut PmScanArg,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            for r in &regions[..rc as usize] {
                match out.last_mut() {
                    Some(last) if last.1 == r.start => last.1 = r.end,
                    _ => out.push((r.start, r.end)),
                }
            }
            if arg.walk_end <= cursor {
                break;
            }
            cursor = arg.walk_end;
        }
        Ok(out)
    }

    fn read_table(&mut self, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
        const PAGE: u64 = 4096;
        const PRESENT: u64 = 1 << 63;
        const SWAPPED: u64 = 1 << 62;
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut buf = vec![0u8; 8 * 4096];
        let mut page = start / PAGE;
        let last_page = end / PAGE;
        while page < last_page {
            let count = ((last_page - page) as usize).min(buf.len() / 8);
            let bytes = &mut buf[..count * 8];
            self.file.read_exact_at(bytes, page * 8)?;
            for (i, entry) in bytes.chunks_exact(8).enumerate() {
                let entry = u64::from_ne_bytes(entry.try_into().expect("8-byte chunk"));
                if entry & (PRESENT | SWAPPED) != 0 {
                    let addr = (page + i as u64) * PAGE;
                    match out.last_mut() {
                        Some(last) if last.1 == addr => last.1 = addr + PAGE,
                        _ => out.push((addr, addr + PAGE)),
                    }
                }
            }
            page += count as u64;
        }
        Ok(out)
    }
}

/// Splits `found` (sorted, disjoint) among `ranges` (sorted, disjoint).
fn distribute(ranges: &[(u64, u64)], found: &[(u64, u64)]) -> Vec<Vec<(u64, u64)>> {
    let mut out = Vec::with_capacity(ranges.len());
    let mut next = 0;
    for &(start, end) in ranges {
        while next < found.len() && found[next].1 <= start {
            next += 1;
        }
        let mut mine = Vec::new();
        let mut i = next;
        while i < found.len() && found[i].0 < end {
            mine.push((found[i].0.max(start), found[i].1.min(end)));
            i += 1;
        }
        out.push(mine);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn distribute_clips_found_ranges_to_each_request() {
        let ranges = [(0x1000, 0x5000), (0x8000, 0x9000), (0xa000, 0xc000)];
        let found = [(0x0, 0x2000), (0x4000, 0x8800), (0xb000, 0xd000)];
        assert_eq!(
            super::distribute(&ranges, &found),
            vec![
                vec![(0x1000, 0x2000), (0x4000, 0x5000)],
                vec![(0x8000, 0x8800)],
                vec![(0xb000, 0xc000)]
            ]
        );
    }

    use super::*;

    /// Our own address space is a live process too: touch some pages of a
    /// fresh anonymous mapping and check that exactly those are reported.
    #[test]
    fn finds_touched_pages_of_own_mapping() {
        let len = 64 * 4096;
        // SAFETY: anonymous private mapping, unmapped at the end of the test.
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
        let base_addr = base as u64;
        for page in [3usize, 4, 10] {
            // SAFETY: inside the mapping created above.
            unsafe { *(base as *mut u8).add(page * 4096) = 1 };
        }
        // A read-only touch maps the shared zero page: it must not count.
        // SAFETY: inside the mapping.
        let _ = unsafe { std::ptr::read_volatile((base as *const u8).add(20 * 4096)) };
        let mut map = PageMap::open(std::process::id() as i32).unwrap();
        let want = vec![
            (base_addr + 3 * 4096, base_addr + 5 * 4096),
            (base_addr + 10 * 4096, base_addr + 11 * 4096),
        ];
        let found = map.populated(base_addr, base_addr + len as u64).unwrap();
        if map.scan_supported {
            assert_eq!(found, want, "PAGEMAP_SCAN");
        } else {
            crate::test_skip::not_applicable(
                "the kernel has no PAGEMAP_SCAN (Linux 6.7+): only the pagemap table was checked",
            );
        }
        // The table cannot tell the shared zero page apart: page 20 shows
        // as populated, or not where the kernel mapped no page for the read.
        let mut with_zero_page = want.clone();
        with_zero_page.push((base_addr + 20 * 4096, base_addr + 21 * 4096));
        let mut table = PageMap::open(std::process::id() as i32).unwrap();
        table.scan_supported = false;
        let from_table = table.populated(base_addr, base_addr + len as u64).unwrap();
        assert!(
            from_table == want || from_table == with_zero_page,
            "pagemap table: {from_table:x?}, expected {want:x?} (plus page 20, the zero page)"
        );
        // Several ranges at once, as the dump asks: each gets exactly its
        // own pages.
        let ranges = [
            (base_addr, base_addr + 4 * 4096),
            (base_addr + 4 * 4096, base_addr + 16 * 4096),
            (base_addr + 16 * 4096, base_addr + len as u64),
        ];
        let per_range = vec![
            vec![(base_addr + 3 * 4096, base_addr + 4 * 4096)],
            vec![
                (base_addr + 4 * 4096, base_addr + 5 * 4096),
                (base_addr + 10 * 4096, base_addr + 11 * 4096),
            ],
            vec![],
        ];
        let mut per_range_with_zero_page = per_range.clone();
        per_range_with_zero_page[2].push((base_addr + 20 * 4096, base_addr + 21 * 4096));
        let from_table = table.populated_in(&ranges).unwrap();
        assert!(
            from_table == per_range || from_table == per_range_with_zero_page,
            "pagemap table, three ranges: {from_table:x?}, expected {per_range:x?}"
        );
        if map.scan_supported {
            assert_eq!(
                map.populated_in(&ranges).unwrap(),
                per_range,
                "PAGEMAP_SCAN"
            );
        }
        // SAFETY: unmapping exactly what we mapped.
        unsafe { libc::munmap(base, len) };
    }
}
