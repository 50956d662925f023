//! Property test: random interleavings of faults, syncs, evictions, message deliveries (in any
//! order), drops and retransmissions on a small cluster, checked against a sequentially
//! consistent reference memory. After every step: single writer / many readers and every copy
//! holds the latest write. After draining: every fault completed, the directory matches the
//! copies the nodes hold exactly, and synced pages are in the mapper.

mod common;

use common::{forall, Rng};
use pagemesh_core::{
    Access, Backing, CacheState, CallId, CallResult, Envelope, Epoch, FaultId, FaultResult, Msg,
    Node, NodeConfig, Output, PageData, PageKey, SegmentInfo,
};
use pagemesh_types::{NodeId, SegmentId};
use std::collections::BTreeMap;

const NODES: usize = 3;
const PAGES: u64 = 2;

#[derive(Clone, Debug)]
enum Op {
    Read { node: usize, page: u64 },
    Write { node: usize, page: u64 },
    Sync { node: usize, seg: u64 },
    Evict { node: usize, page: u64 },
    Deliver { pick: usize },
    Drop { pick: usize },
    Mapper { pick: usize },
    Tick,
}

fn gen(rng: &mut Rng) -> Vec<Op> {
    let len = 20 + rng.below(120) as usize;
    (0..len)
        .map(|_| {
            let node = rng.below(NODES as u64) as usize;
            let page = rng.below(2 * PAGES);
            let pick = rng.below(1000) as usize;
            match rng.below(100) {
                0..=14 => Op::Read { node, page },
                15..=29 => Op::Write { node, page },
                30..=33 => Op::Sync {
                    node,
                    seg: rng.below(2),
                },
                34..=38 => Op::Evict { node, page },
                39..=41 => Op::Drop { pick },
                42..=47 => Op::Mapper { pick },
                48..=50 => Op::Tick,
                _ => Op::Deliver { pick },
            }
        })
        .collect()
}

fn key(page: u64) -> PageKey {
    PageKey::new(SegmentId(page / PAGES), page % PAGES)
}

fn value(d: &PageData, mem: Option<&u64>) -> u64 {
    match d {
        PageData::Zero => 0,
        PageData::Bytes(b) => u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        PageData::Local => *mem.expect("local data of a held page"),
    }
}

struct Cluster {
    nodes: Vec<Node>,
    mem: Vec<BTreeMap<PageKey, u64>>,
    net: Vec<Envelope>,
    mapper_ops: Vec<(usize, Output)>,
    mapper: BTreeMap<PageKey, u64>,
    reference: BTreeMap<PageKey, u64>,
    /// Write sequence number per page, to tell which writes a sync covers.
    written: BTreeMap<PageKey, u64>,
    faults: BTreeMap<(usize, FaultId), (PageKey, Option<u64>)>,
    syncs: BTreeMap<(usize, CallId), (u64, BTreeMap<PageKey, u64>)>,
    now: u64,
    next: u64,
}

impl Cluster {
    fn new(bug: bool) -> Cluster {
        let segs = [
            SegmentInfo {
                id: SegmentId(0),
                home: NodeId(0),
                pages: PAGES,
                backing: Backing::Zero,
            },
            SegmentInfo {
                id: SegmentId(1),
                home: NodeId(1),
                pages: PAGES,
                backing: Backing::Mapper,
            },
        ];
        let peers: Vec<NodeId> = (0..NODES as u32).map(NodeId).collect();
        let mut c = Cluster {
            nodes: (0..NODES)
                .map(|i| {
                    let mut cfg = NodeConfig::new(NodeId(i as u32), Epoch(1), peers.clone());
                    cfg.bugs.skip_one_inval_ack = bug;
                    Node::new(cfg, &segs)
                })
                .collect(),
            mem: vec![BTreeMap::new(); NODES],
            net: Vec::new(),
            mapper_ops: Vec::new(),
            mapper: BTreeMap::new(),
            reference: BTreeMap::new(),
            written: BTreeMap::new(),
            faults: BTreeMap::new(),
            syncs: BTreeMap::new(),
            now: 0,
            next: 0,
        };
        for p in 0..2 * PAGES {
            let k = key(p);
            let v = if k.seg == SegmentId(1) { 1000 + p } else { 0 };
            if v != 0 {
                c.mapper.insert(k, v);
            }
            c.reference.insert(k, v);
        }
        for i in 0..NODES {
            c.nodes[i].start(0);
            c.pump(i).expect("start");
        }
        c
    }

    fn id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn pump(&mut self, i: usize) -> Result<(), String> {
        loop {
            let outs = self.nodes[i].take_outputs();
            if outs.is_empty() {
                return Ok(());
            }
            for o in outs {
                self.output(i, o)?;
            }
        }
    }

