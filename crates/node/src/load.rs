//! What loading a page's data gives (`Segment::load`), and why a page or a volume block could
//! not be loaded: the words the fault path, segment I/O, volumes and the evictor share, kept
//! apart so that none of them names another for them.

use pagemesh_store::paging::PagingError;
use pagemesh_store::MapperError;

/// Why a page's data could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Mapper(#[from] MapperError),
    #[error(transparent)]
    Paging(#[from] PagingError),
    #[error("the page is paged out but the daemon has no paging device")]
    NoPagingDevice,
}

/// What a load produced.
pub enum Loaded {
    /// A dormant page: zeros, the buffer untouched.
    Zero,
    /// The buffer holds the page.
    Data,
}

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: reading block {block} of {path}: {source}")]
    Storage {
        volume: String,
        path: String,
        block: u64,
        source: std::io::Error,
    },
    #[error("volume {volume}: block {block} of {path} does not match its checksum in the image's .pmsums file: the image is corrupt there; restore it from a good copy")]
    Checksum {
        volume: String,
        path: String,
        block: u64,
    },
    #[error("volume {volume}: block {block} is poisoned (its read failed); fix the image, then `pagemesh segment clear-poison` a segment on it")]
    Poisoned { volume: String, block: u64 },
    #[error("volume {volume}: block {block} still being read after {waited:?}")]
    Timeout {
        volume: String,
        block: u64,
        waited: std::time::Duration,
    },
    #[error("volume {volume}: cache memfd: {source}")]
    Cache {
        volume: String,
        source: std::io::Error,
    },
}
