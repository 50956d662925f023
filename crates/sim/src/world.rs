//! The simulated cluster: nodes running the real core, a seeded network, durable mappers and an
//! event queue in simulated time.

use crate::config::SimConfig;
use crate::model::Model;
use crate::queue::EventQueue;
use crate::rng::Rng;
use pagemesh_core::lease::LeaseLink;
use pagemesh_core::Membership;
use pagemesh_core::{
    Backing, CallId, Coverage, Envelope, Epoch, FaultId, MapperToken, Node, NodeConfig, PageKey,
    SegmentInfo, Timing,
};
use pagemesh_types::{NodeId, SegmentId};
use std::collections::{BTreeMap, BTreeSet};

/// A broken invariant, with where it broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Event number at which it was detected.
    pub step: u64,
    /// Simulated time.
    pub time_ms: u64,
    /// The page involved, if one is.
    pub page: Option<PageKey>,
    /// What went wrong.
    pub what: String,
}

/// Counts of what a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events processed.
    pub steps: u64,
    /// Simulated time at the end.
    pub time_ms: u64,
    /// Reads, writes, increments that completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Increments completed.
    pub incrs: u64,
    /// Faults that ended in SIGBUS.
    pub sigbus: u64,
    /// Syncs completed successfully.
    pub syncs: u64,
    /// Evictions asked for.
    pub evictions: u64,
    /// Messages sent (heartbeats included), dropped, duplicated.
    pub sent: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Pages poisoned.
    pub poisoned: u64,
    /// "Declared dead" faults injected (a long crash or a long partition of one node).
    pub dead_faults: u64,
    /// `Node::peer_dead` calls (one per declaring node and declared node).
    pub declarations: u64,
    /// Nodes that were declared dead while alive and stopped when the partition healed.
    pub fenced_stops: u64,
    /// Reads completed on a fenced node that was not stopped yet, of a page whose home had
    /// fenced it or could not be reached: without leases, not checked (the stale-read window
    /// of `docs/cluster.md` §7); with leases, checked like every other read.
    pub fenced_reads: u64,
    /// Of those, reads that returned something other than the latest write (with leases, any
    /// such read also fails the run).
    pub fenced_stale_reads: u64,
    /// Writes and increments done on such a node's orphaned copies: never visible to anyone
    /// (the copies are gone when it stops), so not applied to the model. (With leases they
    /// are applied and checked like every other write.)
    pub fenced_writes: u64,
    /// Reads completed on a fenced node that was not stopped yet, of pages homed on its own
    /// side that still counts it (always checked).
    pub fenced_home_side_reads: u64,
    /// Heartbeats sent (leases only).
    pub heartbeats: u64,
    /// Accesses that found the lease of their page's home lapsed and waited for it (leases
    /// only; an access that waits twice counts twice).
    pub lease_waits: u64,
    /// Accesses still waiting for a lease on a node declared dead while alive when it stopped
    /// (or crashed): what leases held back in the stale-read window.
    pub fenced_lease_waits: u64,
    /// Nodes that went mute (`SimConfig::mute_rate`).
    pub mutes: u64,
}

#[derive(Clone, Debug)]
pub(crate) enum Ev {
    Deliver(Envelope),
    MapperRead {
        node: usize,
        epoch: u64,
        token: MapperToken,
        page: PageKey,
    },
    MapperWrite {
        node: usize,
        epoch: u64,
        token: MapperToken,
        page: PageKey,
        value: u64,
    },
    IntentWrite {
        node: usize,
        epoch: u64,
        token: MapperToken,
        page: PageKey,
        dirty: bool,
    },
    IntentRead {
        node: usize,
        epoch: u64,
        token: MapperToken,
        seg: SegmentId,
    },
    Tick,
    Proc {
        node: usize,
        proc: usize,
        epoch: u64,
    },
    Restart(usize),
    Heal,
    /// A node declared dead while alive (`Node::fenced`) reaches a node that fenced it: it is
    /// refused and stops, if this incarnation still runs.
    LearnFenced {
        node: usize,
        epoch: u64,
    },
    Heartbeat(Heartbeat),
}

/// A heartbeat of the daemon's transport (leases only).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heartbeat {
    pub from: usize,
    pub from_epoch: u64,
    pub to: usize,
    /// The sender's clock when it sent this.
    pub sent_ms: u64,
    /// What the sender's link echoes: the latest send time it heard from the receiver (0:
    /// none).
    pub echo_ms: u64,
}

