//! Two-phase removal of a cluster segment (`docs/cluster.md` §4), sans IO.
//!
//! The home of a segment runs its removal: it asks every node it counts alive to prepare (refuse
//! new attachments, and say no if a process has the segment attached), waits for all of them,
//! syncs a file segment, and then commits (every node forgets the segment, durably) or aborts
//! (every node makes it attachable again). A node that prepared and hears neither commit nor
//! abort undoes its prepare by itself after a while, so a home that died mid-removal does not
//! leave the segment unattachable for good.
//!
//! The driver does what the outputs say; whether a process has the segment attached is its
//! knowledge, handed in as a check that also marks the segment (`mark`), so that checking and
//! refusing new attachments happen at once.
//!
//! Invariants (asserted): one removal per segment at a time; a removal commits only when every
//! node it asked has prepared the same attempt (or was declared dead meanwhile) and its sync, if
//! any, succeeded; the limits satisfy `answer_ms + sync_ms < prepared_ms`, so a commit is sent
//! before any prepare it relies on expires (measured from the prepare's send).

use std::collections::{BTreeMap, BTreeSet};

mod peers;

use pagemesh_types::{NodeId, SegmentId};

/// A message of the removal protocol (carried by the peer wire format's control frames).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemovalMsg {
    /// home -> node: prepare to remove `seg`.
    Prepare {
        /// The segment.
        seg: SegmentId,
        /// The home's number for this attempt.
        attempt: u64,
    },
    /// node -> home: prepared, or why not (the processes attached).
    Prepared {
        /// The segment.
        seg: SegmentId,
        /// The attempt answered.
        attempt: u64,
        /// Prepared, or why not.
        result: Result<(), String>,
    },
    /// home -> nodes: forget `seg`.
    Commit {
        /// The segment.
        seg: SegmentId,
    },
    /// home -> nodes: `attempt` failed; `seg` is attachable again.
    Abort {
        /// The segment.
        seg: SegmentId,
        /// The attempt that failed.
        attempt: u64,
    },
}

impl RemovalMsg {
    /// The segment it is about.
    pub fn seg(&self) -> SegmentId {
        match self {
            RemovalMsg::Prepare { seg, .. }
            | RemovalMsg::Prepared { seg, .. }
            | RemovalMsg::Commit { seg }
            | RemovalMsg::Abort { seg, .. } => *seg,
        }
    }
}

/// Why a removal did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemovalError {
    /// A removal of this segment is running already.
    Running,
    /// Processes here have the segment attached (the driver's words, naming them).
    AttachedHere(String),
    /// A node refused: processes there have it attached.
    Refused {
        /// The node.
        node: NodeId,
        /// Its answer.
        why: String,
    },
    /// These nodes did not answer within `answer_ms`.
    NoAnswer {
        /// The nodes.
        nodes: Vec<NodeId>,
        /// The limit.
        answer_ms: u64,
    },
    /// The file segment's sync failed.
    SyncFailed(String),
    /// The file segment's sync did not finish within `sync_ms`.
    SyncTooSlow {
        /// The limit.
        sync_ms: u64,
    },
}

impl std::fmt::Display for RemovalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemovalError::Running => write!(f, "a removal of this segment is already running"),
            RemovalError::AttachedHere(why) => write!(f, "{why}; end those processes first"),
            RemovalError::Refused { why, .. } => write!(f, "{why}"),
            RemovalError::NoAnswer { nodes, answer_ms } => {
                let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
                write!(
                    f,
                    "{} did not answer within {} ms",
                    names.join(", "),
                    answer_ms
                )
            }
            RemovalError::SyncFailed(e) => write!(f, "syncing the file segment failed: {e}"),
            RemovalError::SyncTooSlow { sync_ms } => write!(
                f,
                "syncing the file segment took longer than {sync_ms} ms (the nodes' prepares would expire)"
            ),
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemovalOutput<R> {
    /// Send `msg` to `to`.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: RemovalMsg,
    },
    /// Sync the file segment `seg` and report it with [`Removals::sync_done`].
    Sync {
        /// The segment.
        seg: SegmentId,
    },
    /// Forget `seg` on this node, durably (it must never come back here). `prepared` says
    /// whether this node still held a prepare for it: if not, the driver must first check (and
    /// mark) that no process has it attached, and keep it while one does.
    Forget {
        /// The segment.
        seg: SegmentId,
        /// Whether a prepare of this node covered it.
        prepared: bool,
    },
    /// A peer asked what the protocol does not let it ask: nothing changed; the driver logs it.
    Refused {
        /// The peer.
        from: NodeId,
        /// The segment it named.
        seg: SegmentId,
        /// The rule it broke.
        why: &'static str,
    },
    /// `seg` is attachable again on this node.
    Unmark {
        /// The segment.
        seg: SegmentId,
    },
    /// A removal run here is over: tell `for_`.
    Done {
        /// The segment.
        seg: SegmentId,
        /// Who asked.
        for_: R,
        /// Removed, or why not.
        result: Result<(), RemovalError>,
    },
}

