//! Block checksums of a read-only image, kept in a file beside it (`IMAGE.pmsums`): written
//! once while the image is known to be good (`pagemesh volume checksum IMAGE`, e.g. right after
//! a VM snapshot), then checked on every storage read of a volume on that image, so a block
//! that rotted on disk is refused (poisoned) instead of served.
//!
//! Format: the 8 bytes `PMSUMS1\0`, the image's length in bytes (`u64` LE), then one `u64` LE
//! per 4 KiB block ([`block_sum`]; the tail of a partial last block counts as zeros).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::PAGE_SIZE;

const MAGIC: &[u8; 8] = b"PMSUMS1\0";
const HEADER_BYTES: usize = 16;
/// Bytes read at a time while computing the sums.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// Why a sums file could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum SumsError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is not a pagemesh block-sums file (no PMSUMS1 header, or a length that is not 16 + 8 per block)")]
    Malformed { path: String },
    #[error("{path} was made for an image of {sums_bytes} bytes, but the image has {image_bytes}: make it again with `pagemesh volume checksum` from a good copy")]
    WrongImage {
        path: String,
        sums_bytes: u64,
        image_bytes: u64,
    },
}

/// The checksum of 4 KiB block `block`: FNV-1a over its 64-bit words, folded with the block
/// number so a block read from the wrong offset fails too.
pub fn block_sum(block: u64, data: &[u8]) -> u64 {
    debug_assert_eq!(data.len(), PAGE_SIZE);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in data.chunks_exact(8) {
        h ^= u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The checksums of every block of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSums {
    image_bytes: u64,
    sums: Vec<u64>,
}

impl BlockSums {
    /// Where the sums of `image` live.
    pub fn sidecar(image: &Path) -> PathBuf {
        let mut p = image.as_os_str().to_os_string();
        p.push(".pmsums");
        PathBuf::from(p)
    }

    /// Read the whole image and sum each block.
    pub fn compute(image: &Path) -> Result<BlockSums, SumsError> {
        let io = |source| SumsError::Io {
            path: image.display().to_string(),
            source,
        };
        let mut f = File::open(image).map_err(io)?;
        let image_bytes = f.metadata().map_err(io)?.len();
        let blocks = image_bytes.div_ceil(PAGE_SIZE as u64);
        let mut sums = Vec::with_capacity(blocks as usize);
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut done = 0u64;
        while done < image_bytes {
            let want = (image_bytes - done).min(READ_CHUNK_BYTES as u64) as usize;
            f.read_exact(&mut buf[..want]).map_err(io)?;
            let padded = want.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            buf[want..padded].fill(0);
            for page in buf[..padded].chunks_exact(PAGE_SIZE) {
                sums.push(block_sum(sums.len() as u64, page));
            }
            done += want as u64;
        }
        assert_eq!(sums.len() as u64, blocks);
        Ok(BlockSums { image_bytes, sums })
    }

    /// Write the sums to `path` (atomically: a crash leaves the old file or the new one).
    pub fn write(&self, path: &Path) -> Result<(), SumsError> {
        let mut bytes = Vec::with_capacity(HEADER_BYTES + 8 * self.sums.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.image_bytes.to_le_bytes());
        for s in &self.sums {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        crate::durable::replace_file(path, &bytes).map_err(|source| SumsError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Load the sums in `path` made for an image of `image_bytes` bytes.
    pub fn load(path: &Path, image_bytes: u64) -> Result<BlockSums, SumsError> {
        let name = || path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SumsError::Io {
            path: name(),
            source,
        })?;
        if bytes.len() < HEADER_BYTES
            || &bytes[..8] != MAGIC
            || !(bytes.len() - HEADER_BYTES).is_multiple_of(8)
        {
            return Err(SumsError::Malformed { path: name() });
        }
        let sums_bytes = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let sums: Vec<u64> = bytes[HEADER_BYTES..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if sums.len() as u64 != sums_bytes.div_ceil(PAGE_SIZE as u64) {
            return Err(SumsError::Malformed { path: name() });
        }
        if sums_bytes != image_bytes {
            return Err(SumsError::WrongImage {
                path: name(),
                sums_bytes,
                image_bytes,
            });
        }
        Ok(BlockSums { image_bytes, sums })
    }

    pub fn blocks(&self) -> u64 {
        self.sums.len() as u64
    }

    /// Whether `data` (one 4 KiB block, zero-padded past the image's end) is block `block`.
    pub fn verify(&self, block: u64, data: &[u8]) -> bool {
        self.sums
            .get(block as usize)
            .is_some_and(|&s| s == block_sum(block, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_round_trip_and_catch_a_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("i.img");
        // Every block different (a block at the wrong offset must not pass).
        let mut data: Vec<u8> = (0..(3 * PAGE_SIZE + 100))
            .map(|i| (i * 7 + i / PAGE_SIZE) as u8)
            .collect();
        std::fs::write(&img, &data).unwrap();
        let sums = BlockSums::compute(&img).unwrap();
        assert_eq!(sums.blocks(), 4);
        let side = BlockSums::sidecar(&img);
        sums.write(&side).unwrap();
        let back = BlockSums::load(&side, data.len() as u64).unwrap();
        assert_eq!(back, sums);
        assert!(back.verify(1, &data[PAGE_SIZE..2 * PAGE_SIZE]));
        // A block at the wrong offset, a flipped byte, a zeroed block: all refused.
        assert!(!back.verify(2, &data[PAGE_SIZE..2 * PAGE_SIZE]));
        data[PAGE_SIZE + 5] ^= 1;
        assert!(!back.verify(1, &data[PAGE_SIZE..2 * PAGE_SIZE]));
        assert!(!back.verify(0, &[0u8; PAGE_SIZE]));
        let mut last = vec![0u8; PAGE_SIZE];
        last[..100].copy_from_slice(&data[3 * PAGE_SIZE..]);
        assert!(back.verify(3, &last));
        assert!(matches!(
            BlockSums::load(&side, 5),
            Err(SumsError::WrongImage { .. })
        ));
        std::fs::write(&side, b"garbage").unwrap();
        assert!(matches!(
            BlockSums::load(&side, data.len() as u64),
            Err(SumsError::Malformed { .. })
        ));
    }
}
