//! The history checker: whether a chaos run's reads, writes, syncs and SIGBUSes are all
//! allowed by what pagemesh promises (`docs/cluster.md`, "History checker", states the rules).
//!
//! - **Deaths.** A node's state may be lost from the moment it is killed (`kill`) or, when it
//!   later ended by itself (fenced after a stop or a partition), from the moment it was stopped
//!   or cut off, until it is back up. A write is *exposed* to a death if it began before the
//!   death began, or if it ran on the dying node before it was back up.
//! - **Durable.** A write is durable from the end of the first successful sync of its segment
//!   that began after it (or after a later write of the page) ended.
//! - **Lost.** An acknowledged write may be lost (later reads may return older values) only if
//!   it was exposed to a death while not yet durable and a successful `clear-poison` of its
//!   segment began after the death began (without one, lost data reads as SIGBUS).
//! - **Reads** return word 0 = a version of the page that was written (begun before the read
//!   ended), or 0; never older than a write acknowledged before the read began unless that write
//!   was lost; word 1 is the page's own tag (or 0 before its first write); word 511 ≥ word 0.
//! - **SIGBUS** is allowed when the operation waited `fault_timeout_ms`, when the worker's own
//!   node died while it ran, or when the page was poisonable: some death began before the
//!   SIGBUS, the page's latest write exposed to it was not durable, and no successful
//!   clear-poison ran between that death's end and the operation.
//! - **Clear-poison** clears no more pages than were poisonable then.
//! - **Daemons** end only when killed, or fenced (exit 3) after a stop or a partition.

use std::collections::BTreeMap;

use super::history::{tag, Clear, History, Kind, NodeEvent, Op, Outcome};

/// A window in which a node's state may have been lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Death {
    pub node: u32,
    pub lo_ns: u64,
    pub hi_ns: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub ops: u64,
    pub writes: u64,
    pub writes_ok: u64,
    pub writes_durable: u64,
    pub reads: u64,
    pub reads_ok: u64,
    pub reads_zero: u64,
    /// Reads that legitimately returned a value older than an acknowledged write (lost with a
    /// node, then the page cleared).
    pub reads_reverted: u64,
    pub syncs: u64,
    pub syncs_ok: u64,
    pub clears: u64,
    pub clears_ok: u64,
    pub pages_cleared: u64,
    pub sigbus_timeout: u64,
    pub sigbus_daemon_lost: u64,
    pub sigbus_poisoned: u64,
    pub kills: u64,
    pub stops: u64,
    pub cuts: u64,
    pub deaths: u64,
    pub fenced_exits: u64,
    /// Nodes fenced (exit 3) with no stop or partition of theirs since they started.
    pub unprovoked_fences: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub counts: Counts,
    pub violations: Vec<String>,
    /// What is allowed but worth a look (a node fenced that nobody stopped or cut off).
    pub notes: Vec<String>,
}

/// One page's writes in order (its single writer's), and when each became durable.
struct PageView<'a> {
    attempts: Vec<&'a Op>,
    /// `durable_at[i]`: when attempt i (or a later one) first became durable (u64::MAX: never).
    durable_at: Vec<u64>,
}

struct Ctx<'a> {
    h: &'a History,
    deaths: Vec<Death>,
    pages: BTreeMap<(u32, u64), PageView<'a>>,
    /// Successful clears per segment.
    clears: BTreeMap<u32, Clears>,
}

/// One segment's successful clears by start, and the earliest end among those from each on.
#[derive(Default)]
struct Clears {
    list: Vec<Clear>,
    min_end_from: Vec<u64>,
}