/// The limits of a removal, in the driver's milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemovalConfig {
    /// How long the nodes have to answer a prepare.
    pub answer_ms: u64,
    /// How long a file segment's sync may take before the removal is aborted.
    pub sync_ms: u64,
    /// How long a node keeps a prepare that hears neither commit nor abort.
    pub prepared_ms: u64,
}

impl RemovalConfig {
    /// The daemon's limits: 5 s to answer, 60 s to sync, prepares kept 120 s.
    pub const DAEMON: RemovalConfig = RemovalConfig {
        answer_ms: 5_000,
        sync_ms: 60_000,
        prepared_ms: 120_000,
    };
}

/// A removal to start at a segment's home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovalStart<R> {
    /// The segment, homed here.
    pub seg: SegmentId,
    /// Who asked (handed back in [`RemovalOutput::Done`]).
    pub for_: R,
    /// The other nodes not declared dead: each must prepare.
    pub peers: Vec<NodeId>,
    /// A file segment, synced before the commit.
    pub file: bool,
}

/// Removal bugs that can be switched on to prove the checkers catch them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemovalBugs {
    /// The home commits as soon as the first node prepared, without waiting for the others.
    pub commit_on_first_answer: bool,
}

#[derive(Clone, Debug)]
struct Running<R> {
    attempt: u64,
    /// Every node asked (commit and abort go to them).
    asked: BTreeSet<NodeId>,
    /// Those that have not prepared yet.
    waiting: BTreeSet<NodeId>,
    answer_by_ms: u64,
    file: bool,
    /// When the sync started, while it runs.
    syncing_since: Option<u64>,
    for_: R,
}

/// The removals of one node: those it runs as a home and the prepares it holds as a node.
#[derive(Clone, Debug)]
pub struct Removals<R> {
    cfg: RemovalConfig,
    bugs: RemovalBugs,
    running: BTreeMap<SegmentId, Running<R>>,
    /// Prepares held here: segment -> (attempt, since).
    prepared: BTreeMap<SegmentId, (u64, u64)>,
    next_attempt: u64,
}

impl<R> Removals<R> {
    /// No removal running, no prepare held. `first_attempt` should differ between incarnations
    /// of the node (the driver's clock or epoch), so an answer to an earlier incarnation's
    /// attempt is not taken for the current one.
    pub fn new(cfg: RemovalConfig, bugs: RemovalBugs, first_attempt: u64) -> Removals<R> {
        assert!(
            cfg.answer_ms + cfg.sync_ms < cfg.prepared_ms,
            "a removal's prepares must outlive its answers and its sync: {cfg:?}"
        );
        Removals {
            cfg,
            bugs,
            running: BTreeMap::new(),
            prepared: BTreeMap::new(),
            next_attempt: first_attempt,
        }
    }

    /// Whether this node runs a removal of `seg`.
    pub fn is_running(&self, seg: SegmentId) -> bool {
        self.running.contains_key(&seg)
    }

    /// Whether this node holds a prepare of `seg`.
    pub fn is_prepared(&self, seg: SegmentId) -> bool {
        self.prepared.contains_key(&seg)
    }

    /// The prepare of `seg` this node holds: its attempt.
    pub fn prepared_attempt(&self, seg: SegmentId) -> Option<u64> {
        self.prepared.get(&seg).map(|p| p.0)
    }

