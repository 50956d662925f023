//! What a peer may ask of the removal protocol: the home of a segment runs and announces its
//! removal, nobody else. Checked here, in the core, so the simulator runs the same rule.

use pagemesh_types::{NodeId, SegmentId};

use super::{RemovalMsg, RemovalOutput, Removals};

impl<R> Removals<R> {
    /// A message from peer `from` about a segment whose home is `home` (as the catalog or
    /// the segment's id says; `None`: not known here): what may be asked is checked first.
    /// Only the home prepares, commits and aborts a removal of its segment; only a node the
    /// home asked answers a prepare (checked by [`Removals::on_message`]). A message that
    /// breaks this rule is refused (`RemovalOutput::Refused`) and changes nothing.
    pub fn on_peer_message(
        &mut self,
        now_ms: u64,
        from: NodeId,
        home: Option<NodeId>,
        msg: RemovalMsg,
        mark: impl FnOnce() -> Result<(), String>,
        out: &mut Vec<RemovalOutput<R>>,
    ) {
        let seg = msg.seg();
        let from_home_only = !matches!(msg, RemovalMsg::Prepared { .. });
        if from_home_only && home != Some(from) {
            out.push(RemovalOutput::Refused {
                from,
                seg,
                why: "only a segment's home runs its removal",
            });
            return;
        }
        self.on_message(now_ms, from, msg, mark, out);
    }

    /// Peer `from` says `seg` (whose home is `home`) was removed from the cluster: forget it,
    /// if `from` is its home (tombstones are announced by the homes only).
    pub fn removed_by(
        &mut self,
        from: NodeId,
        home: Option<NodeId>,
        seg: SegmentId,
        out: &mut Vec<RemovalOutput<R>>,
    ) {
        if home != Some(from) {
            out.push(RemovalOutput::Refused {
                from,
                seg,
                why: "only a segment's home announces its removal",
            });
            return;
        }
        self.forget(seg, out);
    }
}
