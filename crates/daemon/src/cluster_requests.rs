//! Client requests on cluster segments and on the cluster itself: they go through the engine,
//! and the connection thread waits for its answer with a bound.

// The error of these helpers is the reply itself, built once per request: its size does not
// matter here.
#![allow(clippy::result_large_err)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use pagemesh_proto::{Backing, ErrorCode, Owner, Request, Response, SegmentCounters, SegmentStat};
use pagemesh_types::{NodeId, SegmentId};

use std::sync::Arc;

use pagemesh_cluster::ClusterHandle;
use pagemesh_node::segment::Segment;

use crate::access::Caller;
use crate::reply::err;
use crate::state::Daemon;
use pagemesh_cluster::{Input, Waker};

/// Longest wait for the engine on an ordinary request (it bounds faults and syncs itself).
const REQUEST_WAIT: Duration = Duration::from_secs(120);
/// Longest barrier or lock wait a client may ask for.
const MAX_SYNC_WAIT_MS: u64 = 3_600_000;

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Locks a client connection holds; released when the connection ends, however it ends.
#[derive(Default)]
pub struct HeldLocks {
    tx: Option<Waker>,
    held: Vec<(SegmentId, u32, u64)>,
}

impl HeldLocks {
    /// Whether the connection holds no lock.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

impl Drop for HeldLocks {
    fn drop(&mut self) {
        if let Some(tx) = &self.tx {
            for (seg, lock, token) in self.held.drain(..) {
                let _ = tx.send(Input::Unlock { seg, lock, token });
            }
        }
    }
}

fn wait<T>(rx: mpsc::Receiver<T>, bound: Duration, what: &str) -> Result<T, Response> {
    rx.recv_timeout(bound).map_err(|_| {
        err(
            ErrorCode::Internal,
            format!(
                "{what}: no answer from the cluster engine within {} s",
                bound.as_secs()
            ),
        )
    })
}

/// What a create asks for.
struct NewSegment<'a> {
    name: &'a str,
    size_bytes: Option<u64>,
    backing: &'a Backing,
    owner: Owner,
}

impl Daemon {
    /// Serve `req` if it concerns the cluster (a cluster segment, a barrier or lock, the
    /// cluster's status); `None` leaves it to the node-local handlers.
    pub(crate) fn cluster_request(
        &self,
        req: &Request,
        caller: &Caller,
        locks: &mut HeldLocks,
    ) -> Option<Response> {
        let Some(c) = self.cluster.get() else {
            return not_in_a_cluster(req);
        };
        let c = c.as_ref();
        match req {
            Request::CreateSegment {
                name,
                size_bytes,
                backing,
                partition,
                home,
                mode,
            } => {
                let owner = match caller.owner(*mode) {
                    Ok(o) => o,
                    Err(resp) => return Some(*resp),
                };
                let new = NewSegment {
                    name,
                    size_bytes: *size_bytes,
                    backing,
                    owner,
                };
                self.cluster_create(c, new, partition.as_deref(), *home)
            }
            Request::SyncSegment { name } => Some(self.cluster_sync(c, name).unwrap_or_else(|e| e)),
            Request::ReadAt { name, offset, len } => Some(
                self.cluster_io(c, name, *offset, *len, None)
                    .unwrap_or_else(|e| e),
            ),
            Request::WriteAt { name, offset, data } => {
                let len = data.len() as u64;
                let io = self.cluster_io(c, name, *offset, len, Some(data.clone()));
                Some(io.unwrap_or_else(|e| e))
            }
            Request::StatSegment { name } => {
                let s = self.cluster_segment_named(name)?;
                Some(cluster_stat(c, &s).unwrap_or_else(|e| e))
            }
            Request::ClearPoison { name } => {
                let s = self.cluster_segment_named(name)?;
                Some(cluster_clear_poison(c, &s).unwrap_or_else(|e| e))
            }
            Request::RemoveSegment { name } => {
                let s = self.cluster_segment_named(name)?;
                Some(cluster_remove(c, &s, caller).unwrap_or_else(|e| e))
            }
            Request::Pin { name, .. }
            | Request::Unpin { name, .. }
            | Request::PageInfo { name, .. } => {
                let s = self.cluster_segment_named(name)?;
                Some(err(
                    ErrorCode::InvalidArgument,
                    format!(
                        "segment {}: this operation is not available on cluster segments yet (see docs/cluster.md, \"Not yet\")",
                        s.info.name
                    ),
                ))
            }
            Request::BarrierWait {
                name,
                barrier,
                parties,
                timeout_ms,
            } => {
                let wait = self.cluster_barrier(c, name, *barrier, *parties, *timeout_ms);
                Some(wait.unwrap_or_else(|e| e))
            }
            Request::LockAcquire {
                name,
                lock,
                timeout_ms,
            } => Some(
                self.cluster_lock(c, locks, name, *lock, *timeout_ms)
                    .unwrap_or_else(|e| e),
            ),
            Request::LockRelease { name, lock } => Some(
                self.cluster_unlock(c, locks, name, *lock)
                    .unwrap_or_else(|e| e),
            ),
            Request::ClusterStatus => Some(cluster_status(c).unwrap_or_else(|e| e)),
            _ => None,
        }
    }