    /// The nodes asked by the running removal of `seg` and its attempt.
    pub fn asked(&self, seg: SegmentId) -> Option<(u64, Vec<NodeId>)> {
        self.running
            .get(&seg)
            .map(|r| (r.attempt, r.asked.iter().copied().collect()))
    }

    /// Start the removal `ask` describes. `mark` checks that no process here has the segment
    /// attached and refuses new attachments (or says who is attached).
    pub fn start(
        &mut self,
        now_ms: u64,
        ask: RemovalStart<R>,
        mark: impl FnOnce() -> Result<(), String>,
        out: &mut Vec<RemovalOutput<R>>,
    ) {
        let RemovalStart {
            seg,
            for_,
            peers,
            file,
        } = ask;
        if self.running.contains_key(&seg) {
            let result = Err(RemovalError::Running);
            return out.push(RemovalOutput::Done { seg, for_, result });
        }
        if let Err(why) = mark() {
            let result = Err(RemovalError::AttachedHere(why));
            return out.push(RemovalOutput::Done { seg, for_, result });
        }
        self.next_attempt += 1;
        let attempt = self.next_attempt;
        let asked: BTreeSet<NodeId> = peers.into_iter().collect();
        for &to in &asked {
            let msg = RemovalMsg::Prepare { seg, attempt };
            out.push(RemovalOutput::Send { to, msg });
        }
        let r = Running {
            attempt,
            waiting: asked.clone(),
            asked,
            answer_by_ms: now_ms + self.cfg.answer_ms,
            file,
            syncing_since: None,
            for_,
        };
        self.running.insert(seg, r);
        self.step(now_ms, seg, out);
    }

    /// A message of the protocol from `from`. For a `Prepare`, `mark` is as in
    /// [`Removals::start`] (it is not called for the other messages).
    pub fn on_message(
        &mut self,
        now_ms: u64,
        from: NodeId,
        msg: RemovalMsg,
        mark: impl FnOnce() -> Result<(), String>,
        out: &mut Vec<RemovalOutput<R>>,
    ) {
        match msg {
            RemovalMsg::Prepare { seg, attempt } => {
                let result = mark();
                if result.is_ok() {
                    self.prepared.insert(seg, (attempt, now_ms));
                }
                let msg = RemovalMsg::Prepared {
                    seg,
                    attempt,
                    result,
                };
                out.push(RemovalOutput::Send { to: from, msg });
            }
            RemovalMsg::Prepared {
                seg,
                attempt,
                result,
            } => self.on_prepared(now_ms, from, seg, attempt, result, out),
            RemovalMsg::Commit { seg } => self.forget(seg, out),
            RemovalMsg::Abort { seg, attempt } => {
                if self.prepared_attempt(seg) == Some(attempt) {
                    self.prepared.remove(&seg);
                    out.push(RemovalOutput::Unmark { seg });
                }
            }
        }
    }

    /// A peer says `seg` was removed from the cluster (its tombstones, after a connect): forget
    /// it here too.
    pub fn removed_elsewhere(&mut self, seg: SegmentId, out: &mut Vec<RemovalOutput<R>>) {
        self.forget(seg, out);
    }

    fn forget(&mut self, seg: SegmentId, out: &mut Vec<RemovalOutput<R>>) {
        let prepared = self.prepared.remove(&seg).is_some();
        out.push(RemovalOutput::Forget { seg, prepared });
    }

    fn on_prepared(
        &mut self,
        now_ms: u64,
        from: NodeId,
        seg: SegmentId,
        attempt: u64,
        result: Result<(), String>,
        out: &mut Vec<RemovalOutput<R>>,
    ) {
        let Some(r) = self.running.get_mut(&seg) else {
            return;
        };
        if r.attempt != attempt || !r.asked.contains(&from) {
            return;
        }
        match result {
            Ok(()) => {
                r.waiting.remove(&from);
                if self.bugs.commit_on_first_answer {
                    r.waiting.clear();
                }
                self.step(now_ms, seg, out);
            }
            Err(why) => self.abort(seg, RemovalError::Refused { node: from, why }, out),
        }
    }

    /// `peer` was declared dead: removals stop waiting for it (it learns of a commit from the
    /// others' tombstones when it comes back).
    pub fn peer_dead(&mut self, now_ms: u64, peer: NodeId, out: &mut Vec<RemovalOutput<R>>) {
        let segs: Vec<SegmentId> = self
            .running
            .iter_mut()
            .filter_map(|(s, r)| r.waiting.remove(&peer).then_some(*s))
            .collect();
        for seg in segs {
            self.step(now_ms, seg, out);
        }
    }