/// What a node's transport knows of one peer. Reset when the node restarts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    /// The core's lease arithmetic of this link, on this node's clock.
    pub lease: LeaseLink,
    /// The peer's incarnation last heard on this link (a newer one is a new connection).
    pub heard_epoch: u64,
    /// When this node last sent the peer a heartbeat.
    pub last_hb: Option<u64>,
    /// When this node last heard anything from the peer (membership's silence runs from it).
    pub last_heard: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    Read,
    Write(u64),
    Incr,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Op {
    pub page: PageKey,
    pub kind: OpKind,
    /// `None` for audit reads.
    pub proc: Option<usize>,
    /// Model sequence number when issued.
    pub issued_seq: u64,
    /// Simulated time when the process started the access (a wait for a lease ends in SIGBUS
    /// once the fault timeout has passed since).
    pub started_ms: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum CallKind {
    Sync { seg: SegmentId, start_seq: u64 },
    Clear,
}

#[derive(Debug)]
pub(crate) struct SimNode {
    pub core: Option<Node>,
    pub epoch: u64,
    pub mem: BTreeMap<PageKey, u64>,
    pub ops: BTreeMap<FaultId, Op>,
    pub calls: BTreeMap<CallId, (CallKind, usize)>,
    /// Operations each process has left to issue, and whether one is in flight.
    pub procs: Vec<(u32, bool)>,
    pub crashable: bool,
    /// This incarnation was declared dead by a node that knew it (its `peer_epoch` of this
    /// node now exceeds `epoch`) while it was alive: it stops when the partition heals (the
    /// daemon is refused as fenced and exits) — not at once: when it next reaches a node that
    /// fenced it (`World::heal`).
    pub fenced: bool,
    /// This incarnation declared a live peer dead from a minority side (only with
    /// `SimConfig::minority_declares`): its directory no longer matches the copies held.
    pub diverged: bool,
    /// Its transport's view of each peer.
    pub links: BTreeMap<usize, Link>,
    /// This incarnation's membership (the core's machine), while it is up.
    pub membership: Option<Membership>,
    /// When this incarnation started (its daemon's clock counts from it).
    pub started_ms: u64,
    /// Accesses waiting for the lease of their page's home (leases only).
    pub parked: Vec<Op>,
}

/// The whole simulated world of one seed.
pub struct World {
    pub(crate) cfg: SimConfig,
    pub(crate) rng: Rng,
    pub(crate) now: u64,
    pub(crate) step: u64,
    pub(crate) queue: EventQueue<Ev>,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) segs: Vec<SegmentInfo>,
    /// Durable mapper contents (each segment's mapper lives with its home).
    pub(crate) mapper: BTreeMap<PageKey, u64>,
    /// Durable write intents (kept with the mapper).
    pub(crate) intents: BTreeSet<PageKey>,
    pub(crate) model: Model,
    /// Nodes cut off from the rest, while a partition lasts.
    pub(crate) partition: Option<BTreeSet<NodeId>>,
    /// The node whose messages are all lost while it still hears everyone (`mute_rate`).
    pub(crate) mute: Option<usize>,
    pub(crate) faults_on: bool,
    /// Per (node, peer): the fences the node set by declaring the peer dead (the lowest epoch
    /// of the peer it accepts), durable unless `SimConfig::fences_forgotten`: its transport
    /// refuses what older incarnations send, across its own restarts (and, with
    /// `SimConfig::fences_in_core`, they are given back to its core when it restarts).
    pub(crate) durable_fences: BTreeMap<(usize, usize), u64>,
    /// Pages whose home dropped a live incarnation's copy by declaring it dead from a minority
    /// side (`SimConfig::minority_declares`): that home's poison and clears of them are its
    /// own view, not the cluster's, until it stops.
    pub(crate) diverged_pages: BTreeSet<PageKey>,
    pub(crate) quiesce_at: Option<u64>,
    pub(crate) audited: bool,
    pub(crate) next_id: u64,
    pub(crate) trace: Vec<String>,
    pub(crate) cov: Coverage,
    pub(crate) stats: Stats,
}

pub(crate) const TICK_MS: u64 = 10;

/// The core's fault timeout; also how long an access waits for a lease before SIGBUS.
pub(crate) const FAULT_TIMEOUT_MS: u64 = 120_000;

