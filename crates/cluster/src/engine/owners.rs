//! Changing the owner or mode of a cluster segment: the home checks the caller again, records
//! the change (`Host::set_owner`) and announces the segment anew; every node takes the home's
//! announcement (`Host::adopt` updates a known segment's owner).

use std::sync::mpsc::Sender;
use std::time::Instant;

use pagemesh_proto::peer::{Control, PeerFrame};
use pagemesh_proto::{OwnerChange, SegmentInfo};
use pagemesh_types::{NodeId, SegmentId};

use super::{Engine, Route};

/// A change asked of a segment's home: (reply, when, home).
pub(super) type OwnerWait = (Sender<Result<SegmentInfo, String>>, Instant, NodeId);

/// Who asked for a change of a cluster segment's owner or mode, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRequest {
    /// The segment.
    pub seg: SegmentId,
    /// The change.
    pub change: OwnerChange,
    /// The caller (checked on its node already; the home checks it again): uid and groups.
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Engine {
    /// A client of this node asks (its caller checked here already).
    pub(super) fn set_owner(
        &mut self,
        r: OwnerRequest,
        reply: Sender<Result<SegmentInfo, String>>,
    ) {
        match self.route(r.seg) {
            Route::Here => {
                let _ = reply.send(self.set_owner_here(r.seg, r.change, r.uid));
            }
            Route::Home(home) => {
                let req = self.req_id();
                self.owner_changes
                    .insert(req, (reply, Instant::now(), home));
                let msg = Control::SetOwner {
                    req,
                    seg: r.seg.0,
                    change: r.change,
                    uid: r.uid,
                    gids: r.gids,
                };
                self.send_peer(home, PeerFrame::Control(msg));
            }
            Route::Unknown => {
                let _ = reply.send(Err(format!("no cluster segment with id {:#x}", r.seg.0)));
            }
        }
    }

    /// A peer asks, as the segment's home.
    pub(super) fn on_set_owner(
        &mut self,
        from: NodeId,
        req: u64,
        seg: SegmentId,
        change: OwnerChange,
        uid: u32,
    ) {
        let result = match self.route(seg) {
            Route::Here => self.set_owner_here(seg, change, uid),
            _ => Err(format!(
                "{} is not the home of segment id {:#x}",
                self.me(),
                seg.0
            )),
        };
        let msg = Control::SetOwnerDone { req, result };
        self.send_peer(from, PeerFrame::Control(msg));
    }

    fn set_owner_here(
        &mut self,
        seg: SegmentId,
        change: OwnerChange,
        uid: u32,
    ) -> Result<SegmentInfo, String> {
        let info = self.host.set_owner(seg, change, uid)?;
        self.broadcast(Control::Catalog {
            segments: vec![info.clone()],
        });
        Ok(info)
    }

    /// The home answered: taken only from the home asked, and into the catalog here before the
    /// client hears.
    pub(super) fn on_set_owner_done(
        &mut self,
        from: NodeId,
        req: u64,
        result: Result<SegmentInfo, String>,
    ) {
        match self.owner_changes.get(&req) {
            None => return,
            Some(w) if w.2 != from => {
                return log::warn!("{from} sent an owner change it was not asked for; refused")
            }
            Some(_) => {}
        }
        let result = result.and_then(|info| {
            if info.home != Some(from.0) || SegmentId(info.id).home() != Some(from) {
                return Err(format!("{from} answered for a segment homed elsewhere"));
            }
            self.host.adopt(&info).map(|_| info)
        });
        if let Some((r, _, _)) = self.owner_changes.remove(&req) {
            let _ = r.send(result);
        }
    }
}
