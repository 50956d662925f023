//! The node's paging device: where dirty pages of `zero` segments go under memory pressure.
//!
//! A file of fixed size divided into page slots. Slots are allocated lowest free first (freed
//! slots are reused before the file grows, in ascending order, so pages paged out one after
//! the other land in consecutive slots and page in with one read). Each written slot keeps a
//! checksum, and every read is verified: a mismatch or an I/O error is a paging error, which
//! the daemon turns into a poisoned page.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::PAGE_SIZE;

/// A slot of the paging device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);

/// Why a paging operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    #[error("paging device {path} is full ({slots} slots): raise --paging-device-size or the memory budget")]
    Full { path: String, slots: u32 },
    #[error("paging device {path}, slot {slot}: {op}: {source}")]
    Io {
        path: String,
        slot: u32,
        op: &'static str,
        source: io::Error,
    },
    #[error("paging device {path}, slot {slot}: checksum mismatch (stored {stored:#018x}, read {read:#018x}): the data is corrupt")]
    Checksum {
        path: String,
        slot: u32,
        stored: u64,
        read: u64,
    },
}

struct Slots {
    free: BTreeSet<u32>,
    next_unused: u32,
    checksums: Vec<u64>,
}

/// A paging device over a file. I/O is buffered (O_DIRECT measured 3x slower for page-sized
/// writes here); the daemon drops the file's clean cached pages periodically
/// ([`PagingDevice::file`]) so paged-out memory does not linger in the kernel's page cache.
pub struct PagingDevice {
    file: File,
    path: PathBuf,
    slots: u32,
    state: Mutex<Slots>,
}

/// FNV-1a over the page, folded with the slot number so a page written to the wrong slot fails.
pub fn checksum(slot: Slot, page: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(slot.0);
    for chunk in page.chunks_exact(8) {
        h ^= u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl PagingDevice {
    /// Create (or truncate) the paging file with room for `size_bytes / PAGE_SIZE` slots. Its
    /// contents do not survive a restart: the pages in it belonged to the memory of that run.
    pub fn create(path: &Path, size_bytes: u64) -> io::Result<PagingDevice> {
        let slots = u32::try_from(size_bytes / PAGE_SIZE as u64).unwrap_or(u32::MAX);
        if slots == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "paging device smaller than one page",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(u64::from(slots) * PAGE_SIZE as u64)?;
        Ok(PagingDevice {
            file,
            path: path.to_path_buf(),
            slots,
            state: Mutex::new(Slots {
                free: BTreeSet::new(),
                next_unused: 0,
                checksums: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    /// The underlying file (for page-cache control).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Total slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Slots in use.
    pub fn used(&self) -> u32 {
        let s = self.lock();
        s.next_unused - s.free.len() as u32
    }

    /// Take a free slot.
    pub fn alloc(&self) -> Result<Slot, PagingError> {
        let mut s = self.lock();
        if let Some(slot) = s.free.pop_first() {
            return Ok(Slot(slot));
        }
        if s.next_unused < self.slots {
            let slot = s.next_unused;
            s.next_unused += 1;
            s.checksums.push(0);
            return Ok(Slot(slot));
        }
        Err(PagingError::Full {
            path: self.path_str(),
            slots: self.slots,
        })
    }

    /// Return a slot to the free list.
    pub fn free(&self, slot: Slot) {
        let mut s = self.lock();
        let fresh = s.free.insert(slot.0);
        debug_assert!(fresh, "slot {} freed twice", slot.0);
    }

    /// Write one page to `slot` and remember its checksum.
    pub fn write(&self, slot: Slot, page: &[u8]) -> Result<(), PagingError> {
        assert_eq!(page.len(), PAGE_SIZE, "paging I/O is page-sized");
        self.write_run(slot, page)
    }

    /// A run's I/O is whole pages, at least one, within the device.
    fn check_run(&self, first: Slot, len: usize) {
        assert!(
            len.is_multiple_of(PAGE_SIZE) && len > 0,
            "paging I/O is page-sized"
        );
        let n = (len / PAGE_SIZE) as u32;
        assert!(
            first.0.checked_add(n).is_some_and(|end| end <= self.slots),
            "run past the device"
        );
    }

    /// Write `buf.len() / PAGE_SIZE` pages to consecutive slots from `first` with one write,
    /// and remember each page's checksum.
    pub fn write_run(&self, first: Slot, buf: &[u8]) -> Result<(), PagingError> {
        self.check_run(first, buf.len());
        self.file
            .write_all_at(buf, u64::from(first.0) * PAGE_SIZE as u64)
            .map_err(|source| PagingError::Io {
                path: self.path_str(),
                slot: first.0,
                op: "write",
                source,
            })?;
        let sums: Vec<u64> = buf
            .chunks_exact(PAGE_SIZE)
            .enumerate()
            .map(|(i, page)| checksum(Slot(first.0 + i as u32), page))
            .collect();
        let mut state = self.lock();
        for (i, sum) in sums.into_iter().enumerate() {
            state.checksums[first.0 as usize + i] = sum;
        }
        Ok(())
    }

    /// Read `buf.len() / PAGE_SIZE` consecutive slots from `first` with one read, verifying
    /// every checksum. On a mismatch, returns the error of the first bad slot (the caller reads
    /// the pages it needs one by one instead).
    pub fn read_run(&self, first: Slot, buf: &mut [u8]) -> Result<(), PagingError> {
        self.check_run(first, buf.len());
        self.file
            .read_exact_at(buf, u64::from(first.0) * PAGE_SIZE as u64)
            .map_err(|source| PagingError::Io {
                path: self.path_str(),
                slot: first.0,
                op: "read",
                source,
            })?;
        let state = self.lock();
        for (i, page) in buf.chunks_exact(PAGE_SIZE).enumerate() {
            let slot = Slot(first.0 + i as u32);
            let stored = state.checksums.get(slot.0 as usize).copied().unwrap_or(0);
            let read = checksum(slot, page);
            if stored != read {
                return Err(PagingError::Checksum {
                    path: self.path_str(),
                    slot: slot.0,
                    stored,
                    read,
                });
            }
        }
        Ok(())
    }

    /// Read one page from `slot`, verifying its checksum.
    pub fn read(&self, slot: Slot, page: &mut [u8]) -> Result<(), PagingError> {
        assert_eq!(page.len(), PAGE_SIZE, "paging I/O is page-sized");
        self.read_run(slot, page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_roundtrip_are_reused_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swap");
        let d = PagingDevice::create(&path, 3 * PAGE_SIZE as u64).unwrap();
        let a = d.alloc().unwrap();
        let b = d.alloc().unwrap();
        let c = d.alloc().unwrap();
        assert!(matches!(d.alloc(), Err(PagingError::Full { .. })));
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        d.write(b, &page).unwrap();
        let mut out = vec![0u8; PAGE_SIZE];
        d.read(b, &mut out).unwrap();
        assert_eq!(out, page);
        d.free(a);
        assert_eq!(d.alloc().unwrap(), a, "freed slots are reused");
        assert_eq!(d.used(), 3);
        // Corrupt slot b on disk: the read fails with a checksum error, never wrong data.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"\xff", u64::from(b.0) * PAGE_SIZE as u64 + 17)
            .unwrap();
        assert!(matches!(
            d.read(b, &mut out),
            Err(PagingError::Checksum { .. })
        ));
        let _ = c;
    }
}