/// Check a history; the report's violations are empty when it is allowed.
pub fn check(h: &History) -> Report {
    let mut r = Report::default();
    let deaths = deaths(h, &mut r);
    let cx = Ctx::new(h, deaths);
    r.counts.deaths = cx.deaths.len() as u64;
    for op in &h.ops {
        r.counts.ops += 1;
        match op.kind {
            Kind::Write => {
                r.counts.writes += 1;
                if op.outcome == Outcome::Ok {
                    r.counts.writes_ok += 1;
                }
            }
            Kind::Read => r.counts.reads += 1,
            Kind::Sync => {
                r.counts.syncs += 1;
                if op.outcome == Outcome::Ok {
                    r.counts.syncs_ok += 1;
                }
            }
        }
        match (op.kind, op.outcome) {
            (Kind::Read, Outcome::Ok) => cx.check_read(op, &mut r),
            (Kind::Read | Kind::Write, Outcome::Sigbus) => cx.check_sigbus(op, &mut r),
            _ => {}
        }
    }
    for v in cx.pages.values() {
        r.counts.writes_durable += v
            .attempts
            .iter()
            .zip(&v.durable_at)
            .filter(|(w, d)| w.outcome == Outcome::Ok && **d < u64::MAX)
            .count() as u64;
    }
    cx.check_clears(&mut r);
    r
}

/// The windows in which nodes may have lost their state, from the test's events; daemons that
/// ended in a way they must not are violations.
pub fn deaths(h: &History, r: &mut Report) -> Vec<Death> {
    let mut events = h.events.clone();
    events.sort_by_key(|e| e.at_ns);
    let mut out: Vec<Death> = Vec::new();
    // Per node: when its current incarnation started, and the stop or cut since then.
    let mut up: BTreeMap<u32, u64> = BTreeMap::new();
    let mut provoked: BTreeMap<u32, u64> = BTreeMap::new();
    let mut open: BTreeMap<u32, usize> = BTreeMap::new();
    for e in &events {
        let c = &mut r.counts;
        let lo = match e.what {
            NodeEvent::Kill => {
                c.kills += 1;
                Some(e.at_ns)
            }
            NodeEvent::Stop | NodeEvent::Cut => {
                if e.what == NodeEvent::Stop {
                    c.stops += 1;
                } else {
                    c.cuts += 1;
                }
                provoked.entry(e.node).or_insert(e.at_ns);
                None
            }
            NodeEvent::Exit(code) => {
                let since = provoked.get(&e.node).copied();
                match (code, since) {
                    (3, Some(_)) => c.fenced_exits += 1,
                    (3, None) => {
                        c.unprovoked_fences += 1;
                        r.notes.push(format!(
                            "node {} was fenced (exit 3) at {} with no stop or partition since it came up at {}",
                            e.node,
                            e.at_ns,
                            up.get(&e.node).copied().unwrap_or(0)
                        ));
                    }
                    _ => r.violations.push(format!(
                        "node {} exited with code {code} at {} (only kill -9 or a fence may end a daemon)",
                        e.node, e.at_ns
                    )),
                }
                Some(since.unwrap_or(up.get(&e.node).copied().unwrap_or(0)))
            }
            NodeEvent::Up => {
                up.insert(e.node, e.at_ns);
                provoked.remove(&e.node);
                if let Some(i) = open.remove(&e.node) {
                    out[i].hi_ns = e.at_ns;
                }
                None
            }
            NodeEvent::Cont | NodeEvent::Heal => None,
        };
        if let Some(lo_ns) = lo {
            if let Some(&i) = open.get(&e.node) {
                // Killed or ended again before it was back up: the window just widens.
                out[i].lo_ns = out[i].lo_ns.min(lo_ns);
                continue;
            }
            open.insert(e.node, out.len());
            out.push(Death {
                node: e.node,
                lo_ns,
                hi_ns: u64::MAX,
            });
        }
    }
    out
}

