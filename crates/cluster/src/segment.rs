//! A cluster segment's node-local state and the protocol's view of it.

use std::path::{Path, PathBuf};

use pagemesh_node::segment::{Memory, Segment};
use pagemesh_proto::{Backing, SegmentInfo};
use pagemesh_store::{FileMapper, Mapper, ZeroMapper};
use pagemesh_types::{NodeId, SegmentId, PAGE_SIZE};

use crate::files;

/// The protocol's view of a catalog entry.
pub fn core_info(info: &SegmentInfo) -> pagemesh_core::SegmentInfo {
    pagemesh_core::SegmentInfo {
        id: SegmentId(info.id),
        home: NodeId(info.home.unwrap_or(0)),
        pages: info.size_bytes.div_ceil(PAGE_SIZE),
        backing: match info.backing {
            Backing::Zero => pagemesh_core::Backing::Zero,
            _ => pagemesh_core::Backing::Mapper,
        },
    }
}

/// Build the node-local state of a cluster segment on node `me`: its home opens the mapper (the
/// file, or a sparse store in `data_dir` for a zero segment; `create` makes or extends the
/// file); other nodes only keep a page cache.
pub fn build_segment(
    me: NodeId,
    data_dir: &Path,
    info: &SegmentInfo,
    create: bool,
    memory: Option<Memory>,
) -> Result<Segment, String> {
    let mapper: Box<dyn Mapper> = if info.home == Some(me.0) {
        Box::new(home_mapper(data_dir, info, create)?)
    } else {
        Box::new(ZeroMapper)
    };
    Segment::new(info.clone(), mapper, memory).map_err(|e| format!("creating its memfd: {e}"))
}

fn home_mapper(data_dir: &Path, info: &SegmentInfo, create: bool) -> Result<FileMapper, String> {
    let path = match &info.backing {
        Backing::Zero => files::zero_store(data_dir, SegmentId(info.id)),
        Backing::File { path } => PathBuf::from(path),
        Backing::Volume { .. } => return Err("a volume segment cannot be a cluster segment".into()),
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let size = if create || matches!(info.backing, Backing::Zero) {
        Some(info.size_bytes)
    } else {
        None
    };
    let m =
        FileMapper::open(&path, size).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let len = m
        .len_bytes()
        .map_err(|e| format!("reading the size of {}: {e}", path.display()))?;
    if len < info.size_bytes {
        return Err(format!(
            "backing file {} is {len} bytes, shorter than the segment ({} bytes): restore it",
            path.display(),
            info.size_bytes
        ));
    }
    Ok(m)
}
