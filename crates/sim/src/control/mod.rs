//! The control plane under simulation: locks and two-phase removal (`docs/cluster.md` §4-§5).
//!
//! Each node runs the core's machines as the daemon's engine does: a [`LockTable`] for the
//! segments it is home of, a [`LockClient`] for its clients' locks, and a [`Removals`]. The
//! network is the daemon's: one connection per ordered pair of nodes, owned by the sender,
//! in order while it lasts; a connection that breaks (or whose end crashes) loses what was in
//! flight, and its owner dials again. On every (re)connect the owner runs the engine's
//! `on_peer_connected`: its catalog and tombstones, its lock report, grants again, removals ask
//! again. Nodes crash (homes included) and restart with what is durable: their catalog and
//! tombstones.
//!
//! Workloads: clients on every node take and release locks of two segments with a timeout;
//! processes attach the other segments for a while; homes remove those segments. Checkers, on
//! every event: no lock is held by two clients at once; a removal commits only when every
//! node it asked prepared (a node that restarted since it answered is the window of
//! `docs/cluster.md` §8, counted); a node forgets a segment only after its home committed the
//! removal, and a removed segment never comes back. At the end, after quiescence: no lock is
//! held by nobody (a lost release), no table still recovers, and every node agrees on which
//! segments exist.

mod locks;
mod removal;

use crate::queue::EventQueue;
use crate::rng::Rng;
use pagemesh_core::{
    Claim, LockBugs, LockClient, LockTable, RemovalBugs, RemovalConfig, RemovalMsg, Removals,
};
use pagemesh_types::{NodeId, SegmentId};
use std::collections::{BTreeMap, BTreeSet};

/// What one control-plane run simulates.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Nodes (at least 3).
    pub nodes: usize,
    /// Lock clients per node.
    pub clients: usize,
    /// Locks each client takes before it stops.
    pub ops_per_client: u32,
    /// Segments the removal workload removes (their locks are not used).
    pub removable: usize,
    /// Per tick (10 ms): chance that a node crashes.
    pub crash_rate: f64,
    /// Per tick: chance that one connection breaks.
    pub break_rate: f64,
    /// Per tick: chance that a home starts removing one of its segments.
    pub remove_rate: f64,
    /// Longest one-way delay.
    pub max_delay_ms: u64,
    /// Nodes report their locks on every (re)connect (off: the daemon before lock reports).
    pub reports: bool,
    /// Lock bugs to switch on.
    pub lock_bugs: LockBugs,
    /// Removal bugs to switch on.
    pub removal_bugs: RemovalBugs,
    /// Events a run may take before it counts as a livelock.
    pub max_steps: u64,
    /// Record a trace.
    pub trace: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            nodes: 4,
            clients: 2,
            ops_per_client: 25,
            removable: 4,
            crash_rate: 0.004,
            break_rate: 0.02,
            remove_rate: 0.02,
            max_delay_ms: 15,
            reports: true,
            lock_bugs: LockBugs::default(),
            removal_bugs: RemovalBugs::default(),
            max_steps: 2_000_000,
            trace: false,
        }
    }
}

/// The simulator's removal limits (short, so that prepares expire within a run).
pub(crate) const REMOVAL: RemovalConfig = RemovalConfig {
    answer_ms: 150,
    sync_ms: 200,
    prepared_ms: 600,
};

/// The segments whose locks the clients use (homed on nodes 0 and 1).
pub(crate) const LOCK_SEGS: [SegmentId; 2] = [SegmentId(100), SegmentId(101)];

/// Locks per lock segment.
pub(crate) const LOCKS: u32 = 2;

const TICK_MS: u64 = 10;

/// Counts of what a control run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Events processed.
    pub steps: u64,
    /// Locks granted to clients.
    pub grants: u64,
    /// Lock waits that timed out.
    pub lock_timeouts: u64,
    /// Node crashes (homes included).
    pub crashes: u64,
    /// Of those, crashes of a lock segment's home.
    pub home_crashes: u64,
    /// Connections that broke.
    pub breaks: u64,
    /// Holdings reports sent.
    pub reports: u64,
    /// Removals committed.
    pub removed: u64,
    /// Removals that failed (refused, no answer, sync).
    pub not_removed: u64,
    /// Commits that relied on a node which restarted after it prepared (the window of
    /// `docs/cluster.md` §8).
    pub restarted_since_prepare: u64,
    /// Forgets refused because a process had the segment attached (no prepare covered it).
    pub kept_attached: u64,
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlViolation {
    /// Event number.
    pub step: u64,
    /// Simulated time.
    pub time_ms: u64,
    /// What broke.
    pub what: String,
}

