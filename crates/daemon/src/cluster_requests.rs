//! Client requests on cluster segments and on the cluster itself: they go through the engine,
//! and the connection thread waits for its answer with a bound.

// The error of these helpers is the reply itself, built once per request: its size does not
// matter here.
#![allow(clippy::result_large_err)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use pagemesh_proto::{Backing, ErrorCode, Request, Response, SegmentCounters, SegmentStat};
use pagemesh_types::{NodeId, SegmentId};

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

impl Daemon {
    /// Serve `req` if it concerns the cluster; `None` leaves it to the node-local handlers.
    pub(crate) fn cluster_request(&self, req: &Request, locks: &mut HeldLocks) -> Option<Response> {
        let Some(c) = self.cluster.get() else {
            return match req {
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
            };
        };
        let cluster_seg = |name: &str| -> Result<SegmentId, Response> {
            let s = self.segment(name)?;
            if s.info.home.is_none() {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("segment {name} is local to this node (a volume segment), not a cluster segment"),
                ));
            }
            Ok(SegmentId(s.info.id))
        };
        let run = |f: &dyn Fn() -> Result<Response, Response>| Some(f().unwrap_or_else(|e| e));
        match req {
            Request::CreateSegment {
                name,
                size_bytes,
                backing,
                partition,
                home,
            } => {
                if matches!(backing, Backing::Volume { .. }) {
                    if home.is_some() {
                        return Some(err(
                            ErrorCode::InvalidArgument,
                            "a volume segment is local to each node: it has no --home",
                        ));
                    }
                    return None;
                }
                if partition.as_deref().is_some_and(|p| p != "default") {
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
                            *size_bytes,
                            backing.clone(),
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
                    name: name.clone(),
                    size_bytes: *size_bytes,
                    backing: backing.clone(),
                    reply: tx,
                });
                if let Err(e) = sent {
                    return Some(err(ErrorCode::Internal, e));
                }
                Some(
                    match rx.recv_timeout(Duration::from_secs(10)) {
                        Ok(Ok(info)) => Response::Segment(info),
                        Ok(Err(e)) => err(ErrorCode::InvalidArgument, format!("node {home}: {e}")),
                        Err(_) => err(
                            ErrorCode::Internal,
                            format!("node {home} did not answer the create within 10 s: is it up? (`pagemesh cluster status`)"),
                        ),
                    },
                )
            }
            Request::SyncSegment { name } => run(&|| {
                let seg = cluster_seg(name)?;
                let (tx, rx) = mpsc::channel();
                c.send(Input::Sync { seg, reply: tx })
                    .map_err(|e| err(ErrorCode::Internal, e))?;
                match wait(rx, REQUEST_WAIT, "sync")? {
                    Ok(()) => Ok(Response::Synced { pages_written: 0 }),
                    Err(e) => Err(err(
                        ErrorCode::Io,
                        format!("segment {name}: sync failed: {e}"),
                    )),
                }
            }),
            Request::ReadAt { name, offset, len } => run(&|| {
                let seg = cluster_seg(name)?;
                let s = self.segment(name)?;
                check_range(name, *offset, *len, s.info.size_bytes)?;
                let (tx, rx) = mpsc::channel();
                c.send(Input::Io {
                    seg,
                    offset: *offset,
                    len: *len,
                    data: None,
                    reply: tx,
                })
                .map_err(|e| err(ErrorCode::Internal, e))?;
                wait(rx, REQUEST_WAIT, "read")?
                    .map(Response::Data)
                    .map_err(|e| err(e.code(), format!("segment {name}: read failed: {e}")))
            }),
            Request::WriteAt { name, offset, data } => run(&|| {
                let seg = cluster_seg(name)?;
                let s = self.segment(name)?;
                check_range(name, *offset, data.len() as u64, s.info.size_bytes)?;
                let (tx, rx) = mpsc::channel();
                c.send(Input::Io {
                    seg,
                    offset: *offset,
                    len: data.len() as u64,
                    data: Some(data.clone()),
                    reply: tx,
                })
                .map_err(|e| err(ErrorCode::Internal, e))?;
                wait(rx, REQUEST_WAIT, "write")?
                    .map(|d| Response::Written {
                        bytes: d.len() as u64,
                    })
                    .map_err(|e| err(e.code(), format!("segment {name}: write failed: {e}")))
            }),
            Request::StatSegment { name } => {
                let s = match self.segment(name) {
                    Ok(s) if s.info.home.is_some() => s,
                    _ => return None,
                };
                run(&|| {
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
                })
            }
            Request::ClearPoison { name } => {
                match self.segment(name) {
                    Ok(s) if s.info.home.is_some() => {}
                    _ => return None,
                }
                run(&|| {
                    let seg = cluster_seg(name)?;
                    let (tx, rx) = mpsc::channel();
                    c.send(Input::ClearPoison { seg, reply: tx })
                        .map_err(|e| err(ErrorCode::Internal, e))?;
                    match wait(rx, REQUEST_WAIT, "clear-poison")? {
                        Ok(pages) => Ok(Response::PoisonCleared { pages }),
                        Err(e) => Err(err(ErrorCode::Io, format!("segment {name}: {e}"))),
                    }
                })
            }
            Request::RemoveSegment { name } => {
                match self.segment(name) {
                    Ok(s) if s.info.home.is_some() => {}
                    _ => return None,
                }
                run(&|| {
                    let seg = cluster_seg(name)?;
                    let (tx, rx) = mpsc::channel();
                    c.send(Input::Remove { seg, reply: tx })
                        .map_err(|e| err(ErrorCode::Internal, e))?;
                    match wait(rx, Duration::from_secs(30), "remove")? {
                        Ok(()) => Ok(Response::Removed),
                        Err(e) => Err(err(
                            ErrorCode::InvalidArgument,
                            format!("segment {name}: {e}"),
                        )),
                    }
                })
            }
            Request::Pin { name, .. }
            | Request::Unpin { name, .. }
            | Request::PageInfo { name, .. } => {
                let s = match self.segment(name) {
                    Ok(s) if s.info.home.is_some() => s,
                    _ => return None,
                };
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
            } => run(&|| {
                let seg = cluster_seg(name)?;
                let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel();
                c.send(Input::Barrier {
                    seg,
                    barrier: *barrier,
                    parties: *parties,
                    token,
                    reply: tx,
                })
                .map_err(|e| err(ErrorCode::Internal, e))?;
                match rx.recv_timeout(Duration::from_millis((*timeout_ms).min(MAX_SYNC_WAIT_MS))) {
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
            }),
            Request::LockAcquire {
                name,
                lock,
                timeout_ms,
            } => {
                let seg = match cluster_seg(name) {
                    Ok(s) => s,
                    Err(e) => return Some(e),
                };
                if locks.held.iter().any(|h| h.0 == seg && h.1 == *lock) {
                    return Some(err(
                        ErrorCode::InvalidArgument,
                        format!("segment {name} lock {lock} is already held by this connection"),
                    ));
                }
                let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel();
                if let Err(e) = c.send(Input::Lock {
                    seg,
                    lock: *lock,
                    token,
                    reply: tx,
                }) {
                    return Some(err(ErrorCode::Internal, e));
                }
                locks.tx.get_or_insert_with(|| c.waker());
                // From here the lock may be granted at any time: release it whatever happens.
                locks.held.push((seg, *lock, token));
                Some(
                    match rx
                        .recv_timeout(Duration::from_millis((*timeout_ms).min(MAX_SYNC_WAIT_MS)))
                    {
                        Ok(Ok(())) => Response::LockHeld,
                        Ok(Err(e)) => {
                            locks.held.pop();
                            err(
                                ErrorCode::InvalidArgument,
                                format!("segment {name} lock {lock}: {e}"),
                            )
                        }
                        Err(_) => {
                            locks.held.pop();
                            let _ = c.send(Input::Unlock {
                                seg,
                                lock: *lock,
                                token,
                            });
                            err(
                                ErrorCode::TimedOut,
                                format!("segment {name} lock {lock}: not granted within {timeout_ms} ms"),
                            )
                        }
                    },
                )
            }
            Request::LockRelease { name, lock } => {
                let seg = match cluster_seg(name) {
                    Ok(s) => s,
                    Err(e) => return Some(e),
                };
                let Some(i) = locks.held.iter().position(|h| h.0 == seg && h.1 == *lock) else {
                    return Some(err(
                        ErrorCode::InvalidArgument,
                        format!("segment {name} lock {lock} is not held by this connection"),
                    ));
                };
                let (seg, lock, token) = locks.held.remove(i);
                Some(match c.send(Input::Unlock { seg, lock, token }) {
                    Ok(()) => Response::LockReleased,
                    Err(e) => err(ErrorCode::Internal, e),
                })
            }
            Request::ClusterStatus => run(&|| {
                let (tx, rx) = mpsc::channel();
                c.send(Input::Status { reply: tx })
                    .map_err(|e| err(ErrorCode::Internal, e))?;
                Ok(Response::Cluster(wait(
                    rx,
                    Duration::from_secs(10),
                    "cluster status",
                )?))
            }),
            _ => None,
        }
    }
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
