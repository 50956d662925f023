//! Requests about node-local segments: create and remove.

use std::sync::Arc;

use std::sync::atomic::Ordering;

use pagemesh_node::segment::Segment;
use pagemesh_proto::{Backing, ErrorCode, Response, SegmentInfo, MAX_IO_CHUNK_BYTES};
use pagemesh_types::ByteSize;

use crate::reply::{err, io_err};
use crate::state::{build_segment, valid_name, Daemon, Size, MAX_SEGMENT_BYTES};

impl Daemon {
    pub(crate) fn create(
        &self,
        name: String,
        size: Option<u64>,
        backing: Backing,
        partition: Option<String>,
        owner: pagemesh_proto::Owner,
        passed: Option<std::fs::File>,
    ) -> Response {
        let partition = match self.partition_for(owner, partition) {
            Ok(p) => p,
            Err(resp) => return *resp,
        };
        if !valid_name(&name) {
            return err(
                ErrorCode::InvalidArgument,
                format!("invalid segment name {name:?}: use 1-64 of A-Z a-z 0-9 . _ -"),
            );
        }
        if size == Some(0) {
            return err(
                ErrorCode::InvalidArgument,
                "segment size must be at least one byte",
            );
        }
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(taken) = self.taken(&name, &backing) {
            return taken;
        }
        let size = match (&backing, size) {
            (Backing::Volume { name: v }, _) => match self.volumes.read().unwrap_or_else(|e| e.into_inner()).get(v) {
                Some(vol) if size.is_none() || size == Some(vol.info.size_bytes) => vol.info.size_bytes,
                Some(vol) => {
                    return err(
                        ErrorCode::InvalidArgument,
                        format!("segment {name}: a volume segment has the volume's size ({} bytes); omit --size", vol.info.size_bytes),
                    )
                }
                None => return err(ErrorCode::NotFound, format!("no volume named {v:?} (see `pagemesh volume list`)")),
            },
            (Backing::Zero, None) => return err(ErrorCode::InvalidArgument, format!("segment {name}: a zero segment needs --size")),
            (_, s) => s.unwrap_or(0),
        };
        if size > MAX_SEGMENT_BYTES {
            return err(
                ErrorCode::InvalidArgument,
                format!(
                    "segment {name}: size {} is larger than the limit {}",
                    ByteSize(size),
                    ByteSize(MAX_SEGMENT_BYTES)
                ),
            );
        }
        let info0 = SegmentInfo {
            name: name.clone(),
            id: 0,
            size_bytes: size,
            backing,
            home: None,
            owner,
        };
        let req_size = if matches!(info0.backing, Backing::File { .. }) && size == 0 {
            None
        } else {
            Some(size)
        };
        let seg = {
            let volumes = self.volumes.read().unwrap_or_else(|e| e.into_inner());
            let memory = match crate::pool::memory_for(&self.pool, &info0.backing, &partition) {
                Ok(m) => m,
                Err(e) => return err(ErrorCode::NotFound, format!("segment {name}: {e}")),
            };
            match build_segment(&info0, Size::Create(req_size), &volumes, memory, passed) {
                Ok(s) => s,
                Err(e) => return err(ErrorCode::InvalidArgument, format!("segment {name}: {e}")),
            }
        };
        let mut seg = seg;
        seg.info.id = catalog.next_id();
        let info = seg.info.clone();
        if let Err(e) = catalog.add(&info, &partition) {
            return err(ErrorCode::Io, e.to_string());
        }
        let seg = Arc::new(seg);
        self.pool.register(seg.info.id, &seg);
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), seg);
        log::info!(
            "created segment {name}: {} backed by {}",
            ByteSize(info.size_bytes),
            info.backing
        );
        Response::Segment(info)
    }

    /// Why a new segment `name` over `backing` cannot be created: the name is taken (by an
    /// open segment or one the catalog holds unavailable), or the file backs another segment
    /// already (two page caches of one file would each overwrite the other's writes).
    fn taken(&self, name: &str, backing: &Backing) -> Option<Response> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let unavailable = self.unavailable.read().unwrap_or_else(|e| e.into_inner());
        if segments.contains_key(name) {
            return Some(err(
                ErrorCode::AlreadyExists,
                format!("segment {name:?} already exists (`pagemesh segment rm {name}` first)"),
            ));
        }
        if let Some(u) = unavailable.get(name) {
            return Some(err(
                ErrorCode::AlreadyExists,
                format!(
                    "segment {name:?} exists in the catalog but is unavailable ({})",
                    u.why
                ),
            ));
        }
        let Backing::File { path } = backing else {
            return None;
        };
        let id = |p: &str| {
            std::fs::metadata(p).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            })
        };
        let mine = id(path);
        let same = |other: &SegmentInfo| match &other.backing {
            Backing::File { path: p } => p == path || (mine.is_some() && id(p) == mine),
            _ => false,
        };
        let first = segments
            .values()
            .map(|s| &s.info)
            .chain(unavailable.values().map(|u| &u.info))
            .find(|o| same(o))?;
        Some(err(
            ErrorCode::AlreadyExists,
            format!(
                "{path} already backs segment {}: one file backs one segment (use that one, or remove it first)",
                first.name
            ),
        ))
    }

    /// Forget a segment of the catalog that could not be opened (there is nothing to sync or
    /// detach); `None` if `name` is not one.
    fn remove_unavailable(&self, name: &str) -> Option<Response> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let mut unavailable = self.unavailable.write().unwrap_or_else(|e| e.into_inner());
        let u = unavailable.get(name)?;
        if let Some(home) = u.info.home {
            return Some(err(
                ErrorCode::InvalidArgument,
                format!(
                    "segment {name} is a cluster segment (home node {home}) unavailable here ({}): remove it from a node that has it, or start this daemon with its cluster",
                    u.why
                ),
            ));
        }
        if let Err(e) = catalog.remove(name) {
            return Some(err(ErrorCode::Io, e.to_string()));
        }
        unavailable.remove(name);
        log::info!("removed segment {name} (it was unavailable; its backing was not touched)");
        Some(Response::Removed)
    }

    pub(crate) fn list_unavailable(&self) -> Response {
        let mut v: Vec<_> = self
            .unavailable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .map(|mut u| {
                u.info = self.with_owner(u.info);
                u
            })
            .collect();
        v.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        Response::Unavailable(v)
    }

    pub(crate) fn remove(&self, name: &str) -> Response {
        if let Some(r) = self.remove_unavailable(name) {
            return r;
        }
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let seg = match self.segment(name) {
            Ok(s) => s,
            Err(e) => return e,
        };
        if let Err(pids) = seg.mark_removed() {
            return err(
                ErrorCode::InUse,
                format!(
                    "segment {name} is attached by pid(s) {}; end those processes or detach first",
                    pids.iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        // Like unmapping a file: dirty data reaches the file before the cache goes away.
        if let Err(e) = seg.sync() {
            seg.unmark_removed();
            return err(
                ErrorCode::Io,
                format!("segment {name} not removed: writing back its dirty pages failed: {e}"),
            );
        }
        if let Err(e) = catalog.remove(name) {
            seg.unmark_removed();
            return err(ErrorCode::Io, e.to_string());
        }
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        seg.release();
        log::info!("removed segment {name}");
        Response::Removed
    }

    pub(crate) fn list_segments(&self) -> Response {
        let mut v: Vec<SegmentInfo> = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| self.with_owner(s.info.clone()))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Response::Segments(v)
    }

    pub(crate) fn stat_segment(&self, name: &str) -> Response {
        self.segment(name)
            .map(|s| {
                let mut st = s.stat();
                st.info = self.with_owner(st.info);
                Response::Stat(st)
            })
            .unwrap_or_else(|e| e)
    }

    pub(crate) fn sync_segment(&self, name: &str) -> Response {
        match self.segment(name) {
            Ok(s) => match s.sync() {
                Ok(pages_written) => Response::Synced { pages_written },
                Err(e) => io_err(e),
            },
            Err(e) => e,
        }
    }

    pub(crate) fn read_segment(&self, name: &str, offset: u64, len: u64) -> Response {
        match self.segment(name) {
            Ok(_) if len > MAX_IO_CHUNK_BYTES => err(
                ErrorCode::InvalidArgument,
                format!("read of {len} bytes exceeds {MAX_IO_CHUNK_BYTES} per request"),
            ),
            Ok(s) => {
                let mut buf = vec![0u8; len as usize];
                match s.read_at(offset, &mut buf) {
                    Ok(()) => Response::Data(buf),
                    Err(e) => io_err(e),
                }
            }
            Err(e) => e,
        }
    }

    pub(crate) fn write_segment(&self, name: &str, offset: u64, data: &[u8]) -> Response {
        match self.segment(name) {
            Ok(_) if data.len() as u64 > MAX_IO_CHUNK_BYTES => err(
                ErrorCode::InvalidArgument,
                format!(
                    "write of {} bytes exceeds {MAX_IO_CHUNK_BYTES} per request",
                    data.len()
                ),
            ),
            Ok(s) => match s.write_at(offset, data) {
                Ok(()) => Response::Written {
                    bytes: data.len() as u64,
                },
                Err(e) => io_err(e),
            },
            Err(e) => e,
        }
    }

    pub(crate) fn clear_segment_poison(&self, name: &str) -> Response {
        match self.segment(name) {
            Ok(s) => Response::PoisonCleared {
                pages: s.clear_poison(),
            },
            Err(e) => e,
        }
    }

    /// The first step of attaching: the segment's description, and its memfd to send along.
    pub(crate) fn attach(&self, name: &str) -> (Response, Option<Arc<Segment>>) {
        match self.segment(name) {
            Ok(s) => {
                let attach_id = self.next_attach.fetch_add(1, Ordering::Relaxed);
                let info = self.with_owner(s.info.clone());
                let lease_slot = self.lease_slot(&s);
                let resp = Response::Attached {
                    info,
                    attach_id,
                    lease_slot,
                };
                (resp, Some(s))
            }
            Err(e) => (e, None),
        }
    }

    /// The lease-board slot of a cluster segment homed on another node: its processes stop
    /// using their copies when the node's lease on that home ends (`None`: local, or homed here).
    fn lease_slot(&self, s: &Segment) -> Option<u32> {
        let home = pagemesh_types::NodeId(s.info.home?);
        let cluster = self.cluster.get()?;
        cluster.transport.board().slot(home)
    }
}