    /// `peer` (re)connected: it may be a new incarnation that lost its prepare, so each running
    /// removal that asked it asks again.
    pub fn peer_connected(&mut self, peer: NodeId, out: &mut Vec<RemovalOutput<R>>) {
        for (&seg, r) in self.running.iter_mut() {
            if r.asked.contains(&peer) && r.syncing_since.is_none() {
                r.waiting.insert(peer);
                let msg = RemovalMsg::Prepare {
                    seg,
                    attempt: r.attempt,
                };
                out.push(RemovalOutput::Send { to: peer, msg });
            }
        }
    }

    /// The sync asked by [`RemovalOutput::Sync`] is over.
    pub fn sync_done(
        &mut self,
        seg: SegmentId,
        result: Result<(), String>,
        out: &mut Vec<RemovalOutput<R>>,
    ) {
        if self
            .running
            .get(&seg)
            .is_none_or(|r| r.syncing_since.is_none())
        {
            return;
        }
        match result {
            Ok(()) => self.commit(seg, out),
            Err(e) => self.abort(seg, RemovalError::SyncFailed(e), out),
        }
    }

    /// Time passes: removals whose nodes did not all answer, or whose sync is too slow, abort;
    /// prepares that heard neither commit nor abort are undone.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<RemovalOutput<R>>) {
        let cfg = self.cfg;
        let late: Vec<(SegmentId, RemovalError)> = self
            .running
            .iter()
            .filter_map(|(&seg, r)| match r.syncing_since {
                None if r.answer_by_ms <= now_ms => Some((
                    seg,
                    RemovalError::NoAnswer {
                        nodes: r.waiting.iter().copied().collect(),
                        answer_ms: cfg.answer_ms,
                    },
                )),
                Some(t) if t + cfg.sync_ms <= now_ms => Some((
                    seg,
                    RemovalError::SyncTooSlow {
                        sync_ms: cfg.sync_ms,
                    },
                )),
                _ => None,
            })
            .collect();
        for (seg, why) in late {
            self.abort(seg, why, out);
        }
        let expired: Vec<SegmentId> = self
            .prepared
            .iter()
            .filter(|(_, (_, since))| since + cfg.prepared_ms <= now_ms)
            .map(|(s, _)| *s)
            .collect();
        for seg in expired {
            self.prepared.remove(&seg);
            out.push(RemovalOutput::Unmark { seg });
        }
    }

    /// Every node prepared: sync a file segment, then commit.
    fn step(&mut self, now_ms: u64, seg: SegmentId, out: &mut Vec<RemovalOutput<R>>) {
        let Some(r) = self.running.get_mut(&seg) else {
            return;
        };
        if !r.waiting.is_empty() || r.syncing_since.is_some() {
            return;
        }
        if r.file {
            r.syncing_since = Some(now_ms);
            return out.push(RemovalOutput::Sync { seg });
        }
        self.commit(seg, out);
    }

    fn commit(&mut self, seg: SegmentId, out: &mut Vec<RemovalOutput<R>>) {
        let r = self.running.remove(&seg).expect("a running removal");
        assert!(
            r.waiting.is_empty(),
            "a removal committed with nodes still to prepare: {:?}",
            r.waiting
        );
        for &to in &r.asked {
            out.push(RemovalOutput::Send {
                to,
                msg: RemovalMsg::Commit { seg },
            });
        }
        out.push(RemovalOutput::Forget {
            seg,
            prepared: true,
        });
        out.push(RemovalOutput::Done {
            seg,
            for_: r.for_,
            result: Ok(()),
        });
    }

    fn abort(&mut self, seg: SegmentId, why: RemovalError, out: &mut Vec<RemovalOutput<R>>) {
        let Some(r) = self.running.remove(&seg) else {
            return;
        };
        for &to in &r.asked {
            let msg = RemovalMsg::Abort {
                seg,
                attempt: r.attempt,
            };
            out.push(RemovalOutput::Send { to, msg });
        }
        out.push(RemovalOutput::Unmark { seg });
        out.push(RemovalOutput::Done {
            seg,
            for_: r.for_,
            result: Err(why),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: SegmentId = SegmentId(9);
    const CFG: RemovalConfig = RemovalConfig {
        answer_ms: 100,
        sync_ms: 200,
        prepared_ms: 1_000,
    };

    fn ask(for_: &'static str, peers: &[u32], file: bool) -> RemovalStart<&'static str> {
        RemovalStart {
            seg: SEG,
            for_,
            peers: peers.iter().map(|p| NodeId(*p)).collect(),
            file,
        }
    }

    fn home() -> Removals<&'static str> {
        Removals::new(CFG, RemovalBugs::default(), 0)
    }

    fn sent(out: &[RemovalOutput<&'static str>]) -> Vec<(NodeId, RemovalMsg)> {
        out.iter()
            .filter_map(|o| match o {
                RemovalOutput::Send { to, msg } => Some((*to, msg.clone())),
                _ => None,
            })
            .collect()
    }

    fn done(out: &[RemovalOutput<&'static str>]) -> Option<Result<(), RemovalError>> {
        out.iter().find_map(|o| match o {
            RemovalOutput::Done { result, .. } => Some(result.clone()),
            _ => None,
        })
    }

    fn prepared(attempt: u64, result: Result<(), String>) -> RemovalMsg {
        RemovalMsg::Prepared {
            seg: SEG,
            attempt,
            result,
        }
    }

    #[test]
    fn only_the_home_runs_or_announces_a_removal() {
        let mut n = home();
        let mut out = Vec::new();
        let home = Some(NodeId(0));
        let commit = RemovalMsg::Commit { seg: SEG };
        n.on_peer_message(0, NodeId(2), home, commit.clone(), || Ok(()), &mut out);
        n.removed_by(NodeId(2), home, SEG, &mut out);
        n.on_peer_message(0, NodeId(2), None, commit.clone(), || Ok(()), &mut out);
        assert!(
            out.iter().all(|o| matches!(
                o,
                RemovalOutput::Refused {
                    from: NodeId(2),
                    ..
                }
            )),
            "{out:?}"
        );
        assert_eq!(out.len(), 3);
        out.clear();
        n.on_peer_message(0, NodeId(0), home, commit, || Ok(()), &mut out);
        assert_eq!(
            out,
            vec![RemovalOutput::Forget {
                seg: SEG,
                prepared: false
            }]
        );
    }

    #[test]
    fn a_removal_commits_once_every_node_prepared_and_its_file_is_synced() {
        let mut h = home();
        let mut out = Vec::new();
        h.start(0, ask("user", &[1, 2], true), || Ok(()), &mut out);
        let (attempt, _) = h.asked(SEG).unwrap();
        assert_eq!(sent(&out).len(), 2);
        out.clear();
        h.on_message(5, NodeId(1), prepared(attempt, Ok(())), || Ok(()), &mut out);
        assert!(out.is_empty(), "{out:?}");
        h.on_message(6, NodeId(2), prepared(attempt, Ok(())), || Ok(()), &mut out);
        assert_eq!(out, vec![RemovalOutput::Sync { seg: SEG }]);
        out.clear();
        h.sync_done(SEG, Ok(()), &mut out);
        assert_eq!(done(&out), Some(Ok(())));
        assert!(out.contains(&RemovalOutput::Forget {
            seg: SEG,
            prepared: true
        }));
        assert_eq!(sent(&out).len(), 2);
        assert!(!h.is_running(SEG));
    }

    #[test]
    fn a_refusal_a_silent_node_or_a_slow_sync_aborts_everywhere() {
        let mut h = home();
        let mut out = Vec::new();
        h.start(0, ask("a", &[1], false), || Ok(()), &mut out);
        let (attempt, _) = h.asked(SEG).unwrap();
        out.clear();
        h.on_message(
            1,
            NodeId(1),
            prepared(attempt, Err("pid 7".into())),
            || Ok(()),
            &mut out,
        );
        assert!(matches!(
            done(&out),
            Some(Err(RemovalError::Refused { .. }))
        ));
        assert!(out.contains(&RemovalOutput::Unmark { seg: SEG }));
        out.clear();
        h.start(10, ask("b", &[1], true), || Ok(()), &mut out);
        out.clear();
        h.tick(109, &mut out);
        assert!(out.is_empty());
        h.tick(110, &mut out);
        assert!(matches!(
            done(&out),
            Some(Err(RemovalError::NoAnswer { .. }))
        ));
        out.clear();
        h.start(200, ask("c", &[1], true), || Ok(()), &mut out);
        let (attempt, _) = h.asked(SEG).unwrap();
        h.on_message(
            201,
            NodeId(1),
            prepared(attempt, Ok(())),
            || Ok(()),
            &mut out,
        );
        out.clear();
        h.tick(401, &mut out);
        assert!(matches!(
            done(&out),
            Some(Err(RemovalError::SyncTooSlow { .. }))
        ));
        // The sync's late end changes nothing.
        out.clear();
        h.sync_done(SEG, Ok(()), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_node_prepares_unless_attached_and_undoes_a_prepare_left_alone() {
        let mut n: Removals<&'static str> = Removals::new(CFG, RemovalBugs::default(), 0);
        let mut out = Vec::new();
        let prepare = RemovalMsg::Prepare {
            seg: SEG,
            attempt: 4,
        };
        n.on_message(
            0,
            NodeId(0),
            prepare.clone(),
            || Err("pid 3".into()),
            &mut out,
        );
        assert!(!n.is_prepared(SEG));
        out.clear();
        n.on_message(0, NodeId(0), prepare, || Ok(()), &mut out);
        assert_eq!(n.prepared_attempt(SEG), Some(4));
        out.clear();
        // An abort of another attempt is not ours.
        let abort = RemovalMsg::Abort {
            seg: SEG,
            attempt: 3,
        };
        n.on_message(1, NodeId(0), abort, || Ok(()), &mut out);
        assert!(n.is_prepared(SEG));
        n.tick(999, &mut out);
        assert!(out.is_empty());
        n.tick(1_000, &mut out);
        assert_eq!(out, vec![RemovalOutput::Unmark { seg: SEG }]);
        out.clear();
        // A commit that comes after the prepare expired says so.
        n.on_message(
            1_001,
            NodeId(0),
            RemovalMsg::Commit { seg: SEG },
            || Ok(()),
            &mut out,
        );
        assert_eq!(
            out,
            vec![RemovalOutput::Forget {
                seg: SEG,
                prepared: false
            }]
        );
    }

    #[test]
    fn a_reconnected_node_is_asked_again_and_a_dead_one_is_not_waited_for() {
        let mut h = home();
        let mut out = Vec::new();
        h.start(0, ask("u", &[1, 2], false), || Ok(()), &mut out);
        let (attempt, _) = h.asked(SEG).unwrap();
        h.on_message(1, NodeId(1), prepared(attempt, Ok(())), || Ok(()), &mut out);
        out.clear();
        h.peer_connected(NodeId(1), &mut out);
        assert_eq!(
            sent(&out),
            vec![(NodeId(1), RemovalMsg::Prepare { seg: SEG, attempt })]
        );
        out.clear();
        h.peer_dead(2, NodeId(2), &mut out);
        assert!(done(&out).is_none(), "node 1 must prepare again");
        h.on_message(3, NodeId(1), prepared(attempt, Ok(())), || Ok(()), &mut out);
        assert_eq!(done(&out), Some(Ok(())));
    }

    #[test]
    fn the_injected_bug_commits_before_every_node_prepared() {
        let bugs = RemovalBugs {
            commit_on_first_answer: true,
        };
        let mut h: Removals<&'static str> = Removals::new(CFG, bugs, 0);
        let mut out = Vec::new();
        h.start(0, ask("u", &[1, 2], false), || Ok(()), &mut out);
        let (attempt, _) = h.asked(SEG).unwrap();
        h.on_message(1, NodeId(1), prepared(attempt, Ok(())), || Ok(()), &mut out);
        assert_eq!(done(&out), Some(Ok(())));
    }

    #[test]
    #[should_panic(expected = "prepares must outlive")]
    fn limits_that_let_a_prepare_expire_before_the_commit_are_refused() {
        let cfg = RemovalConfig {
            answer_ms: 100,
            sync_ms: 900,
            prepared_ms: 1_000,
        };
        let _: Removals<()> = Removals::new(cfg, RemovalBugs::default(), 0);
    }
}
