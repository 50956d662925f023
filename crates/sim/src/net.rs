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

    pub(crate) fn send(&mut self, env: Envelope) {
        self.stats.sent += 1;
        if env.from == env.to {
            self.schedule(0, Ev::Deliver(env));
            return;
        }
        if self.faults_on && self.rng.chance(self.cfg.drop_rate) {
            self.stats.dropped += 1;
            self.log(|| format!("DROP {env}"));
            return;
        }
        let d = self.rng.range(1, self.cfg.max_delay_ms);
        if self.faults_on && self.rng.chance(self.cfg.dup_rate) {
            self.stats.duplicated += 1;
            let d2 = self.rng.range(1, self.cfg.max_delay_ms * 3);
            self.schedule(d2, Ev::Deliver(env.clone()));
        }
        self.schedule(d, Ev::Deliver(env));
    }

    pub(crate) fn deliver(&mut self, env: Envelope) -> Result<(), Violation> {
        let to = env.to.0 as usize;
        if self.nodes[to].core.is_none() || self.partitioned(env.from, env.to) {
            self.log(|| format!("LOST {env} (node down or partitioned)"));
            return Ok(());
        }
        self.log(|| format!("recv {env}"));
        let now = self.now;
        if let Some(c) = self.nodes[to].core.as_mut() {
            c.step(now, env);
        }
        self.run_outputs(to)
    }
}