impl<'a> Ctx<'a> {
    fn new(h: &'a History, deaths: Vec<Death>) -> Ctx<'a> {
        // Successful syncs per segment by start, with the earliest end among those that
        // began at or after each.
        let mut syncs: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        for op in &h.ops {
            if op.kind == Kind::Sync && op.outcome == Outcome::Ok {
                syncs
                    .entry(op.seg)
                    .or_default()
                    .push((op.start_ns, op.end_ns));
            }
        }
        for v in syncs.values_mut() {
            v.sort();
            for i in (0..v.len().saturating_sub(1)).rev() {
                v[i].1 = v[i].1.min(v[i + 1].1);
            }
        }
        let covered = |seg: u32, after: u64| -> u64 {
            let Some(v) = syncs.get(&seg) else {
                return u64::MAX;
            };
            let i = v.partition_point(|s| s.0 <= after);
            v.get(i).map_or(u64::MAX, |s| s.1)
        };
        let mut pages: BTreeMap<(u32, u64), PageView<'a>> = BTreeMap::new();
        for op in h.ops.iter().filter(|o| o.kind == Kind::Write) {
            pages
                .entry((op.seg, op.page))
                .or_insert_with(|| PageView {
                    attempts: Vec::new(),
                    durable_at: Vec::new(),
                })
                .attempts
                .push(op);
        }
        for ((seg, _), v) in pages.iter_mut() {
            v.attempts.sort_by_key(|w| w.version);
            let mut at = u64::MAX;
            v.durable_at = vec![u64::MAX; v.attempts.len()];
            for i in (0..v.attempts.len()).rev() {
                at = at.min(covered(*seg, v.attempts[i].end_ns));
                v.durable_at[i] = at;
            }
        }
        let mut clears: BTreeMap<u32, Clears> = BTreeMap::new();
        for c in h.clears.iter().filter(|c| c.pages.is_some()) {
            clears.entry(c.seg).or_default().list.push(*c);
        }
        for v in clears.values_mut() {
            v.list.sort_by_key(|c| c.start_ns);
            let mut m = u64::MAX;
            v.min_end_from = vec![u64::MAX; v.list.len() + 1];
            for i in (0..v.list.len()).rev() {
                m = m.min(v.list[i].end_ns);
                v.min_end_from[i] = m;
            }
        }
        Ctx {
            h,
            deaths,
            pages,
            clears,
        }
    }

    /// Whether a successful clear of `seg` began in `(after, before)` and ended after
    /// `ended_after`.
    fn cleared_in(&self, seg: u32, after: u64, before: u64, ended_after: u64) -> bool {
        let Some(c) = self.clears.get(&seg) else {
            return false;
        };
        let from = c.list.partition_point(|c| c.start_ns <= after);
        c.list[from..]
            .iter()
            .take_while(|c| c.start_ns < before)
            .any(|c| c.end_ns > ended_after)
    }

    /// Whether a successful clear of `seg` began after `after` and ended before `before`.
    fn cleared_between(&self, seg: u32, after: u64, before: u64) -> bool {
        self.clears.get(&seg).is_some_and(|c| {
            let from = c.list.partition_point(|c| c.start_ns <= after);
            c.min_end_from[from] < before
        })
    }

    /// How many of `v`'s attempts are exposed to death `d`: they began before it, or ran on
    /// its node before the node was back up. (Attempts begin in version order.)
    fn exposed(v: &PageView<'_>, d: &Death) -> usize {
        v.attempts
            .partition_point(|w| w.start_ns < d.lo_ns || (w.node == d.node && w.start_ns < d.hi_ns))
    }

    /// Whether attempt `i` of `v` may have been lost before `before_ns`: exposed to a death
    /// while not durable, and a successful clear-poison began after that death began.
    fn lost(&self, seg: u32, v: &PageView<'_>, i: usize, before_ns: u64) -> bool {
        let w = v.attempts[i];
        self.deaths.iter().any(|d| {
            i < Self::exposed(v, d)
                && v.durable_at[i] >= d.lo_ns
                && self.cleared_in(seg, d.lo_ns, before_ns, w.start_ns)
        })
    }

    /// Whether the page may be poisoned for an operation over `[start, end]` (not counting
    /// the operation itself, `skip`).
    fn poisonable(&self, seg: u32, page: u64, start: u64, end: u64, skip: Option<&Op>) -> bool {
        let Some(v) = self.pages.get(&(seg, page)) else {
            return false;
        };
        self.deaths.iter().any(|d| {
            if d.lo_ns >= end {
                return false;
            }
            let mut n = Self::exposed(v, d);
            while n > 0 && skip.is_some_and(|s| std::ptr::eq(s, v.attempts[n - 1])) {
                n -= 1;
            }
            n > 0 && v.durable_at[n - 1] >= d.lo_ns && !self.cleared_between(seg, d.hi_ns, start)
        })
    }

    fn check_read(&self, op: &Op, r: &mut Report) {
        r.counts.reads_ok += 1;
        let v = op.version;
        let expected = tag(op.seg, op.page);
        if v == 0 {
            r.counts.reads_zero += 1;
        }
        // Before word 0 of a first write is stored, word 1 may already hold the tag.
        if op.tag != expected && (v != 0 || op.tag != 0) {
            r.violations.push(format!(
                "{}: word 1 is {:#x}, not the page's tag {expected:#x} (another page's data?)",
                describe(op),
                op.tag
            ));
        }
        if op.last < v {
            r.violations.push(format!(
                "{}: word 511 holds {}, older than word 0 (a torn page)",
                describe(op),
                op.last
            ));
        }
        let view = self.pages.get(&(op.seg, op.page));
        let attempts = view.map_or(&[][..], |p| p.attempts.as_slice());
        if v != 0 {
            let found = attempts.binary_search_by_key(&v, |w| w.version).ok();
            let real = found.map(|i| attempts[i]).is_some_and(|w| {
                matches!(w.outcome, Outcome::Ok | Outcome::Unknown) && w.start_ns < op.end_ns
            });
            if !real {
                r.violations.push(format!(
                    "{}: returned version {v}, which no write had stored when the read ended",
                    describe(op)
                ));
            }
        }
        let Some(view) = view else { return };
        let newer = attempts.partition_point(|w| w.version <= v);
        let acked = attempts.partition_point(|w| w.end_ns < op.start_ns);
        let mut reverted = false;
        for i in (newer..acked).rev() {
            let w = attempts[i];
            if w.outcome != Outcome::Ok {
                continue;
            }
            if !self.lost(op.seg, view, i, op.end_ns) {
                let what = if v == 0 { "zeros" } else { "a stale value" };
                let synced = if view.durable_at[i] < op.start_ns {
                    " (synced)"
                } else {
                    ""
                };
                r.violations.push(format!(
                    "{}: returned {what} ({v}) after {}{synced} was acknowledged",
                    describe(op),
                    describe(w)
                ));
                return;
            }
            reverted = true;
        }
        if reverted {
            r.counts.reads_reverted += 1;
        }
    }

    fn check_sigbus(&self, op: &Op, r: &mut Report) {
        let timeout_ns = self.h.config.fault_timeout_ms * 900_000;
        let life_start = self
            .h
            .lives
            .get(&(op.worker, op.incarnation))
            .map_or(0, |l| l.start_ns);
        if op.end_ns.saturating_sub(op.start_ns) >= timeout_ns {
            r.counts.sigbus_timeout += 1;
        } else if self
            .deaths
            .iter()
            .any(|d| d.node == op.node && d.lo_ns <= op.end_ns && d.hi_ns >= life_start)
        {
            r.counts.sigbus_daemon_lost += 1;
        } else if self.poisonable(op.seg, op.page, op.start_ns, op.end_ns, Some(op)) {
            r.counts.sigbus_poisoned += 1;
        } else {
            r.violations.push(format!(
                "{}: SIGBUS, but the page was not poisonable (no node died after its latest \
                 unsynced write) and the worker's node did not die",
                describe(op)
            ));
        }
    }

    fn check_clears(&self, r: &mut Report) {
        for c in &self.h.clears {
            r.counts.clears += 1;
            let Some(n) = c.pages else { continue };
            r.counts.clears_ok += 1;
            r.counts.pages_cleared += n;
            let possible = (0..self.h.config.pages)
                .filter(|&p| self.poisonable(c.seg, p, c.start_ns, c.end_ns, None))
                .count() as u64;
            if n > possible {
                r.violations.push(format!(
                    "clear-poison of segment {} over [{}, {}] cleared {n} page(s), but only \
                     {possible} could have been lost",
                    c.seg, c.start_ns, c.end_ns
                ));
            }
        }
    }
}

/// One operation, for a violation's message.
pub fn describe(op: &Op) -> String {
    let kind = match op.kind {
        Kind::Write => format!("write of version {}", op.version),
        Kind::Read => format!("read ({}, {:#x}, {})", op.version, op.tag, op.last),
        Kind::Sync => "sync".to_string(),
    };
    format!(
        "worker {}.{} on node {}: {kind} of segment {} page {} over [{}, {}] ({:?})",
        op.worker, op.incarnation, op.node, op.seg, op.page, op.start_ns, op.end_ns, op.outcome
    )
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