    /// The cluster segment named `name`, or `None` if it is a node-local segment (or none).
    fn cluster_segment_named(&self, name: &str) -> Option<Arc<Segment>> {
        self.segment(name).ok().filter(|s| s.info.home.is_some())
    }

    /// The id of the cluster segment named `name` (an error for a local or unknown one).
    fn cluster_seg(&self, name: &str) -> Result<SegmentId, Response> {
        let s = self.segment(name)?;
        if s.info.home.is_none() {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("segment {name} is local to this node (a volume segment), not a cluster segment"),
            ));
        }
        Ok(SegmentId(s.info.id))
    }

    /// Create a cluster segment, here or at its `home`. `None`: a volume segment, which is
    /// local to each node (the node-local handler creates it).
    fn cluster_create(
        &self,
        c: &ClusterHandle,
        new: NewSegment<'_>,
        partition: Option<&str>,
        home: Option<u32>,
    ) -> Option<Response> {
        let NewSegment {
            name,
            size_bytes,
            backing,
            owner,
        } = new;
        if matches!(backing, Backing::File { .. }) && owner.uid != 0 {
            return Some(err(
                ErrorCode::PermissionDenied,
                format!("creating cluster segment {name} backed by a file is root's to do: its home opens the file itself"),
            ));
        }
        if matches!(backing, Backing::Volume { .. }) {
            return home.map(|_| {
                err(
                    ErrorCode::InvalidArgument,
                    "a volume segment is local to each node: it has no --home",
                )
            });
        }
        if partition.is_some_and(|p| p != "default") {
            return Some(err(ErrorCode::InvalidArgument, "cluster segments are not in a memory partition yet (see docs/cluster.md); omit --partition"));
        }
        let home = home.unwrap_or(c.me());
        if home != c.me() && !c.cfg.peers.iter().any(|p| p.0 == home) {
            return Some(err(
                ErrorCode::InvalidArgument,
                format!("--home {home}: no such node in this cluster"),
            ));
        }
        if home == c.me() {
            return Some(
                match self.create_cluster_segment(
                    name,
                    size_bytes,
                    backing.clone(),
                    owner,
                    home,
                    true,
                ) {
                    Ok(seg) => Response::Segment(seg.info.clone()),
                    Err(e) => err(ErrorCode::InvalidArgument, e),
                },
            );
        }
        let (tx, rx) = mpsc::channel();
        let sent = c.send(Input::CreateRemote {
            home: NodeId(home),
            name: name.to_string(),
            size_bytes,
            backing: backing.clone(),
            owner,
            reply: tx,
        });
        if let Err(e) = sent {
            return Some(err(ErrorCode::Internal, e));
        }
        Some(match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(info)) => Response::Segment(info),
            Ok(Err(e)) => err(ErrorCode::InvalidArgument, format!("node {home}: {e}")),
            Err(_) => err(
                ErrorCode::Internal,
                format!("node {home} did not answer the create within 10 s: is it up? (`pagemesh cluster status`)"),
            ),
        })
    }

    fn cluster_sync(&self, c: &ClusterHandle, name: &str) -> Result<Response, Response> {
        self.cluster_sync_within(c, name, REQUEST_WAIT)
    }

    /// Sync a cluster segment at its home, waiting at most `bound` for the answer.
    pub(crate) fn cluster_sync_within(
        &self,
        c: &ClusterHandle,
        name: &str,
        bound: Duration,
    ) -> Result<Response, Response> {
        let seg = self.cluster_seg(name)?;
        let (tx, rx) = mpsc::channel();
        c.send(Input::Sync { seg, reply: tx })
            .map_err(|e| err(ErrorCode::Internal, e))?;
        match wait(rx, bound, "sync")? {
            Ok(()) => Ok(Response::Synced { pages_written: 0 }),
            Err(e) => Err(err(
                ErrorCode::Io,
                format!("segment {name}: sync failed: {e}"),
            )),
        }
    }

    /// Read `len` bytes at `offset` (`data: None`) or write `data` there, through the engine.
    fn cluster_io(
        &self,
        c: &ClusterHandle,
        name: &str,
        offset: u64,
        len: u64,
        data: Option<Vec<u8>>,
    ) -> Result<Response, Response> {
        let seg = self.cluster_seg(name)?;
        let s = self.segment(name)?;
        check_range(name, offset, len, s.info.size_bytes)?;
        let write = data.is_some();
        let (tx, rx) = mpsc::channel();
        c.send(Input::Io {
            seg,
            offset,
            len,
            data,
            reply: tx,
        })
        .map_err(|e| err(ErrorCode::Internal, e))?;
        let what = if write { "write" } else { "read" };
        let done = wait(rx, REQUEST_WAIT, what)?
            .map_err(|e| err(e.code(), format!("segment {name}: {what} failed: {e}")))?;
        Ok(if write {
            Response::Written {
                bytes: done.len() as u64,
            }
        } else {
            Response::Data(done)
        })
    }

    fn cluster_barrier(
        &self,
        c: &ClusterHandle,
        name: &str,
        barrier: u32,
        parties: u32,
        timeout_ms: u64,
    ) -> Result<Response, Response> {
        let seg = self.cluster_seg(name)?;
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        c.send(Input::Barrier {
            seg,
            barrier,
            parties,
            token,
            reply: tx,
        })
        .map_err(|e| err(ErrorCode::Internal, e))?;
        match rx.recv_timeout(Duration::from_millis(timeout_ms.min(MAX_SYNC_WAIT_MS))) {
            Ok(Ok(generation)) => Ok(Response::BarrierPassed { generation }),
            Ok(Err(e)) => Err(err(
                ErrorCode::InvalidArgument,
                format!("segment {name} barrier {barrier}: {e}"),
            )),
            Err(_) => {
                let _ = c.send(Input::Forget { token });
                Err(err(
                    ErrorCode::TimedOut,
                    format!("segment {name} barrier {barrier}: not all {parties} parties arrived within {timeout_ms} ms (a process died, or the home node is down?)"),
                ))
            }
        }
    }

    fn cluster_lock(
        &self,
        c: &ClusterHandle,
        locks: &mut HeldLocks,
        name: &str,
        lock: u32,
        timeout_ms: u64,
    ) -> Result<Response, Response> {
        let seg = self.cluster_seg(name)?;
        if locks.held.iter().any(|h| h.0 == seg && h.1 == lock) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("segment {name} lock {lock} is already held by this connection"),
            ));
        }
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        c.send(Input::Lock {
            seg,
            lock,
            token,
            reply: tx,
        })
        .map_err(|e| err(ErrorCode::Internal, e))?;
        locks.tx.get_or_insert_with(|| c.waker());
        // From here the lock may be granted at any time: release it whatever happens.
        locks.held.push((seg, lock, token));
        match rx.recv_timeout(Duration::from_millis(timeout_ms.min(MAX_SYNC_WAIT_MS))) {
            Ok(Ok(())) => Ok(Response::LockHeld),
            Ok(Err(e)) => {
                locks.held.pop();
                Err(err(
                    ErrorCode::InvalidArgument,
                    format!("segment {name} lock {lock}: {e}"),
                ))
            }
            Err(_) => {
                locks.held.pop();
                let _ = c.send(Input::Unlock { seg, lock, token });
                Err(err(
                    ErrorCode::TimedOut,
                    format!("segment {name} lock {lock}: not granted within {timeout_ms} ms"),
                ))
            }
        }
    }

    fn cluster_unlock(
        &self,
        c: &ClusterHandle,
        locks: &mut HeldLocks,
        name: &str,
        lock: u32,
    ) -> Result<Response, Response> {
        let seg = self.cluster_seg(name)?;
        let Some(i) = locks.held.iter().position(|h| h.0 == seg && h.1 == lock) else {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("segment {name} lock {lock} is not held by this connection"),
            ));
        };
        let (seg, lock, token) = locks.held.remove(i);
        c.send(Input::Unlock { seg, lock, token })
            .map(|()| Response::LockReleased)
            .map_err(|e| err(ErrorCode::Internal, e))
    }
}