/// A message between nodes.
#[derive(Clone, Debug)]
pub(crate) enum Msg {
    Acquire {
        seg: SegmentId,
        lock: u32,
        token: u64,
    },
    Release {
        seg: SegmentId,
        lock: u32,
        token: u64,
    },
    Granted {
        token: u64,
    },
    Refused {
        token: u64,
    },
    Report {
        held: Vec<Claim>,
        waiting: Vec<Claim>,
    },
    Removal(RemovalMsg),
    Catalog(Vec<SegmentId>),
    Removed(Vec<SegmentId>),
}

#[derive(Clone, Debug)]
pub(crate) enum Ev {
    Deliver {
        from: usize,
        from_epoch: u64,
        to: usize,
        gen: u64,
        msg: Msg,
    },
    Reconnect(usize, usize),
    Restart(usize),
    Tick,
    /// A client's wait times out or its hold ends.
    Client {
        node: usize,
        client: usize,
        epoch: u64,
        op: u64,
    },
    /// A process attaches or detaches.
    Attacher {
        node: usize,
        epoch: u64,
    },
    SyncDone {
        node: usize,
        epoch: u64,
        seg: SegmentId,
    },
}

/// One connection, owned by its sender.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Conn {
    pub up: bool,
    pub gen: u64,
    /// Deliveries stay in order: none before this time.
    pub last_at: u64,
    /// A reconnect is scheduled.
    pub dialling: bool,
}

/// What a client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientState {
    Idle,
    Waiting {
        token: u64,
        seg: SegmentId,
        lock: u32,
    },
    Holding {
        token: u64,
        seg: SegmentId,
        lock: u32,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Client {
    pub state: ClientState,
    pub left: u32,
    /// Numbers the client's timers, so a stale one is ignored.
    pub op: u64,
}

/// A segment in a node's catalog.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Entry {
    pub marked: bool,
    pub attached: u32,
}

pub(crate) struct CtlNode {
    pub up: bool,
    pub epoch: u64,
    pub table: LockTable,
    pub client: LockClient,
    pub removals: Removals<u64>,
    /// Durable: the segments it knows, and those removed from the cluster.
    pub catalog: BTreeMap<SegmentId, Entry>,
    pub tombstones: BTreeSet<SegmentId>,
    pub clients: Vec<Client>,
    /// The segment its process has attached, if any.
    pub attached: Option<SegmentId>,
    /// The incarnation of each peer last heard in a hello.
    pub heard: BTreeMap<usize, u64>,
}

/// The simulated control plane of one seed.
pub struct ControlWorld {
    pub(crate) cfg: ControlConfig,
    pub(crate) rng: Rng,
    pub(crate) now: u64,
    pub(crate) step: u64,
    queue: EventQueue<Ev>,
    pub(crate) nodes: Vec<CtlNode>,
    pub(crate) conns: BTreeMap<(usize, usize), Conn>,
    /// Segment -> home.
    pub(crate) homes: BTreeMap<SegmentId, usize>,
    /// Which removable segments are files (synced before the commit).
    pub(crate) files: BTreeSet<SegmentId>,
    /// The checker's view: who holds each lock (node, token).
    pub(crate) holders: BTreeMap<(SegmentId, u32), (usize, u64)>,
    /// Removals the homes committed.
    pub(crate) committed: BTreeSet<SegmentId>,
    /// Running removals: segment -> (attempt, nodes asked).
    pub(crate) attempts: BTreeMap<SegmentId, (u64, Vec<NodeId>)>,
    /// Prepares answered Ok: (segment, attempt, node) -> the node's incarnation then.
    pub(crate) prepared_ok: BTreeMap<(SegmentId, u64, usize), u64>,
    pub(crate) next_token: u64,
    pub(crate) faults_on: bool,
    pub(crate) quiesce_at: Option<u64>,
    pub(crate) trace: Vec<String>,
    pub(crate) stats: ControlStats,
}

