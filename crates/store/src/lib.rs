//! Mappers: the backing stores of segments (Chorus/Mach external pagers).
//!
//! A mapper reads pages on first access and takes dirty pages back on sync. Every
//! implementation runs the same conformance suite (`tests/conformance.rs`), including the
//! fault-injecting [`FaultyMapper`] used to test the poison path.

#![forbid(unsafe_code)]

pub mod durable;
pub mod paging;
pub mod sums;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Size of the pages a mapper serves.
pub const PAGE_SIZE: usize = 4096;

/// A mapper operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum MapperError {
    #[error("reading {len} bytes at offset {offset} of {path}: {source}")]
    Read {
        path: String,
        offset: u64,
        len: usize,
        source: io::Error,
    },
    #[error("{path} ends at byte {file_len}, before offset {offset} of the segment: the file shrank (short read)")]
    ShortRead {
        path: String,
        offset: u64,
        file_len: u64,
    },
    #[error("writing {len} bytes at offset {offset} of {path}: {source}")]
    Write {
        path: String,
        offset: u64,
        len: usize,
        source: io::Error,
    },
    #[error("fsync of {path}: {source}")]
    Sync { path: String, source: io::Error },
    #[error("the zero mapper holds no data and cannot take writes")]
    ReadOnly,
}

/// What a page read produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageData {
    /// The page was never written: it reads as zero and the buffer was not touched (dormant).
    Dormant,
    /// The buffer holds the page.
    Filled,
}

/// A backing store for a segment.
pub trait Mapper: Send + Sync {
    /// Read the page at byte `offset` (page-aligned) into `buf` (`PAGE_SIZE` bytes).
    fn read_page(&self, offset: u64, buf: &mut [u8]) -> Result<PageData, MapperError>;
    /// Read consecutive pages from `offset` into `buf` (a multiple of `PAGE_SIZE`), for
    /// read-ahead. The default reads page by page; dormant pages are zero-filled.
    fn read_pages(&self, offset: u64, buf: &mut [u8]) -> Result<PageData, MapperError> {
        let mut filled = false;
        for (i, page) in buf.chunks_mut(PAGE_SIZE).enumerate() {
            match self.read_page(offset + (i * PAGE_SIZE) as u64, page)? {
                PageData::Dormant => page.fill(0),
                PageData::Filled => filled = true,
            }
        }
        Ok(if filled {
            PageData::Filled
        } else {
            PageData::Dormant
        })
    }
    /// Write `data` (whole pages) at byte `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), MapperError>;
    /// Make every completed write durable.
    fn sync(&self) -> Result<(), MapperError>;
    /// Whether this mapper keeps written data (`sync` does something).
    fn is_persistent(&self) -> bool;
    /// A short description for logs (`zero`, `file:/path`).
    fn describe(&self) -> String;
}

/// Anonymous memory: every page is dormant.
#[derive(Debug, Default)]
pub struct ZeroMapper;

impl Mapper for ZeroMapper {
    fn read_page(&self, _offset: u64, _buf: &mut [u8]) -> Result<PageData, MapperError> {
        Ok(PageData::Dormant)
    }
    fn write_at(&self, _offset: u64, _data: &[u8]) -> Result<(), MapperError> {
        Err(MapperError::ReadOnly)
    }
    fn sync(&self) -> Result<(), MapperError> {
        Ok(())
    }
    fn is_persistent(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        "zero".into()
    }
}

/// A file on this node. Its length when opened is the mapper's logical length: the tail of the
/// last page past it reads as zero and is not written back (the file never grows by a partial
/// page), while a file that shrinks below it later gives `ShortRead` (the page is poisoned).
#[derive(Debug)]
pub struct FileMapper {
    file: File,
    path: PathBuf,
    logical_len: u64,
}