/// The answer of a daemon outside any cluster to a request that needs one (`None`: the
/// request is node-local).
fn not_in_a_cluster(req: &Request) -> Option<Response> {
    match req {
        Request::CreateSegment { home: Some(_), .. } => Some(err(
            ErrorCode::InvalidArgument,
            "--home needs a cluster: start the daemon with --node-id, --listen and --peer (or --config)",
        )),
        Request::BarrierWait { .. }
        | Request::LockAcquire { .. }
        | Request::LockRelease { .. }
        | Request::ClusterStatus => Some(err(
            ErrorCode::InvalidArgument,
            "this daemon is not part of a cluster (start it with --node-id, --listen and --peer, or --config)",
        )),
        _ => None,
    }
}

/// A cluster segment's figures: what this node holds of it (from the engine) and its faults.
fn cluster_stat(c: &ClusterHandle, s: &Segment) -> Result<Response, Response> {
    let (tx, rx) = mpsc::channel();
    c.send(Input::Stat {
        seg: SegmentId(s.info.id),
        reply: tx,
    })
    .map_err(|e| err(ErrorCode::Internal, e))?;
    let cs = wait(rx, REQUEST_WAIT, "stat")?;
    let local = s.stat();
    Ok(Response::Stat(SegmentStat {
        info: s.info.clone(),
        partition: "default".into(),
        paged_pages: 0,
        pinned_pages: 0,
        resident_pages: cs.resident_pages,
        dirty_pages: cs.modified_pages,
        poisoned_pages: cs.poisoned_pages,
        attached_clients: local.attached_clients,
        counters: SegmentCounters {
            fault_service_p50_ns: c.figures.latency.quantile(0.5),
            fault_service_p99_ns: c.figures.latency.quantile(0.99),
            ..local.counters
        },
    }))
}