/// The process that only touches pages its node holds (present when membership is on).
pub(crate) const RESIDENT_PROC: usize = 2;

pub(crate) fn fail(w: &World, page: Option<PageKey>, what: impl Into<String>) -> Violation {
    Violation {
        step: w.step,
        time_ms: w.now,
        page,
        what: what.into(),
    }
}

impl World {
    /// A cluster for `seed`.
    pub fn new(cfg: SimConfig, seed: u64) -> World {
        let nodes = cfg.nodes.max(3);
        let segs = vec![
            SegmentInfo {
                id: SegmentId(0),
                home: NodeId(0),
                pages: cfg.pages,
                backing: Backing::Zero,
            },
            SegmentInfo {
                id: SegmentId(1),
                home: NodeId(1),
                pages: cfg.pages,
                backing: Backing::Mapper,
            },
        ];
        let mut w = World {
            rng: Rng::new(seed),
            now: 0,
            step: 0,
            queue: EventQueue::new(),
            nodes: Vec::new(),
            segs,
            mapper: BTreeMap::new(),
            intents: BTreeSet::new(),
            model: Model::default(),
            partition: None,
            mute: None,
            faults_on: true,
            durable_fences: BTreeMap::new(),
            diverged_pages: BTreeSet::new(),
            quiesce_at: None,
            audited: false,
            next_id: 0,
            trace: Vec::new(),
            cov: Coverage::default(),
            stats: Stats::default(),
            cfg,
        };
        for s in w.segs.clone() {
            for i in 0..s.pages {
                let page = PageKey::new(s.id, i);
                let initial = match s.backing {
                    Backing::Zero => 0,
                    Backing::Mapper => {
                        let v = w.rng.range(1, 1_000_000);
                        w.mapper.insert(page, v);
                        v
                    }
                };
                w.model
                    .add_page(page, initial, s.id == SegmentId(0) && i < 2);
            }
        }
        for i in 0..nodes {
            let homes = w.segs.iter().any(|s| s.home == NodeId(i as u32));
            w.nodes.push(SimNode {
                core: None,
                epoch: 0,
                mem: BTreeMap::new(),
                ops: BTreeMap::new(),
                calls: BTreeMap::new(),
                procs: vec![(w.cfg.ops_per_process, false); w.procs_per_node()],
                crashable: !homes || w.cfg.crash_homes,
                fenced: false,
                diverged: false,
                links: BTreeMap::new(),
                membership: None,
                parked: Vec::new(),
                started_ms: 0,
            });
        }
        w
    }

    /// Two processes per node touch random pages; with membership on, a third one only touches
    /// pages its node holds (local hits: what a node cut off from the cluster can still do).
    fn procs_per_node(&self) -> usize {
        if self.membership_on() {
            RESIDENT_PROC + 1
        } else {
            2
        }
    }

    /// Cluster membership runs (nodes may be declared dead).
    pub(crate) fn membership_on(&self) -> bool {
        self.cfg.dead_rate > 0.0 || self.cfg.mute_rate > 0.0
    }

    pub(crate) fn node_config(&self, i: usize, epoch: u64) -> NodeConfig {
        let peers = (0..self.nodes.len()).map(|n| NodeId(n as u32)).collect();
        let mut c = NodeConfig::new(NodeId(i as u32), Epoch(epoch), peers);
        c.timing = Timing {
            retry_ms: 40,
            fault_timeout_ms: FAULT_TIMEOUT_MS,
        };
        c.bugs.skip_one_inval_ack = self.cfg.inject_bug;
        c.bugs.first_holdings_part_only = self.cfg.holdings_first_part_only;
        c.holdings_per_message = self.cfg.holdings_per_message;
        c
    }

    pub(crate) fn schedule(&mut self, delay_ms: u64, ev: Ev) {
        self.queue.push(self.now + delay_ms, ev);
    }

