//! Property test of the cache side: random local faults and random (current, duplicate or
//! stale) messages from the home, applied to one node and to a reference model of the cache
//! transitions; the node's outputs (in order) and its copy must match the model's exactly.

mod common;

use common::{forall, Rng};
use pagemesh_core::{
    Access, Backing, CacheState, DenyReason, Envelope, Epoch, Event, FaultId, FaultResult, Msg,
    Node, NodeConfig, Output, PageData, PageKey, ReqId, SegmentInfo, TxnId, Version, Want,
};
use pagemesh_types::{NodeId, SegmentId};

const ME: NodeId = NodeId(2);
const HOME: NodeId = NodeId(0);

#[derive(Clone, Copy, Debug)]
enum Op {
    Fault(Access),
    /// A grant: for the pending request (`current`) or a stale one.
    Grant {
        current: bool,
        state: CacheState,
        with_data: bool,
        version: u64,
    },
    /// A fetch newer than the copy, or a late duplicate of an older one.
    Fetch {
        newer: bool,
        then: CacheState,
    },
    Inval {
        newer: bool,
    },
    Deny {
        current: bool,
        mapper: bool,
    },
}

fn gen(rng: &mut Rng) -> Vec<Op> {
    let states = [
        CacheState::Shared,
        CacheState::ExclusiveClean,
        CacheState::Modified,
    ];
    (0..10 + rng.below(60))
        .map(|_| match rng.below(10) {
            0..=2 => Op::Fault(if rng.below(2) == 0 {
                Access::Read
            } else {
                Access::Write
            }),
            3..=5 => Op::Grant {
                current: rng.below(5) != 0,
                state: states[rng.below(3) as usize],
                with_data: rng.below(3) != 0,
                version: rng.below(5),
            },
            6..=7 => Op::Fetch {
                newer: rng.below(4) != 0,
                then: states[rng.below(2) as usize],
            },
            8 => Op::Inval {
                newer: rng.below(4) != 0,
            },
            _ => Op::Deny {
                current: rng.below(3) != 0,
                mapper: rng.below(3) == 0,
            },
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    fault: FaultId,
    access: Access,
    late: bool,
}

/// The reference: the cache transition rules, written out plainly.
#[derive(Default)]
struct RefCache {
    copy: Option<(CacheState, Version, TxnId)>,
    pending: Option<(ReqId, Vec<Waiter>)>,
    next_req: u64,
    out: Vec<Output>,
}

fn page() -> PageKey {
    PageKey::new(SegmentId(0), 0)
}

fn env(msg: Msg) -> Envelope {
    Envelope {
        from: ME,
        from_epoch: Epoch(1),
        to: HOME,
        to_epoch: Epoch(1),
        msg,
    }
}

fn satisfies(copy: Option<(CacheState, Version, TxnId)>, a: Access) -> bool {
    match copy {
        None => false,
        Some(_) if a == Access::Read => true,
        Some((s, _, _)) => s == CacheState::Modified,
    }
}

impl RefCache {
    fn send(&mut self, msg: Msg) {
        self.out.push(Output::Send(env(msg)));
    }

    fn acquire(&mut self, want: Want, waiters: Vec<Waiter>) {
        self.next_req += 1;
        let req = ReqId(self.next_req);
        let have = self.copy.map(|(_, v, g)| (v, g));
        self.send(Msg::Acquire {
            page: page(),
            req,
            want,
            have,
        });
        self.pending = Some((req, waiters));
    }

    fn fault(&mut self, fault: FaultId, access: Access) {
        if satisfies(self.copy, access) {
            self.out.push(Output::FaultDone {
                fault,
                page: page(),
                result: FaultResult::Ok,
            });
        } else if let Some((_, w)) = &mut self.pending {
            w.push(Waiter {
                fault,
                access,
                late: true,
            });
        } else {
            let want = if access == Access::Read {
                Want::Shared
            } else {
                Want::Exclusive
            };
            self.acquire(
                want,
                vec![Waiter {
                    fault,
                    access,
                    late: false,
                }],
            );
        }
    }

    fn grant(
        &mut self,
        req: ReqId,
        txn: TxnId,
        version: Version,
        state: CacheState,
        data: Option<PageData>,
    ) {
        let Some((preq, waiters)) = self.pending.clone().filter(|(r, _)| *r == req) else {
            self.send(Msg::GrantAck { page: page(), txn });
            return;
        };
        let _ = preq;
        match data {
            Some(d) => {
                if self.copy.is_some() {
                    self.out.push(Output::Invalidate { page: page() });
                }
                self.out.push(Output::Install {
                    page: page(),
                    data: d,
                    writable: state == CacheState::Modified,
                });
            }
            None => match self.copy {
                None => {
                    self.out.push(Output::Event(Event::ProtocolError {
                        what: format!(
                            "{}: grant txn{} without data but this node holds no copy",
                            page(),
                            txn.0
                        ),
                    }));
                    return;
                }
                Some((s, _, _)) => {
                    if state == CacheState::Modified && s != CacheState::Modified {
                        self.out.push(Output::Unprotect { page: page() });
                    }
                }
            },
        }
        self.copy = Some((state, version, txn));
        self.send(Msg::GrantAck { page: page(), txn });
        self.pending = None;
        let mut left = Vec::new();
        for w in waiters {
            if satisfies(self.copy, w.access) {
                self.out.push(Output::FaultDone {
                    fault: w.fault,
                    page: page(),
                    result: FaultResult::Ok,
                });
            } else {
                left.push(w);
            }
        }
        if !left.is_empty() {
            self.acquire(Want::Exclusive, left);
        }
    }

    fn fetch(&mut self, txn: TxnId, then: CacheState) {
        let Some((s, v, g)) = self.copy else {
            self.send(Msg::FetchReply {
                page: page(),
                txn,
                copy: None,
            });
            return;
        };
        if g >= txn {
            return;
        }
        let next = match (s, then) {
            (CacheState::Modified | CacheState::ExclusiveClean, CacheState::ExclusiveClean) => {
                CacheState::ExclusiveClean
            }
            _ => CacheState::Shared,
        };
        if s == CacheState::Modified {
            self.out.push(Output::Downgrade { page: page() });
        }
        self.copy = Some((next, v, g));
        self.send(Msg::FetchReply {
            page: page(),
            txn,
            copy: Some((v, PageData::Local)),
        });
    }

    fn inval(&mut self, txn: TxnId) {
        match self.copy {
            Some((_, _, g)) if g >= txn => return,
            Some(_) => {
                self.copy = None;
                self.out.push(Output::Invalidate { page: page() });
            }
            None => {}
        }
        self.send(Msg::InvalAck { page: page(), txn });
    }

    fn deny(&mut self, req: ReqId, reason: DenyReason) {
        let Some((_, waiters)) = self.pending.clone().filter(|(r, _)| *r == req) else {
            return;
        };
        self.pending = None;
        let (late, early): (Vec<Waiter>, Vec<Waiter>) = waiters.into_iter().partition(|w| w.late);
        for w in early {
            self.out.push(Output::FaultDone {
                fault: w.fault,
                page: page(),
                result: match reason {
                    DenyReason::Poisoned => FaultResult::Poisoned,
                    DenyReason::MapperFailed => FaultResult::MapperFailed,
                },
            });
        }
        if !late.is_empty() {
            let want = if late.iter().any(|w| w.access == Access::Write) {
                Want::Exclusive
            } else {
                Want::Shared
            };
            let late = late
                .into_iter()
                .map(|w| Waiter { late: false, ..w })
                .collect();
            self.acquire(want, late);
        }
    }
}

fn check(ops: &[Op]) -> Result<(), String> {
    let seg = SegmentInfo {
        id: SegmentId(0),
        home: HOME,
        pages: 4,
        backing: Backing::Zero,
    };
    let mut node = Node::new(
        NodeConfig::new(ME, Epoch(1), vec![HOME, NodeId(1), ME]),
        &[seg],
    );
    let home_env = |msg: Msg| Envelope {
        from: HOME,
        from_epoch: Epoch(1),
        to: ME,
        to_epoch: Epoch(1),
        msg,
    };
    node.step(0, home_env(Msg::Hello));
    let _ = node.take_outputs();
    let mut model = RefCache::default();
    let mut next_txn = 10u64;
    let mut next_fault = 0u64;
    for (n, op) in ops.iter().enumerate() {
        let grant_of_copy = model.copy.map_or(TxnId(0), |(_, _, g)| g);
        let pending_req = model.pending.as_ref().map(|(r, _)| *r);
        let msg = match *op {
            Op::Fault(access) => {
                next_fault += 1;
                node.fault(0, FaultId(next_fault), page(), access);
                model.fault(FaultId(next_fault), access);
                None
            }
            Op::Grant {
                current,
                state,
                with_data,
                version,
            } => {
                next_txn += 1;
                let req = match (current, pending_req) {
                    (true, Some(r)) => r,
                    (_, Some(r)) => ReqId(r.0.saturating_sub(1)),
                    (_, None) => ReqId(model.next_req),
                };
                let data = with_data.then(|| PageData::Bytes(version.to_le_bytes().to_vec()));
                let (txn, v) = (TxnId(next_txn), Version(version));
                model.grant(req, txn, v, state, data.clone());
                Some(Msg::Grant {
                    page: page(),
                    req,
                    txn,
                    version: v,
                    state,
                    data,
                })
            }
            Op::Fetch { newer, then } => {
                let txn = if newer {
                    next_txn += 1;
                    TxnId(next_txn)
                } else {
                    grant_of_copy
                };
                model.fetch(txn, then);
                Some(Msg::Fetch {
                    page: page(),
                    txn,
                    then,
                })
            }
            Op::Inval { newer } => {
                let txn = if newer {
                    next_txn += 1;
                    TxnId(next_txn)
                } else {
                    grant_of_copy
                };
                model.inval(txn);
                Some(Msg::Inval { page: page(), txn })
            }
            Op::Deny { current, mapper } => {
                let reason = if mapper {
                    DenyReason::MapperFailed
                } else {
                    DenyReason::Poisoned
                };
                let req = match (current, pending_req) {
                    (true, Some(r)) => r,
                    (_, Some(r)) => ReqId(r.0.saturating_sub(1)),
                    (_, None) => ReqId(model.next_req),
                };
                model.deny(req, reason);
                Some(Msg::Deny {
                    page: page(),
                    req,
                    reason,
                })
            }
        };
        if let Some(m) = msg {
            node.step(0, home_env(m));
        }
        let got = node.take_outputs();
        let want = std::mem::take(&mut model.out);
        if got != want {
            return Err(format!(
                "op {n} {op:?}: outputs differ\n node:  {got:?}\n model: {want:?}"
            ));
        }
        let got_copy = node.copy(page()).map(|c| (c.state, c.version, c.grant));
        if got_copy != model.copy {
            return Err(format!(
                "op {n} {op:?}: node holds {got_copy:?}, model {:?}",
                model.copy
            ));
        }
    }
    Ok(())
}

#[test]
fn cache_transitions_match_the_reference_model() {
    forall(5000, gen, check);
}
