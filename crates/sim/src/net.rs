//! The simulated network: seeded delay (so messages reorder), drops, duplicates and partitions.

use crate::world::{Ev, Violation, World};
use pagemesh_core::Envelope;
use pagemesh_types::NodeId;

impl World {
    pub(crate) fn partitioned(&self, a: NodeId, b: NodeId) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|s| s.contains(&a) != s.contains(&b))
    }

    /// Whether what `a` sends cannot reach `b` now (a partition between them, or `a` is
    /// mute).
    pub(crate) fn cut(&self, a: usize, b: usize) -> bool {
        a != b && (self.partitioned(NodeId(a as u32), NodeId(b as u32)) || self.mute == Some(a))
    }

    /// Whether node `to`'s transport refuses incarnation `epoch` of node `from`: `to` fenced
    /// it (durably, so also after `to` restarted).
    pub(crate) fn refused(&self, to: usize, from: usize, epoch: u64) -> bool {
        self.durable_fences
            .get(&(to, from))
            .is_some_and(|floor| epoch < *floor)
    }

    pub(crate) fn send(&mut self, env: Envelope) {
        self.stats.sent += 1;
        if env.from == env.to {
            self.schedule(0, Ev::Deliver(env));
            return;
        }
        match self.fate() {
            None => self.log(|| format!("DROP {env}")),
            Some((d, dup)) => {
                if let Some(d2) = dup {
                    self.schedule(d2, Ev::Deliver(env.clone()));
                }
                self.schedule(d, Ev::Deliver(env));
            }
        }
    }

    /// What the network does with a message between two different nodes: drops it (`None`),
    /// or delivers it after a random delay, and sometimes a second time after another
    /// (drops and duplicates only while faults are on).
    pub(crate) fn fate(&mut self) -> Option<(u64, Option<u64>)> {
        if self.faults_on && self.rng.chance(self.cfg.drop_rate) {
            self.stats.dropped += 1;
            return None;
        }
        let d = self.rng.range(1, self.cfg.max_delay_ms);
        let dup = if self.faults_on && self.rng.chance(self.cfg.dup_rate) {
            self.stats.duplicated += 1;
            Some(self.rng.range(1, self.cfg.max_delay_ms * 3))
        } else {
            None
        };
        Some((d, dup))
    }

    pub(crate) fn deliver(&mut self, env: Envelope) -> Result<(), Violation> {
        let to = env.to.0 as usize;
        if self.nodes[to].core.is_none() || self.cut(env.from.0 as usize, to) {
            self.log(|| format!("LOST {env} (node down or partitioned)"));
            return Ok(());
        }
        if self.refused(to, env.from.0 as usize, env.from_epoch.0) {
            self.log(|| format!("REFUSED {env} (a fenced incarnation)"));
            return Ok(());
        }
        self.log(|| format!("recv {env}"));
        // Membership's silence starts again (whatever the message).
        self.heard_from(to, env.from.0 as usize, env.from_epoch.0);
        let now = self.now;
        if let Some(c) = self.nodes[to].core.as_mut() {
            c.step(now, env);
        }
        self.run_outputs(to)
    }
}
