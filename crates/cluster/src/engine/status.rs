//! The cluster status command: this node's figures and the peers' answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use pagemesh_proto::peer::NodeFigures;
use pagemesh_proto::{ClusterNode, ClusterStatus, SegmentInfo};

use super::Engine;

impl Engine {
    pub(super) fn my_figures(&self) -> NodeFigures {
        let f = &self.figures;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NodeFigures {
            faults: l(&f.faults),
            remote_fetches: l(&f.remote_fetches),
            invalidations: l(&f.invalidations),
            downgrades: l(&f.downgrades),
            bytes_sent: l(&self.transport.bytes_sent),
            bytes_received: l(&self.transport.bytes_received),
            sigbus: l(&f.sigbus),
            fault_p50_ns: f.latency.quantile(0.50),
            fault_p99_ns: f.latency.quantile(0.99),
        }
    }

    pub(super) fn finish_statuses(&mut self, _force: bool) {
        let peers = self.transport.peers();
        let now = Instant::now();
        let done: Vec<u64> = self
            .statuses
            .iter()
            .filter(|(_, w)| {
                w.deadline <= now
                    || peers
                        .iter()
                        .all(|p| w.figures.contains_key(&p.id) || self.membership.is_dead(p.id))
            })
            .map(|(r, _)| *r)
            .collect();
        for r in done {
            let Some(mut w) = self.statuses.remove(&r) else {
                continue;
            };
            let mut nodes = vec![ClusterNode {
                id: self.me().0,
                addr: self.cfg.listen.to_string(),
                epoch: self.node.epoch().0,
                alive: true,
                declared_dead: false,
                silent_ms: 0,
                figures: w.figures.remove(&self.me()),
            }];
            for p in &peers {
                nodes.push(ClusterNode {
                    id: p.id.0,
                    addr: p.addr.to_string(),
                    epoch: self.node.peer_epoch(p.id).0.max(p.epoch),
                    alive: p.silent_ms <= self.dead_after_ms,
                    declared_dead: self.membership.is_dead(p.id),
                    silent_ms: p.silent_ms,
                    figures: w.figures.remove(&p.id),
                });
            }
            let mut segments: Vec<SegmentInfo> =
                self.segs.values().map(|s| s.info.clone()).collect();
            segments.sort_by(|a, b| a.name.cmp(&b.name));
            let _ = w.reply.send(ClusterStatus {
                cluster_id: self.cfg.cluster_id,
                node: self.me().0,
                epoch: self.node.epoch().0,
                nodes,
                segments,
            });
        }
    }
}
