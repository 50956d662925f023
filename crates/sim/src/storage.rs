//! The durable side of the simulated world: each segment's mapper (with latency and, while
//! faults are on, failures) and the write intents kept next to it.

use crate::world::{Ev, Violation, World};
use pagemesh_core::{MapperError, MapperToken, PageData, PageKey};
use pagemesh_types::{NodeId, SegmentId};

impl World {
    /// Node `i` died: each of its writes to durable storage either landed or not, now — never
    /// after a later incarnation has started.
    pub(crate) fn settle_io_of_dead(&mut self, i: usize) {
        let ids: Vec<u64> = self
            .events
            .iter()
            .filter(|(_, ev)| {
                matches!(ev, Ev::MapperWrite { node, .. } | Ev::IntentWrite { node, .. } if *node == i)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(ev) = self.events.remove(&id) else {
                continue;
            };
            if !self.rng.chance(0.5) {
                continue;
            }
            match ev {
                Ev::MapperWrite { page, value, .. } => {
                    self.mapper.insert(page, value);
                }
                Ev::IntentWrite {
                    page, dirty: true, ..
                } => {
                    self.intents.insert(page);
                }
                Ev::IntentWrite {
                    page, dirty: false, ..
                } => {
                    self.intents.remove(&page);
                }
                _ => {}
            }
        }
    }
    /// A mapper read completes (or fails, while faults are on).
    pub(crate) fn mapper_read(
        &mut self,
        node: usize,
        epoch: u64,
        token: MapperToken,
        page: PageKey,
    ) -> Result<(), Violation> {
        let value = self.mapper.get(&page).copied().unwrap_or(0);
        let failed = self.faults_on && self.rng.chance(self.cfg.mapper_fail_rate);
        self.log(|| {
            format!(
                "{} mapper read {page} -> {value} failed={failed}",
                NodeId(node as u32)
            )
        });
        if self.nodes[node].epoch != epoch {
            return Ok(());
        }
        let result = if failed {
            self.model.read_error(page);
            Err(MapperError("simulated EIO".into()))
        } else {
            Ok(PageData::Bytes(value.to_le_bytes().to_vec()))
        };
        let now = self.now;
        if let Some(c) = self.nodes[node].core.as_mut() {
            c.mapper_read_done(now, token, result);
        }
        self.run_outputs(node)
    }

    /// A mapper write completes: durable from now on (or fails, while faults are on).
    pub(crate) fn mapper_write(
        &mut self,
        node: usize,
        epoch: u64,
        token: MapperToken,
        page: PageKey,
        value: u64,
    ) -> Result<(), Violation> {
        let failed = self.faults_on && self.rng.chance(self.cfg.mapper_fail_rate);
        let result = if failed {
            self.model.write_error(page);
            Err(MapperError("simulated EIO".into()))
        } else {
            self.mapper.insert(page, value);
            Ok(())
        };
        self.log(|| {
            format!(
                "{} mapper wrote {page} = {value} failed={failed}",
                NodeId(node as u32)
            )
        });
        if self.nodes[node].epoch != epoch {
            return Ok(());
        }
        let now = self.now;
        if let Some(c) = self.nodes[node].core.as_mut() {
            c.mapper_write_done(now, token, result);
        }
        self.run_outputs(node)
    }

    /// A write-intent update completes (or fails, while faults are on).
    pub(crate) fn intent_write(
        &mut self,
        node: usize,
        epoch: u64,
        token: MapperToken,
        page: PageKey,
        dirty: bool,
    ) -> Result<(), Violation> {
        let failed = self.faults_on && self.rng.chance(self.cfg.mapper_fail_rate);
        let result = if failed {
            self.model.read_error(page);
            Err(MapperError("simulated EIO".into()))
        } else {
            if dirty {
                self.intents.insert(page);
            } else {
                self.intents.remove(&page);
            }
            Ok(())
        };
        self.log(|| {
            format!(
                "{} intent {page} dirty={dirty} failed={failed}",
                NodeId(node as u32)
            )
        });
        if self.nodes[node].epoch != epoch {
            return Ok(());
        }
        let now = self.now;
        if let Some(c) = self.nodes[node].core.as_mut() {
            c.intent_write_done(now, token, result);
        }
        self.run_outputs(node)
    }

    /// A restarted home reads the write intents of a segment.
    pub(crate) fn intent_read(
        &mut self,
        node: usize,
        epoch: u64,
        token: MapperToken,
        seg: SegmentId,
    ) -> Result<(), Violation> {
        let pages: Vec<u64> = self
            .intents
            .iter()
            .filter(|p| p.seg == seg)
            .map(|p| p.page.0)
            .collect();
        self.log(|| format!("{} read intents of {seg}: {pages:?}", NodeId(node as u32)));
        if self.nodes[node].epoch != epoch {
            return Ok(());
        }
        let now = self.now;
        if let Some(c) = self.nodes[node].core.as_mut() {
            c.intents_read_done(now, token, Ok(pages));
        }
        self.run_outputs(node)
    }
}