    fn output(&mut self, i: usize, o: Output) -> Result<(), String> {
        match o {
            Output::Send(mut env) => {
                let page = env.msg.page();
                let slot = match &mut env.msg {
                    Msg::FetchReply {
                        copy: Some((_, d)), ..
                    } => Some(d),
                    Msg::Grant { data: Some(d), .. } => Some(d),
                    _ => None,
                };
                if let Some(d) = slot {
                    if *d == PageData::Local {
                        let v = page.and_then(|p| self.mem[i].get(&p).copied());
                        let v = v.ok_or(format!("node{i} sent a page it does not hold"))?;
                        *d = PageData::Bytes(v.to_le_bytes().to_vec());
                    }
                }
                self.net.push(env);
            }
            Output::Install { page, data, .. } => {
                let v = value(&data, None);
                self.mem[i].insert(page, v);
            }
            Output::Invalidate { page } => {
                self.mem[i].remove(&page);
            }
            Output::Unprotect { .. } | Output::Downgrade { .. } => {}
            Output::IntentRead { .. } => return Err("intent read without a restart".into()),
            o @ (Output::MapperRead { .. }
            | Output::MapperWrite { .. }
            | Output::IntentWrite { .. }) => self.mapper_ops.push((i, o)),
            Output::FaultDone {
                fault,
                page,
                result,
            } => {
                let (_, write) = self
                    .faults
                    .remove(&(i, fault))
                    .ok_or("completion of an unknown fault")?;
                if result != FaultResult::Ok {
                    return Err(format!(
                        "node{i}: fault on {page} ended {result:?} without any crash"
                    ));
                }
                let v = *self.mem[i]
                    .get(&page)
                    .ok_or("fault done but page not installed")?;
                match write {
                    None => {
                        if v != self.reference[&page] {
                            return Err(format!(
                                "node{i} read {v} from {page}, latest write is {}",
                                self.reference[&page]
                            ));
                        }
                    }
                    Some(x) => {
                        let st = self.nodes[i].copy(page).map(|c| c.state);
                        if st != Some(CacheState::Modified) {
                            return Err(format!("node{i}: write fault done in state {st:?}"));
                        }
                        self.mem[i].insert(page, x);
                        self.reference.insert(page, x);
                        let seq = self.id();
                        self.written.insert(page, seq);
                    }
                }
            }
            Output::CallDone { call, result } => {
                let (seg, snapshot) = self.syncs.remove(&(i, call)).ok_or("unknown call")?;
                if result != CallResult::Ok {
                    return Err(format!("sync ended {result:?}"));
                }
                for (page, seq) in snapshot {
                    // Pages not written since the sync started must be in the mapper.
                    if page.seg == SegmentId(seg) && self.written.get(&page) == Some(&seq) {
                        let want = self.reference[&page];
                        let got = self.mapper.get(&page).copied().unwrap_or(0);
                        if got != want {
                            return Err(format!(
                                "after sync {page} holds {got} in the mapper, not {want}"
                            ));
                        }
                    }
                }
            }
            Output::Event(pagemesh_core::Event::PeerRestarted { .. }) => {}
            Output::Event(e) => return Err(format!("node{i}: unexpected event {e:?}")),
        }
        Ok(())
    }

    fn run(&mut self, op: &Op) -> Result<(), String> {
        let now = self.now;
        match *op {
            Op::Read { node, page } | Op::Write { node, page } => {
                let f = FaultId(self.id());
                let k = key(page);
                let write = matches!(op, Op::Write { .. }).then(|| self.next * 7 + 1);
                self.faults.insert((node, f), (k, write));
                let access = if write.is_some() {
                    Access::Write
                } else {
                    Access::Read
                };
                self.nodes[node].fault(now, f, k, access);
                self.pump(node)
            }
            Op::Sync { node, seg } => {
                let c = CallId(self.id());
                let snap = self.written.clone();
                let snap = self
                    .reference
                    .keys()
                    .map(|k| (*k, snap.get(k).copied().unwrap_or(0)))
                    .collect();
                self.written.entry(key(0)).or_insert(0);
                for k in self.reference.keys().copied().collect::<Vec<_>>() {
                    self.written.entry(k).or_insert(0);
                }
                self.syncs.insert((node, c), (seg, snap));
                self.nodes[node].sync(now, c, SegmentId(seg));
                self.pump(node)
            }
            Op::Evict { node, page } => {
                self.nodes[node].evict(now, key(page));
                self.pump(node)
            }
            Op::Deliver { pick } => {
                if self.net.is_empty() {
                    return Ok(());
                }
                let env = self.net.remove(pick % self.net.len());
                if std::env::var_os("PAGEMESH_PROP_TRACE").is_some() {
                    eprintln!("t={now} {env}");
                }
                let to = env.to.0 as usize;
                self.nodes[to].step(now, env);
                self.pump(to)
            }
            Op::Drop { pick } => {
                if !self.net.is_empty() {
                    let n = self.net.len();
                    self.net.remove(pick % n);
                }
                Ok(())
            }
            Op::Mapper { pick } => {
                if self.mapper_ops.is_empty() {
                    return Ok(());
                }
                let (i, o) = self.mapper_ops.remove(pick % self.mapper_ops.len());
                match o {
                    Output::MapperRead { token, page } => {
                        let v = self.mapper.get(&page).copied().unwrap_or(0);
                        self.nodes[i].mapper_read_done(
                            now,
                            token,
                            Ok(PageData::Bytes(v.to_le_bytes().to_vec())),
                        );
                    }
                    Output::MapperWrite { token, page, data } => {
                        self.mapper.insert(page, value(&data, None));
                        self.nodes[i].mapper_write_done(now, token, Ok(()));
                    }
                    Output::IntentWrite { token, .. } => {
                        self.nodes[i].intent_write_done(now, token, Ok(()))
                    }
                    _ => unreachable!(),
                }
                self.pump(i)
            }
            Op::Tick => {
                self.now += 100;
                for i in 0..NODES {
                    self.nodes[i].tick(self.now);
                    self.pump(i)?;
                }
                Ok(())
            }
        }
    }