    pub(crate) fn log(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let l = format!("t={:>6} #{:<7} {}", self.now, self.step, line());
            self.trace.push(l);
        }
    }

    pub(crate) fn pending_events(&self) -> impl Iterator<Item = &Ev> {
        self.queue.pending()
    }

    /// Branch counts of every node so far.
    pub fn coverage(&self) -> &Coverage {
        &self.cov
    }

    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Start every node and schedule the workload.
    fn boot(&mut self) -> Result<(), Violation> {
        for i in 0..self.nodes.len() {
            self.restart(i)?;
        }
        self.schedule(TICK_MS, Ev::Tick);
        Ok(())
    }

    /// Run to the end: the workload, then quiescence and the audit.
    pub fn run(&mut self) -> Result<Stats, Violation> {
        self.boot()?;
        while let Some((t, ev)) = self.queue.pop() {
            self.now = t;
            self.step += 1;
            if self.step > self.cfg.max_steps {
                return Err(fail(
                    self,
                    None,
                    format!(
                        "{} events processed and the run is not over (livelock?)",
                        self.cfg.max_steps
                    ),
                ));
            }
            self.handle(ev)?;
            self.check_every_step()?;
            if self.progress_phase()? {
                break;
            }
        }
        for n in &self.nodes {
            if let Some(c) = &n.core {
                self.cov.merge(c.coverage());
            }
        }
        self.stats.steps = self.step;
        self.stats.time_ms = self.now;
        Ok(self.stats.clone())
    }

    fn handle(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Deliver(env) => self.deliver(env),
            Ev::MapperRead {
                node,
                epoch,
                token,
                page,
            } => self.mapper_read(node, epoch, token, page),
            Ev::MapperWrite {
                node,
                epoch,
                token,
                page,
                value,
            } => self.mapper_write(node, epoch, token, page, value),
            Ev::IntentWrite {
                node,
                epoch,
                token,
                page,
                dirty,
            } => self.intent_write(node, epoch, token, page, dirty),
            Ev::IntentRead {
                node,
                epoch,
                token,
                seg,
            } => self.intent_read(node, epoch, token, seg),
            Ev::Tick => self.tick(),
            Ev::Proc { node, proc, epoch } => self.next_op(node, proc, epoch),
            Ev::Restart(i) => {
                if self.nodes[i].core.is_none() {
                    self.restart(i)?;
                }
                Ok(())
            }
            Ev::Heal => self.heal(),
            Ev::LearnFenced { node, epoch } => {
                self.learn_fenced(node, epoch);
                Ok(())
            }
            Ev::Heartbeat(hb) => self.deliver_heartbeat(hb),
        }
    }

    fn tick(&mut self) -> Result<(), Violation> {
        let now = self.now;
        for i in 0..self.nodes.len() {
            if let Some(c) = self.nodes[i].core.as_mut() {
                c.tick(now);
                self.run_outputs(i)?;
            }
        }
        if self.cfg.leases || self.membership_on() {
            self.leases_tick()?;
        }
        if self.membership_on() {
            self.membership()?;
        }
        if self.faults_on {
            if self.rng.chance(self.cfg.crash_rate) {
                let up: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].crashable && self.nodes[*i].core.is_some())
                    .collect();
                if !up.is_empty() {
                    let victim = up[self.rng.below(up.len())];
                    self.crash(victim);
                    let down = self.rng.range(30, 600);
                    self.schedule(down, Ev::Restart(victim));
                }
            }
            if self.partition.is_none()
                && self.mute.is_none()
                && self.rng.chance(self.cfg.partition_rate)
            {
                let n = self.nodes.len();
                let mut side = BTreeSet::new();
                while side.is_empty() || side.len() == n {
                    side = (0..n)
                        .filter(|_| self.rng.chance(0.5))
                        .map(|i| NodeId(i as u32))
                        .collect();
                }
                self.log(|| format!("partition: {side:?} cut off"));
                self.partition = Some(side);
                self.stats.partitions += 1;
                let heal = self.rng.range(50, 1500);
                self.schedule(heal, Ev::Heal);
            }
            if self.cfg.dead_rate > 0.0 && self.rng.chance(self.cfg.dead_rate) {
                self.dead_fault();
            }
            if self.cfg.mute_rate > 0.0 && self.rng.chance(self.cfg.mute_rate) {
                self.mute_fault();
            }
        }
        self.schedule(TICK_MS, Ev::Tick);
        Ok(())
    }

    /// Bring node `i` (back) up with a new epoch and an empty cache.
    fn restart(&mut self, i: usize) -> Result<(), Violation> {
        let n = &mut self.nodes[i];
        n.epoch += 1;
        let epoch = n.epoch;
        let cfg = self.node_config(i, epoch);
        let mut core = Node::new(cfg, &self.segs);
        if self.cfg.fences_in_core {
            for (&(a, b), &e) in &self.durable_fences {
                if a == i {
                    core.fence(NodeId(b as u32), Epoch(e));
                }
            }
        }
        core.start(self.now);
        let now = self.now;
        let count = self.nodes.len();
        let n = &mut self.nodes[i];
        n.core = Some(core);
        n.fenced = false;
        n.diverged = false;
        n.mem.clear();
        n.parked.clear();
        n.started_ms = now;
        let link = self.new_link();
        let membership = self.new_membership(i);
        let n = &mut self.nodes[i];
        n.links = (0..count).filter(|p| *p != i).map(|p| (p, link)).collect();
        n.membership = Some(membership);
        for p in &mut n.procs {
            p.1 = false;
        }
        self.log(|| format!("{} up, epoch {epoch}", NodeId(i as u32)));
        for proc in 0..self.nodes[i].procs.len() {
            let d = self.rng.range(0, 20);
            self.schedule(
                d,
                Ev::Proc {
                    node: i,
                    proc,
                    epoch,
                },
            );
        }
        self.run_outputs(i)
    }

    /// Node `i` dies: its cache, its in-flight operations and its processes' state are gone.
    pub(crate) fn crash(&mut self, i: usize) {
        if self.nodes[i].fenced {
            self.stats.fenced_lease_waits += self.nodes[i].parked.len() as u64;
        }
        self.mark_lost_by_crash(i);
        self.settle_io_of_dead(i);
        self.stats.crashes += 1;
        let me = NodeId(i as u32);
        let segs = self.segs.clone();
        self.diverged_pages
            .retain(|p| segs.iter().any(|s| s.id == p.seg && s.home != me));
        let n = &mut self.nodes[i];
        if let Some(c) = n.core.take() {
            self.cov.merge(c.coverage());
        }
        n.mem.clear();
        n.ops.clear();
        n.calls.clear();
        n.parked.clear();
        n.links.clear();
        // Its membership starts afresh with its next incarnation.
        n.membership = None;
        for p in &mut n.procs {
            p.1 = false;
        }
        self.log(|| format!("{} CRASHED", NodeId(i as u32)));
    }

    /// The recorded trace (empty unless `SimConfig::trace`).
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    /// Decide whether the workload is over, start quiescence and the audit, and tell whether
    /// the run is finished.
    fn progress_phase(&mut self) -> Result<bool, Violation> {
        let issuing = self
            .nodes
            .iter()
            .any(|n| n.procs.iter().any(|(left, busy)| *left > 0 || *busy));
        if self.faults_on {
            if issuing {
                return Ok(false);
            }
            self.faults_on = false;
            self.quiesce_at = Some(self.now);
            self.log(|| "QUIESCE: faults stop, partitions heal, crashed nodes restart".into());
            self.heal()?;
            for i in 0..self.nodes.len() {
                if self.nodes[i].core.is_none() {
                    self.restart(i)?;
                }
            }
            return Ok(false);
        }
        let busy = self.nodes.iter().any(|n| {
            !n.ops.is_empty()
                || !n.calls.is_empty()
                || !n.parked.is_empty()
                || n.core.as_ref().is_none_or(|c| !c.is_idle())
        });
        if busy {
            let since = self.quiesce_at.unwrap_or(self.now);
            if self.now > since + self.cfg.liveness_bound_ms {
                return Err(fail(self, None, self.liveness_report()));
            }
            return Ok(false);
        }
        if !self.audited {
            self.audited = true;
            self.start_audit()?;
            return Ok(false);
        }
        self.model
            .check_increments()
            .map_err(|e| fail(self, None, e))?;
        Ok(true)
    }

    fn liveness_report(&self) -> String {
        let mut s = format!(
            "liveness: work still pending {} ms after faults stopped and partitions healed:",
            self.cfg.liveness_bound_ms
        );
        for (i, n) in self.nodes.iter().enumerate() {
            for op in n.ops.values() {
                s.push_str(&format!(" [node{i} {:?} {}]", op.kind, op.page));
            }
            for op in &n.parked {
                s.push_str(&format!(
                    " [node{i} {:?} {} waits for a lease]",
                    op.kind, op.page
                ));
            }
            if !n.calls.is_empty() {
                s.push_str(&format!(" [node{i} {} calls]", n.calls.len()));
            }
            if n.core.as_ref().is_some_and(|c| !c.is_idle()) {
                s.push_str(&format!(" [node{i} core busy]"));
            }
        }
        s
    }
}