fn cluster_clear_poison(c: &ClusterHandle, s: &Segment) -> Result<Response, Response> {
    let (tx, rx) = mpsc::channel();
    let seg = SegmentId(s.info.id);
    c.send(Input::ClearPoison { seg, reply: tx })
        .map_err(|e| err(ErrorCode::Internal, e))?;
    match wait(rx, REQUEST_WAIT, "clear-poison")? {
        Ok(pages) => Ok(Response::PoisonCleared { pages }),
        Err(e) => Err(err(ErrorCode::Io, format!("segment {}: {e}", s.info.name))),
    }
}

fn cluster_remove(c: &ClusterHandle, s: &Segment, caller: &Caller) -> Result<Response, Response> {
    let (tx, rx) = mpsc::channel();
    let seg = SegmentId(s.info.id);
    let (uid, gids) = (caller.uid, caller.gids.clone());
    c.send(Input::Remove {
        seg,
        uid,
        gids,
        reply: tx,
    })
    .map_err(|e| err(ErrorCode::Internal, e))?;
    match wait(rx, Duration::from_secs(30), "remove")? {
        Ok(()) => Ok(Response::Removed),
        Err(e) => Err(err(
            ErrorCode::InvalidArgument,
            format!("segment {}: {e}", s.info.name),
        )),
    }
}

fn cluster_status(c: &ClusterHandle) -> Result<Response, Response> {
    let (tx, rx) = mpsc::channel();
    c.send(Input::Status { reply: tx })
        .map_err(|e| err(ErrorCode::Internal, e))?;
    let status = wait(rx, Duration::from_secs(10), "cluster status")?;
    Ok(Response::Cluster(status))
}

fn check_range(name: &str, offset: u64, len: u64, size: u64) -> Result<(), Response> {
    if len > pagemesh_proto::MAX_IO_CHUNK_BYTES || offset.checked_add(len).is_none_or(|e| e > size)
    {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("segment {name}: range {offset}+{len} is outside the segment ({size} bytes) or larger than one request"),
        ));
    }
    Ok(())
}