    fn check_step(&self) -> Result<(), String> {
        for (page, want) in &self.reference {
            let mut excl = 0;
            let mut shared = 0;
            for i in 0..NODES {
                match (self.nodes[i].copy(*page), self.mem[i].get(page)) {
                    (Some(c), Some(v)) => {
                        if c.state.is_exclusive() {
                            excl += 1;
                        } else {
                            shared += 1;
                        }
                        if v != want {
                            return Err(format!(
                                "node{i} holds {v} for {page}, latest write is {want}"
                            ));
                        }
                    }
                    (None, None) => {}
                    (c, v) => {
                        return Err(format!("node{i}: state {c:?} but memory {v:?} for {page}"))
                    }
                }
            }
            if excl > 1 || (excl == 1 && shared > 0) {
                return Err(format!(
                    "{page}: {excl} exclusive and {shared} shared copies"
                ));
            }
        }
        Ok(())
    }

    /// Deliver everything in order, complete every mapper op, tick until quiet.
    fn drain(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            if !self.net.is_empty() {
                self.run(&Op::Deliver { pick: 0 })?;
            } else if !self.mapper_ops.is_empty() {
                self.run(&Op::Mapper { pick: 0 })?;
            } else if self.nodes.iter().all(|n| n.is_idle()) {
                return Ok(());
            } else {
                self.run(&Op::Tick)?;
            }
            self.check_step()?;
        }
        Err("did not quiesce: a request never completed".into())
    }

    fn check_directory(&self) -> Result<(), String> {
        if !self.faults.is_empty() || !self.syncs.is_empty() {
            return Err(format!(
                "{} faults and {} syncs never completed",
                self.faults.len(),
                self.syncs.len()
            ));
        }
        for page in self.reference.keys() {
            let home = page.seg.0 as usize;
            let Some(d) = self.nodes[home].dir_page(*page) else {
                continue;
            };
            if d.poisoned || d.busy {
                return Err(format!("{page}: directory {d:?} after quiescence"));
            }
            let mut owner = None;
            let mut sharers = Vec::new();
            for i in 0..NODES {
                if let Some(c) = self.nodes[i].copy(*page) {
                    if c.version != d.version {
                        return Err(format!(
                            "node{i} holds {page} v{} but the home is at v{}",
                            c.version.0, d.version.0
                        ));
                    }
                    if c.state.is_exclusive() {
                        owner = Some(NodeId(i as u32));
                    } else {
                        sharers.push(NodeId(i as u32));
                    }
                }
            }
            if d.owner != owner || d.sharers != sharers {
                return Err(format!(
                    "{page}: directory says owner {:?} sharers {:?}, nodes hold owner {owner:?} sharers {sharers:?}",
                    d.owner, d.sharers
                ));
            }
            if d.version == d.durable && d.version.0 > 0 {
                let m = self.mapper.get(page).copied().unwrap_or(0);
                if m != self.reference[page] {
                    return Err(format!(
                        "{page} is clean at v{} but the mapper holds {m}, not {}",
                        d.version.0, self.reference[page]
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check(ops: &[Op]) -> Result<(), String> {
    check_with(ops, false)
}

fn check_with(ops: &[Op], bug: bool) -> Result<(), String> {
    let mut c = Cluster::new(bug);
    for (n, op) in ops.iter().enumerate() {
        c.run(op).map_err(|e| format!("op {n} {op:?}: {e}"))?;
        c.check_step()
            .map_err(|e| format!("after op {n} {op:?}: {e}"))?;
    }
    c.drain()?;
    c.check_directory()
}

#[test]
fn directory_and_caches_agree_with_the_reference_memory() {
    forall(3000, gen, check);
}

#[test]
fn the_property_catches_the_injected_bug() {
    let caught = (0..3000).any(|case| check_with(&gen(&mut Rng::new(case)), true).is_err());
    assert!(
        caught,
        "3000 cases did not notice a home that skips an invalidation ack"
    );
}
