//! Who may do what to a segment: each segment has an owner (its creator's uid and gid) and a
//! mode, checked against the caller's `SO_PEERCRED` (and its groups) before a request is served.
//! Root may do everything. Cluster segments are checked on the node where the request arrives,
//! against the owner the catalog replicated to it (one uid namespace across the cluster; the
//! peer links are authenticated, so a node trusts its peers' checks).

use pagemesh_proto::{Access, ErrorCode, Owner, OwnerChange, Request, Response, SegmentInfo};

use crate::reply::err;
use crate::state::Daemon;

/// The user a request is served for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    pub uid: u32,
    /// Its groups, the primary one first.
    pub gids: Vec<u32>,
}

impl Caller {
    /// The daemon itself (its own requests, e.g. the syncs at shutdown).
    pub(crate) fn root() -> Caller {
        Caller {
            uid: 0,
            gids: vec![0],
        }
    }

    /// The owner of a segment this caller creates with `mode`.
    pub(crate) fn owner(&self, mode: Option<u32>) -> Result<Owner, Box<Response>> {
        let mode = mode.unwrap_or(Owner::DEFAULT_MODE);
        if mode > 0o777 {
            return Err(Box::new(err(
                ErrorCode::InvalidArgument,
                format!("mode {mode:o}: permission bits only (at most 777, octal)"),
            )));
        }
        Ok(Owner {
            uid: self.uid,
            gid: self.gids.first().copied().unwrap_or(self.uid),
            mode,
        })
    }
}

/// What `req` needs of the segment it names, if it names one.
fn needs(req: &Request) -> Option<(&str, Access)> {
    use Request as R;
    Some(match req {
        R::ReadAt { name, .. }
        | R::PageInfo { name, .. }
        | R::Attach {
            name,
            read_only: true,
        } => (name, Access::Read),
        R::WriteAt { name, .. }
        | R::Attach {
            name,
            read_only: false,
        }
        | R::SyncSegment { name }
        | R::ClearPoison { name }
        | R::Pin { name, .. }
        | R::Unpin { name, .. }
        | R::BarrierWait { name, .. }
        | R::LockAcquire { name, .. }
        | R::LockRelease { name, .. } => (name, Access::Write),
        R::RemoveSegment { name } | R::ChmodSegment { name, .. } => (name, Access::Own),
        _ => return None,
    })
}

impl Daemon {
    /// The current owner of a segment this node has (available or not).
    pub(crate) fn owner_of(&self, info: &SegmentInfo) -> Owner {
        self.owners.get(info)
    }

    /// `info` with its current owner (for listings).
    pub(crate) fn with_owner(&self, mut info: SegmentInfo) -> SegmentInfo {
        info.owner = self.owner_of(&info);
        info
    }

    /// Refuse `req` if `caller` may not do it to the segment it names (`None`: allowed, or
    /// no such segment, which the handler reports).
    pub(crate) fn refused(&self, req: &Request, caller: &Caller) -> Option<Response> {
        if caller.uid == 0 {
            return None;
        }
        if let Request::ChownSegment { name, .. } = req {
            return Some(denied(
                caller,
                &format!("changing the owner of segment {name}"),
                "root's to do",
            ));
        }
        let (name, what) = needs(req)?;
        let owner = self.current_owner(name)?;
        if owner.allows(caller.uid, &caller.gids, what) {
            return None;
        }
        let verb = match what {
            Access::Read => "reading",
            Access::Write => "writing (or attaching read-write)",
            Access::Own => "removing or changing",
        };
        let why = format!(
            "it is uid {}'s, group {}, mode {}",
            owner.uid,
            owner.gid,
            owner.mode_string()
        );
        Some(denied(caller, &format!("{verb} segment {name}"), &why))
    }

    fn current_owner(&self, name: &str) -> Option<Owner> {
        if let Some(s) = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Some(self.owner_of(&s.info));
        }
        let unavailable = self.unavailable.read().unwrap_or_else(|e| e.into_inner());
        unavailable.get(name).map(|u| self.owner_of(&u.info))
    }

    /// `segment chmod` / `segment chown` (the caller was checked): the catalog first, then the
    /// segment's owner here; a cluster segment's at its home, which checks the caller again and
    /// announces the change to every node.
    pub(crate) fn change_owner(&self, req: &Request, caller: &Caller) -> Response {
        let (name, change) = match req {
            Request::ChmodSegment { name, mode } => (
                name,
                OwnerChange {
                    mode: Some(*mode),
                    ..OwnerChange::default()
                },
            ),
            Request::ChownSegment { name, uid, gid } => (
                name,
                OwnerChange {
                    uid: *uid,
                    gid: *gid,
                    ..OwnerChange::default()
                },
            ),
            _ => unreachable!("change_owner of {req:?}"),
        };
        let seg = match self.segment(name) {
            Ok(s) => s,
            Err(resp) => return resp,
        };
        let changed = if seg.info.home.is_some() {
            self.change_cluster_owner(&seg.info, change, caller)
        } else {
            change
                .apply(self.owner_of(&seg.info), caller.uid)
                .and_then(|owner| self.record_owner(&seg.info, owner))
                .map(|()| self.with_owner(seg.info.clone()))
        };
        match changed {
            Ok(info) => {
                let o = info.owner;
                log::info!(
                    "segment {name}: owner uid {} gid {} mode {:o}",
                    o.uid,
                    o.gid,
                    o.mode
                );
                Response::Segment(info)
            }
            Err(e) => err(ErrorCode::InvalidArgument, format!("segment {name}: {e}")),
        }
    }

    /// Persist `owner` as segment `info`'s (catalog first) and use it here from now on.
    pub(crate) fn record_owner(&self, info: &SegmentInfo, owner: Owner) -> Result<(), String> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        catalog
            .set_owner(info.id, owner)
            .map_err(|e| e.to_string())?;
        self.owners.set(info.id, owner);
        Ok(())
    }

    fn change_cluster_owner(
        &self,
        info: &SegmentInfo,
        change: OwnerChange,
        caller: &Caller,
    ) -> Result<SegmentInfo, String> {
        let c = self
            .cluster
            .get()
            .ok_or("this daemon is not part of a cluster")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let r = pagemesh_cluster::OwnerRequest {
            seg: pagemesh_types::SegmentId(info.id),
            change,
            uid: caller.uid,
            gids: caller.gids.clone(),
        };
        c.send(pagemesh_cluster::Input::SetOwner(r, tx))?;
        let home = info.home.unwrap_or_default();
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .map_err(|_| format!("its home, node {home}, did not answer within 10 s: is it up? (`pagemesh cluster status`)"))?
    }
}

fn denied(caller: &Caller, what: &str, why: &str) -> Response {
    log::warn!("uid {}: refused {what} ({why})", caller.uid);
    err(
        ErrorCode::PermissionDenied,
        format!(
            "{what}: permission denied ({why}; uid {} asked)",
            caller.uid
        ),
    )
}
