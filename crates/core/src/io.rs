//! The output side shared by the cache and the directory: the outbox, the clock as last told,
//! what this node knows of its peers, and branch counters.

use crate::config::{InjectedBugs, Timing};
use crate::coverage::{Branch, Coverage};
use crate::ids::Epoch;
use crate::msg::{Envelope, Msg};
use crate::output::{Event, Output};
use pagemesh_types::NodeId;
use std::collections::BTreeMap;

/// Everything a handler needs besides its own state.
#[derive(Debug)]
pub(crate) struct Io {
    pub id: NodeId,
    pub epoch: Epoch,
    pub now_ms: u64,
    pub timing: Timing,
    pub max_queue: usize,
    pub holdings_per_message: usize,
    pub bugs: InjectedBugs,
    pub peer_epochs: BTreeMap<NodeId, Epoch>,
    /// Fence floors reloaded by the driver (set before this incarnation heard the peer): a
    /// message from below is dropped, but the first one at or above is first contact, not a
    /// restart (this node never knew what that incarnation held).
    pub fences: BTreeMap<NodeId, Epoch>,
    pub out: Vec<Output>,
    pub cov: Coverage,
}

impl Io {
    /// Queue a message to `to`, addressed to the incarnation of `to` we know.
    pub fn send(&mut self, to: NodeId, msg: Msg) {
        let to_epoch = if to == self.id {
            self.epoch
        } else {
            self.peer_epochs.get(&to).copied().unwrap_or_default()
        };
        self.out.push(Output::Send(Envelope {
            from: self.id,
            from_epoch: self.epoch,
            to,
            to_epoch,
            msg,
        }));
    }

    pub fn emit(&mut self, o: Output) {
        self.out.push(o);
    }

    pub fn event(&mut self, e: Event) {
        self.out.push(Output::Event(e));
    }

    pub fn hit(&mut self, b: Branch) {
        self.cov.hit(b);
    }

    pub fn protocol_error(&mut self, what: String) {
        self.event(Event::ProtocolError { what });
    }

    pub fn retry_at(&self) -> u64 {
        self.now_ms.saturating_add(self.timing.retry_ms)
    }
}