pub(crate) fn nid(i: usize) -> NodeId {
    NodeId(i as u32)
}

impl ControlWorld {
    /// A control plane for `seed`.
    pub fn new(cfg: ControlConfig, seed: u64) -> ControlWorld {
        let n = cfg.nodes.max(3);
        let mut homes = BTreeMap::new();
        homes.insert(LOCK_SEGS[0], 0);
        homes.insert(LOCK_SEGS[1], 1);
        let mut files = BTreeSet::new();
        for i in 0..cfg.removable {
            let seg = SegmentId(200 + i as u64);
            homes.insert(seg, i % n);
            if i % 2 == 1 {
                files.insert(seg);
            }
        }
        let catalog: BTreeMap<SegmentId, Entry> =
            homes.keys().map(|s| (*s, Entry::default())).collect();
        let nodes = (0..n)
            .map(|_| CtlNode {
                up: false,
                epoch: 0,
                table: LockTable::new(cfg.lock_bugs),
                client: LockClient::new(),
                removals: Removals::new(REMOVAL, cfg.removal_bugs, 0),
                catalog: catalog.clone(),
                tombstones: BTreeSet::new(),
                clients: Vec::new(),
                attached: None,
                heard: BTreeMap::new(),
            })
            .collect();
        let mut conns = BTreeMap::new();
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    conns.insert((a, b), Conn::default());
                }
            }
        }
        ControlWorld {
            rng: Rng::new(seed),
            now: 0,
            step: 0,
            queue: EventQueue::new(),
            nodes,
            conns,
            homes,
            files,
            holders: BTreeMap::new(),
            committed: BTreeSet::new(),
            attempts: BTreeMap::new(),
            prepared_ok: BTreeMap::new(),
            next_token: 0,
            faults_on: true,
            quiesce_at: None,
            trace: Vec::new(),
            stats: ControlStats::default(),
            cfg,
        }
    }

    pub(crate) fn fail(&self, what: impl Into<String>) -> ControlViolation {
        ControlViolation {
            step: self.step,
            time_ms: self.now,
            what: what.into(),
        }
    }

    pub(crate) fn log(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let l = format!("t={:>6} #{:<7} {}", self.now, self.step, line());
            self.trace.push(l);
        }
    }

    /// The recorded trace (empty unless `ControlConfig::trace`).
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    pub(crate) fn schedule(&mut self, delay_ms: u64, ev: Ev) {
        self.queue.push(self.now + delay_ms, ev);
    }

    /// Run the workload, then quiescence and the final checks.
    pub fn run(&mut self) -> Result<ControlStats, ControlViolation> {
        for i in 0..self.nodes.len() {
            self.restart(i)?;
        }
        self.schedule(TICK_MS, Ev::Tick);
        while let Some((t, ev)) = self.queue.pop() {
            self.now = t;
            self.step += 1;
            if self.step > self.cfg.max_steps {
                return Err(self.fail("the run does not end (livelock?)"));
            }
            self.handle(ev)?;
            if self.finished()? {
                break;
            }
        }
        self.stats.steps = self.step;
        Ok(self.stats.clone())
    }

    fn handle(&mut self, ev: Ev) -> Result<(), ControlViolation> {
        match ev {
            Ev::Deliver {
                from,
                from_epoch,
                to,
                gen,
                msg,
            } => {
                let live =
                    from == to || self.conns[&(from, to)].up && self.conns[&(from, to)].gen == gen;
                if !self.nodes[to].up || !live || self.nodes[from].epoch != from_epoch {
                    self.log(|| format!("LOST node{from}->node{to} {msg:?}"));
                    return Ok(());
                }
                self.log(|| format!("recv node{from}->node{to} {msg:?}"));
                self.receive(from, from_epoch, to, msg)
            }
            Ev::Reconnect(a, b) => self.reconnect(a, b),
            Ev::Restart(i) => {
                if !self.nodes[i].up {
                    self.restart(i)?;
                }
                Ok(())
            }
            Ev::Tick => self.tick(),
            Ev::Client {
                node,
                client,
                epoch,
                op,
            } => {
                let n = &self.nodes[node];
                if n.up && n.epoch == epoch && n.clients[client].op == op {
                    self.client_timer(node, client)?;
                }
                Ok(())
            }
            Ev::Attacher { node, epoch } => {
                if self.nodes[node].up && self.nodes[node].epoch == epoch {
                    self.attacher(node);
                }
                Ok(())
            }
            Ev::SyncDone { node, epoch, seg } => {
                if self.nodes[node].up && self.nodes[node].epoch == epoch {
                    let ok = !self.rng.chance(0.05);
                    let r = if ok { Ok(()) } else { Err("EIO".into()) };
                    let mut out = Vec::new();
                    self.nodes[node].removals.sync_done(seg, r, &mut out);
                    self.exec_removal(node, out)?;
                }
                Ok(())
            }
        }
    }

    /// Send `msg` from `a` to `b` on `a`'s connection (lost if it is down).
    pub(crate) fn send(&mut self, a: usize, b: usize, msg: Msg) {
        let epoch = self.nodes[a].epoch;
        if a == b {
            let ev = Ev::Deliver {
                from: a,
                from_epoch: epoch,
                to: b,
                gen: 0,
                msg,
            };
            return self.schedule(0, ev);
        }
        let c = self.conns[&(a, b)];
        if !c.up {
            return self.log(|| format!("DROP node{a}->node{b} {msg:?} (not connected)"));
        }
        let d = self.rng.range(1, self.cfg.max_delay_ms);
        let at = (self.now + d).max(c.last_at);
        if let Some(c) = self.conns.get_mut(&(a, b)) {
            c.last_at = at;
        }
        let ev = Ev::Deliver {
            from: a,
            from_epoch: epoch,
            to: b,
            gen: c.gen,
            msg,
        };
        self.schedule(at - self.now, ev);
    }

    /// Break the connection `a` -> `b`; its owner dials again later.
    pub(crate) fn break_conn(&mut self, a: usize, b: usize) {
        let c = self.conns.get_mut(&(a, b)).expect("a connection");
        if c.up {
            c.up = false;
            c.gen += 1;
        }
        self.dial(a, b);
    }

    fn dial(&mut self, a: usize, b: usize) {
        let c = self.conns.get_mut(&(a, b)).expect("a connection");
        if !c.dialling && !c.up {
            c.dialling = true;
            let d = self.rng.range(5, 200);
            self.schedule(d, Ev::Reconnect(a, b));
        }
    }

    /// The owner `a` dials `b`: if both are up, the connection is made and both run what the
    /// engine runs on a connect.
    fn reconnect(&mut self, a: usize, b: usize) -> Result<(), ControlViolation> {
        if let Some(c) = self.conns.get_mut(&(a, b)) {
            c.dialling = false;
        }
        if !self.nodes[a].up {
            return Ok(());
        }
        if !self.nodes[b].up {
            self.dial(a, b);
            return Ok(());
        }
        let c = self.conns.get_mut(&(a, b)).expect("a connection");
        if c.up {
            return Ok(());
        }
        c.up = true;
        c.gen += 1;
        self.log(|| format!("node{a} connected to node{b}"));
        // The hello: a new incarnation of `a` drops what the earlier one held at `b`.
        let epoch = self.nodes[a].epoch;
        let before = self.nodes[b].heard.insert(a, epoch);
        if before.is_some_and(|e| e < epoch) {
            let mut out = Vec::new();
            self.nodes[b].table.forget_node(nid(a), &mut out);
            self.exec_locks(b, out)?;
        }
        self.on_connected(a, b)
    }

    /// The engine's `on_peer_connected` at `a` for `b`.
    fn on_connected(&mut self, a: usize, b: usize) -> Result<(), ControlViolation> {
        let n = &self.nodes[a];
        let catalog: Vec<SegmentId> = n.catalog.keys().copied().collect();
        // Homes announce the removals of their own segments (the others' are refused).
        let removed: Vec<SegmentId> = n
            .tombstones
            .iter()
            .copied()
            .filter(|s| self.homes.get(s) == Some(&a))
            .collect();
        self.send(a, b, Msg::Catalog(catalog));
        if !removed.is_empty() {
            self.send(a, b, Msg::Removed(removed));
        }
        let mut out = Vec::new();
        self.nodes[a].removals.peer_connected(nid(b), &mut out);
        self.exec_removal(a, out)?;
        if self.cfg.reports {
            let (held, waiting) = self.nodes[a].client.report(nid(b));
            self.stats.reports += 1;
            self.send(a, b, Msg::Report { held, waiting });
            let mut out = Vec::new();
            self.nodes[a].table.regrant(nid(b), &mut out);
            self.exec_locks(a, out)?;
        }
        Ok(())
    }

    fn receive(
        &mut self,
        from: usize,
        from_epoch: u64,
        to: usize,
        msg: Msg,
    ) -> Result<(), ControlViolation> {
        match msg {
            Msg::Removal(m) => self.removal_msg(from, from_epoch, to, m),
            Msg::Catalog(segs) => self.catalog(to, segs),
            Msg::Removed(segs) => {
                for seg in segs {
                    let n = &self.nodes[to];
                    if n.tombstones.contains(&seg) && !n.catalog.contains_key(&seg) {
                        continue;
                    }
                    let mut out = Vec::new();
                    let home = self.homes.get(&seg).map(|&h| nid(h));
                    self.nodes[to]
                        .removals
                        .removed_by(nid(from), home, seg, &mut out);
                    self.exec_removal(to, out)?;
                }
                Ok(())
            }
            other => self.lock_msg(from, to, other),
        }
    }

    fn tick(&mut self) -> Result<(), ControlViolation> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].up {
                let mut out = Vec::new();
                self.nodes[i].removals.tick(self.now, &mut out);
                self.exec_removal(i, out)?;
            }
        }
        if self.faults_on {
            if self.rng.chance(self.cfg.crash_rate) {
                let up: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].up)
                    .collect();
                if up.len() > 1 {
                    let v = up[self.rng.below(up.len())];
                    self.crash(v);
                    let d = self.rng.range(30, 600);
                    self.schedule(d, Ev::Restart(v));
                }
            }
            if self.rng.chance(self.cfg.break_rate) {
                let ups: Vec<(usize, usize)> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.up)
                    .map(|(k, _)| *k)
                    .collect();
                if !ups.is_empty() {
                    let (a, b) = ups[self.rng.below(ups.len())];
                    self.log(|| format!("BREAK node{a}->node{b}"));
                    self.stats.breaks += 1;
                    self.break_conn(a, b);
                }
            }
            if self.rng.chance(self.cfg.remove_rate) {
                self.start_a_removal()?;
            }
        }
        self.schedule(TICK_MS, Ev::Tick);
        Ok(())
    }

    /// Node `i` crashes: what is in memory is gone (its table, its clients, its removals),
    /// its catalog and tombstones stay.
    fn crash(&mut self, i: usize) {
        self.stats.crashes += 1;
        if i < LOCK_SEGS.len() {
            self.stats.home_crashes += 1;
        }
        self.log(|| format!("node{i} CRASHED"));
        self.holders.retain(|_, (n, _)| *n != i);
        let n = &mut self.nodes[i];
        n.up = false;
        n.clients.clear();
        n.attached = None;
        for e in n.catalog.values_mut() {
            *e = Entry::default();
        }
        let keys: Vec<(usize, usize)> = self
            .conns
            .keys()
            .filter(|(a, b)| *a == i || *b == i)
            .copied()
            .collect();
        for k in keys {
            let c = self.conns.get_mut(&k).expect("a connection");
            c.up = false;
            c.gen += 1;
        }
        for (&(a, b), c) in self.conns.iter_mut() {
            if b == i && a != i {
                // The others dial again until it is back.
                c.dialling = false;
            }
        }
        let others: Vec<usize> = (0..self.nodes.len()).filter(|j| *j != i).collect();
        for j in others {
            if self.nodes[j].up {
                self.dial(j, i);
            }
        }
    }

    fn restart(&mut self, i: usize) -> Result<(), ControlViolation> {
        let peers: Vec<NodeId> = (0..self.nodes.len()).filter(|j| *j != i).map(nid).collect();
        let (clients, ops) = (self.cfg.clients, self.cfg.ops_per_client);
        let left = if self.faults_on { ops } else { 0 };
        let n = &mut self.nodes[i];
        n.up = true;
        n.epoch += 1;
        let bugs = self.cfg.lock_bugs;
        n.table = if self.cfg.reports {
            LockTable::recovering(bugs, peers)
        } else {
            LockTable::new(bugs)
        };
        n.client = LockClient::new();
        n.removals = Removals::new(REMOVAL, self.cfg.removal_bugs, n.epoch << 32);
        n.clients = vec![
            Client {
                state: ClientState::Idle,
                left,
                op: 0,
            };
            clients
        ];
        n.heard.clear();
        let epoch = n.epoch;
        self.log(|| format!("node{i} up, epoch {epoch}"));
        for j in 0..self.nodes.len() {
            if j != i {
                self.dial(i, j);
                if self.nodes[j].up {
                    self.dial(j, i);
                }
            }
        }
        for c in 0..clients {
            self.client_next(i, c)?;
        }
        let d = self.rng.range(1, 50);
        self.schedule(d, Ev::Attacher { node: i, epoch });
        Ok(())
    }

    /// Start quiescence once the clients are done; end the run once everything settled.
    fn finished(&mut self) -> Result<bool, ControlViolation> {
        if self.faults_on {
            let busy = self.nodes.iter().any(|n| {
                !n.up
                    || n.clients
                        .iter()
                        .any(|c| c.left > 0 || c.state != ClientState::Idle)
            });
            if busy {
                return Ok(false);
            }
            self.faults_on = false;
            self.quiesce_at = Some(self.now);
            self.log(|| "QUIESCE: faults and removals stop".into());
            return Ok(false);
        }
        let since = self.quiesce_at.unwrap_or(self.now);
        let settled = self.now
            > since + REMOVAL.prepared_ms + REMOVAL.answer_ms + REMOVAL.sync_ms + 100
            && self.conns.values().all(|c| c.up)
            && self.nodes.iter().all(|n| n.attached.is_none());
        if !settled {
            if self.now > since + 30_000 {
                return Err(self.fail("the cluster did not settle within 30 s of quiescence"));
            }
            return Ok(false);
        }
        self.final_checks()?;
        Ok(true)
    }

    fn final_checks(&self) -> Result<(), ControlViolation> {
        self.final_lock_checks()?;
        self.final_removal_checks()
    }
}

