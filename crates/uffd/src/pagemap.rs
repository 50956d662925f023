//! Written-page collection for ranges under asynchronous write-protect.
//!
//! A range registered `UFFDIO_REGISTER_MODE_WP` on a uffd opened with `UFFD_FEATURE_WP_ASYNC`
//! raises no message on a write to a write-protected page: the kernel clears the page's
//! protection itself and lets the write through. The `PAGEMAP_SCAN` ioctl on the process's
//! `/proc/<pid>/pagemap` then reports which pages were written since they were last protected
//! (`PAGE_IS_WRITTEN`: mapped and not write-protected) and, in the same walk, protects them again
//! (`PM_SCAN_WP_MATCHING`), so the next scan reports only newer writes.
//!
//! [`Pagemap::collect_written`] always passes `PM_SCAN_CHECK_WPASYNC`: the kernel then refuses
//! (EPERM, [`ScanError::NotWpAsync`]) a range that is not entirely under asynchronous
//! write-protect, rather than re-protecting pages whose writes would wait for a handler.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;

use crate::sys;
use crate::PAGE_SIZE;

const PS: u64 = PAGE_SIZE as u64;

/// Regions the kernel may report per ioctl; a scan that finds more continues where it stopped.
const REGIONS_PER_CALL: usize = 128;

/// Whether a scan protects the written pages it reports again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rearm {
    /// Report the written pages and write-protect them again (`PM_SCAN_WP_MATCHING`).
    Yes,
    /// Only report them; they stay writable and are reported again by the next scan.
    No,
}

/// A failed scan: why.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("scan range {start:#x}+{len:#x} is not page-aligned or wraps around")]
    BadRange { start: u64, len: u64 },
    #[error(
        "PAGEMAP_SCAN refused the range: not all of it is registered for write-protect on a uffd \
         with UFFD_FEATURE_WP_ASYNC"
    )]
    NotWpAsync,
    #[error("PAGEMAP_SCAN is not supported by this kernel (Linux 6.7 or later): {0}")]
    Unsupported(#[source] io::Error),
    #[error("PAGEMAP_SCAN failed: {0}")]
    Scan(#[source] io::Error),
}

/// A process's `/proc/<pid>/pagemap`, opened for `PAGEMAP_SCAN`. Addresses given to it are in
/// that process's address space. Opening another process's pagemap needs the right to ptrace
/// it (root, or the same user with the usual Yama rules).
#[derive(Debug)]
pub struct Pagemap {
    file: File,
}

impl Pagemap {
    /// The calling process's pagemap.
    pub fn open_self() -> Result<Pagemap, ScanError> {
        Self::open_path("/proc/self/pagemap".to_string())
    }

    /// The pagemap of process `pid`.
    pub fn open(pid: u32) -> Result<Pagemap, ScanError> {
        Self::open_path(format!("/proc/{pid}/pagemap"))
    }

    fn open_path(path: String) -> Result<Pagemap, ScanError> {
        match File::open(&path) {
            Ok(file) => Ok(Pagemap { file }),
            Err(source) => Err(ScanError::Open { path, source }),
        }
    }

    /// Find the pages of `[start, start + len)` written since they were last write-protected,
    /// append them to `out` as address ranges (adjacent ranges merged, in address order), and
    /// with [`Rearm::Yes`] write-protect them again in the same walk. Returns the number of
    /// written pages found. A page under write-protect (armed with `UFFDIO_WRITEPROTECT`, or
    /// re-armed by a scan) counts only once written, mapped or not; an entry never armed has
    /// no write-protect bit and counts as written, mapped or not, wherever the process has a
    /// page table for it (6.18): arm the range first for exact answers.
    ///
    /// The whole range must be registered for write-protect on a uffd opened with
    /// `UFFD_FEATURE_WP_ASYNC` ([`ScanError::NotWpAsync`] otherwise). A page written during the
    /// scan is either reported or left writable for the next scan to report: none is lost.
    pub fn collect_written(
        &self,
        start: u64,
        len: u64,
        rearm: Rearm,
        out: &mut Vec<Range<u64>>,
    ) -> Result<u64, ScanError> {
        let end = start.checked_add(len);
        let Some(end) = end.filter(|_| start.is_multiple_of(PS) && len.is_multiple_of(PS)) else {
            return Err(ScanError::BadRange { start, len });
        };
        let flags = match rearm {
            Rearm::Yes => sys::PM_SCAN_WP_MATCHING | sys::PM_SCAN_CHECK_WPASYNC,
            Rearm::No => sys::PM_SCAN_CHECK_WPASYNC,
        };
        let empty = sys::page_region {
            start: 0,
            end: 0,
            categories: 0,
        };
        let mut regions = [empty; REGIONS_PER_CALL];
        let mut pages = 0;
        let mut at = start;
        while at < end {
            let mut arg = sys::pm_scan_arg {
                size: std::mem::size_of::<sys::pm_scan_arg>() as u64,
                flags: u64::from(flags),
                start: at,
                end,
                walk_end: 0,
                vec: regions.as_mut_ptr() as u64,
                vec_len: REGIONS_PER_CALL as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: u64::from(sys::PAGE_IS_WRITTEN),
                category_anyof_mask: 0,
                return_mask: u64::from(sys::PAGE_IS_WRITTEN),
            };
            // SAFETY: PAGEMAP_SCAN reads and updates `arg` (a live, exclusively borrowed
            // pm_scan_arg whose size the request number encodes, checked in `sys`) and writes at
            // most `vec_len` page_regions to `vec`, which is `regions`, exclusively borrowed and
            // exactly that long. Re-protecting changes only uffd write-protect bits of ranges
            // under asynchronous write-protect (PM_SCAN_CHECK_WPASYNC refuses any other), whose
            // writes the kernel resolves itself: no memory changes value.
            let rc = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    sys::PAGEMAP_SCAN as libc::c_ulong,
                    &mut arg as *mut sys::pm_scan_arg,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                return Err(match e.raw_os_error() {
                    Some(libc::EPERM) => ScanError::NotWpAsync,
                    Some(libc::ENOTTY) => ScanError::Unsupported(e),
                    _ => ScanError::Scan(e),
                });
            }
            let n = rc as usize;
            assert!(n <= REGIONS_PER_CALL, "PAGEMAP_SCAN reported {n} regions");
            for r in &regions[..n] {
                assert!(
                    at <= r.start && r.start < r.end && r.end <= end,
                    "PAGEMAP_SCAN region {:#x}..{:#x} outside {at:#x}..{end:#x}",
                    r.start,
                    r.end
                );
                pages += (r.end - r.start) / PS;
                match out.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => out.push(r.start..r.end),
                }
            }
            // The walk stops early only when the region buffer fills; it then resumes after
            // the last region it reported.
            assert!(
                arg.walk_end > at && arg.walk_end <= end,
                "PAGEMAP_SCAN walked from {at:#x} to {:#x} of {end:#x}",
                arg.walk_end
            );
            at = arg.walk_end;
        }
        Ok(pages)
    }
}