impl FileMapper {
    /// Open `path` read-write. With `size_bytes`, create the file if absent and extend it to at
    /// least that size; without, the file must exist.
    pub fn open(path: &Path, size_bytes: Option<u64>) -> io::Result<FileMapper> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(size_bytes.is_some())
            .truncate(false)
            .open(path)?;
        FileMapper::from_file(file, path, size_bytes)
    }

    /// A mapper on a file opened elsewhere (by the client, with its rights; or as a user),
    /// named `path` in messages: extended to `size_bytes` if given.
    pub fn from_file(file: File, path: &Path, size_bytes: Option<u64>) -> io::Result<FileMapper> {
        if let Some(size) = size_bytes {
            if file.metadata()?.len() < size {
                file.set_len(size)?;
            }
        }
        let logical_len = file.metadata()?.len();
        Ok(FileMapper {
            file,
            path: path.to_path_buf(),
            logical_len,
        })
    }

    /// The file's current length.
    pub fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn path_str(&self) -> String {
        self.path.display().to_string()
    }
}

impl Mapper for FileMapper {
    fn read_page(&self, offset: u64, buf: &mut [u8]) -> Result<PageData, MapperError> {
        let want = buf
            .len()
            .min(self.logical_len.saturating_sub(offset) as usize);
        buf[want..].fill(0);
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut buf[got..want], offset + got as u64) {
                Ok(0) => {
                    let file_len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                    return Err(MapperError::ShortRead {
                        path: self.path_str(),
                        offset,
                        file_len,
                    });
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(MapperError::Read {
                        path: self.path_str(),
                        offset,
                        len: buf.len(),
                        source,
                    })
                }
            }
        }
        Ok(PageData::Filled)
    }

    /// One read for the whole run (`read_page` handles any length).
    fn read_pages(&self, offset: u64, buf: &mut [u8]) -> Result<PageData, MapperError> {
        self.read_page(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), MapperError> {
        let keep = data
            .len()
            .min(self.logical_len.saturating_sub(offset) as usize);
        self.file
            .write_all_at(&data[..keep], offset)
            .map_err(|source| MapperError::Write {
                path: self.path_str(),
                offset,
                len: data.len(),
                source,
            })
    }

    fn sync(&self) -> Result<(), MapperError> {
        self.file.sync_data().map_err(|source| MapperError::Sync {
            path: self.path_str(),
            source,
        })
    }

    fn is_persistent(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

/// Wraps a mapper and fails chosen operations with EIO: for tests of the poison path.
pub struct FaultyMapper<M> {
    inner: M,
    failing_read_offsets: Mutex<Vec<u64>>,
    fail_writes: AtomicU64,
}

impl<M: Mapper> FaultyMapper<M> {
    pub fn new(inner: M) -> Self {
        FaultyMapper {
            inner,
            failing_read_offsets: Mutex::new(Vec::new()),
            fail_writes: AtomicU64::new(0),
        }
    }

    /// Reads of the page at `offset` fail with EIO from now on.
    pub fn fail_reads_at(&self, offset: u64) {
        self.failing_read_offsets
            .lock()
            .expect("lock poisoned")
            .push(offset);
    }

    /// The next `n` writes fail with EIO.
    pub fn fail_next_writes(&self, n: u64) {
        self.fail_writes.store(n, Ordering::SeqCst);
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(5)
}

impl<M: Mapper> Mapper for FaultyMapper<M> {
    fn read_page(&self, offset: u64, buf: &mut [u8]) -> Result<PageData, MapperError> {
        if self
            .failing_read_offsets
            .lock()
            .expect("lock poisoned")
            .contains(&offset)
        {
            return Err(MapperError::Read {
                path: self.describe(),
                offset,
                len: buf.len(),
                source: eio(),
            });
        }
        self.inner.read_page(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), MapperError> {
        let failed = self
            .fail_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failed {
            return Err(MapperError::Write {
                path: self.describe(),
                offset,
                len: data.len(),
                source: eio(),
            });
        }
        self.inner.write_at(offset, data)
    }
    fn sync(&self) -> Result<(), MapperError> {
        self.inner.sync()
    }
    fn is_persistent(&self) -> bool {
        self.inner.is_persistent()
    }
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}
