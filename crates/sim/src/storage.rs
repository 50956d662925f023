//! The durable side of the simulated world: each segment's mapper (with latency and, while
//! faults are on, failures) and the write intents kept next to it.

use crate::world::{fail, Ev, Violation, World};
use pagemesh_core::{MapperError, MapperToken, Output, PageData, PageKey};
use pagemesh_types::{NodeId, SegmentId};

/// The value an 8-byte simulated page holds.
fn value_of(d: &PageData) -> Option<u64> {
    match d {
        PageData::Zero => Some(0),
        PageData::Bytes(b) => b.as_slice().try_into().ok().map(u64::from_le_bytes),
        PageData::Local => None,
    }
}

impl World {
    /// Schedule the completion of a mapper or intent I/O that node `i` asked for.
    pub(crate) fn start_io(&mut self, i: usize, o: Output) -> Result<(), Violation> {
        let d = self.rng.range(1, self.cfg.max_mapper_ms);
        let epoch = self.nodes[i].epoch;
        let node = i;
        let ev = match o {
            Output::MapperRead { token, page } => Ev::MapperRead {
                node,
                epoch,
                token,
                page,
            },
            Output::MapperWrite { token, page, data } => {
                let Some(value) = value_of(&data) else {
                    return Err(fail(
                        self,
                        Some(page),
                        format!("node{i}: mapper write of unresolved data"),
                    ));
                };
                Ev::MapperWrite {
                    node,
                    epoch,
                    token,
                    page,
                    value,
                }
            }
            Output::IntentWrite { token, page, dirty } => Ev::IntentWrite {
                node,
                epoch,
                token,
                page,
                dirty,
            },
            Output::IntentRead { token, seg } => Ev::IntentRead {
                node,
                epoch,
                token,
                seg,
            },
            _ => return Ok(()),
        };
        self.schedule(d, ev);
        Ok(())
    }

    /// Node `i` died: each of its writes to durable storage either landed or not, now — never
    /// after a later incarnation has started.
    pub(crate) fn settle_io_of_dead(&mut self, i: usize) {
        let writes = self.queue.take_where(|ev| {
            matches!(ev, Ev::MapperWrite { node, .. } | Ev::IntentWrite { node, .. } if *node == i)
        });
        for ev in writes {
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