/// What a batch of control seeds did.
#[derive(Clone, Debug, Default)]
pub struct ControlOutcome {
    /// Seeds that passed.
    pub passed: u64,
    /// Their counts, summed.
    pub stats: ControlStats,
    /// The first failing seed: seed, violation, trace tail.
    pub failure: Option<(u64, ControlViolation, Vec<String>)>,
}

/// Run control seeds `start..start + count`, stopping at the first failure (replayed with a
/// trace).
pub fn run_control_seeds(cfg: &ControlConfig, start: u64, count: u64) -> ControlOutcome {
    let mut o = ControlOutcome::default();
    for seed in start..start + count {
        let mut w = ControlWorld::new(cfg.clone(), seed);
        match w.run() {
            Ok(s) => {
                o.passed += 1;
                let t = &mut o.stats;
                t.steps += s.steps;
                t.grants += s.grants;
                t.lock_timeouts += s.lock_timeouts;
                t.crashes += s.crashes;
                t.home_crashes += s.home_crashes;
                t.breaks += s.breaks;
                t.reports += s.reports;
                t.removed += s.removed;
                t.not_removed += s.not_removed;
                t.restarted_since_prepare += s.restarted_since_prepare;
                t.kept_attached += s.kept_attached;
            }
            Err(v) => {
                let mut traced = cfg.clone();
                traced.trace = true;
                let mut again = ControlWorld::new(traced, seed);
                let v = again.run().err().unwrap_or(v);
                let t = again.trace();
                let tail = t[t.len().saturating_sub(60)..].to_vec();
                o.failure = Some((seed, v, tail));
                return o;
            }
        }
    }
    o
}
