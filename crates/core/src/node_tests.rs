//! Tests of `node.rs` (kept apart so the module stays readable).

use super::*;
use crate::config::{Backing, Timing};
use crate::ids::{CacheState, Version};

fn seg(home: u32) -> SegmentInfo {
    SegmentInfo {
        id: SegmentId(1),
        home: NodeId(home),
        pages: 8,
        backing: Backing::Zero,
    }
}

fn node(id: u32, home: u32, epoch: u64) -> Node {
    let mut cfg = NodeConfig::new(NodeId(id), Epoch(epoch), vec![NodeId(0), NodeId(1)]);
    cfg.timing = Timing {
        retry_ms: 10,
        fault_timeout_ms: 100,
    };
    Node::new(cfg, &[seg(home)])
}

/// Start `n`, a home at epoch 2 (it rebuilds): the token of its write-intent read.
fn restart_home(n: &mut Node) -> crate::ids::MapperToken {
    n.start(0);
    n.take_outputs()
        .iter()
        .find_map(|o| match o {
            Output::IntentRead { token, .. } => Some(*token),
            _ => None,
        })
        .expect("the home reads its write intents")
}

fn page() -> PageKey {
    PageKey::new(SegmentId(1), 3)
}

/// Deliver every message a single node sends itself until none is left.
fn loopback(n: &mut Node, now: u64) -> Vec<Output> {
    let mut seen = Vec::new();
    loop {
        let outs = n.take_outputs();
        if outs.is_empty() {
            return seen;
        }
        for o in outs {
            match o {
                Output::Send(e) if e.to == n.id() => n.step(now, e),
                Output::IntentWrite { token, .. } => n.intent_write_done(now, token, Ok(())),
                other => seen.push(other),
            }
        }
    }
}

#[test]
fn a_dormant_page_is_zero_filled_by_the_local_home() {
    let mut n = node(0, 0, 1);
    n.fault(0, FaultId(1), page(), Access::Write);
    let outs = loopback(&mut n, 0);
    assert!(outs.contains(&Output::Install {
        page: page(),
        data: PageData::Zero,
        writable: true
    }));
    assert!(outs.contains(&Output::FaultDone {
        fault: FaultId(1),
        page: page(),
        result: FaultResult::Ok
    }));
    let c = n.copy(page()).expect("installed");
    assert_eq!((c.state, c.version), (CacheState::Modified, Version(1)));
    assert!(n.is_idle());
    // A second write is a local hit.
    n.fault(0, FaultId(2), page(), Access::Write);
    assert_eq!(
        n.take_outputs(),
        vec![Output::FaultDone {
            fault: FaultId(2),
            page: page(),
            result: FaultResult::Ok
        }]
    );
}

#[test]
fn an_unanswered_fault_times_out_but_the_request_stays() {
    let mut n = node(1, 0, 1);
    n.fault(0, FaultId(1), page(), Access::Read);
    assert!(matches!(n.take_outputs()[..], [Output::Send(_)]));
    n.tick(10);
    let resent = n.take_outputs();
    assert!(matches!(
        resent[..],
        [Output::Send(Envelope {
            msg: Msg::Acquire { .. },
            ..
        })]
    ));
    n.tick(100);
    assert!(n.take_outputs().contains(&Output::FaultDone {
        fault: FaultId(1),
        page: page(),
        result: FaultResult::TimedOut
    }));
    assert!(!n.is_idle(), "the protocol request outlives the local wait");
    assert_eq!(n.coverage().count(Branch::FaultTimedOut), 1);
}

#[test]
fn a_fault_outside_every_segment_is_refused() {
    let mut n = node(1, 0, 1);
    n.fault(0, FaultId(9), PageKey::new(SegmentId(7), 0), Access::Read);
    n.fault(0, FaultId(10), PageKey::new(SegmentId(1), 8), Access::Read);
    let outs = n.take_outputs();
    assert_eq!(outs.len(), 2);
    assert!(outs.iter().all(|o| matches!(
        o,
        Output::FaultDone {
            result: FaultResult::UnknownSegment,
            ..
        }
    )));
}

#[test]
fn epochs_drop_stale_senders_and_answer_old_incarnations() {
    let mut n = node(0, 0, 2);
    let hello = |from_epoch, to_epoch| Envelope {
        from: NodeId(1),
        from_epoch: Epoch(from_epoch),
        to: NodeId(0),
        to_epoch: Epoch(to_epoch),
        msg: Msg::Hello,
    };
    n.step(0, hello(3, 2));
    assert!(n.take_outputs().is_empty());
    // A message from node1's earlier incarnation is dropped.
    n.step(0, hello(2, 2));
    assert_eq!(n.coverage().count(Branch::StaleEpochDropped), 1);
    // A request for this node's earlier incarnation is answered with a Hello.
    let old = Envelope {
        msg: Msg::SyncReq {
            seg: SegmentId(1),
            req: crate::ids::ReqId(1),
        },
        ..hello(3, 1)
    };
    n.step(0, old);
    let outs = n.take_outputs();
    assert!(matches!(
        &outs[..],
        [Output::Send(Envelope {
            msg: Msg::Hello,
            to: NodeId(1),
            to_epoch: Epoch(3),
            ..
        })]
    ));
}

#[test]
fn a_newer_epoch_voids_what_the_peer_held() {
    let mut n = node(0, 0, 1);
    let from1 = |epoch, msg| Envelope {
        from: NodeId(1),
        from_epoch: Epoch(epoch),
        to: NodeId(0),
        to_epoch: Epoch(1),
        msg,
    };
    n.step(
        0,
        from1(
            1,
            Msg::Acquire {
                page: page(),
                req: crate::ids::ReqId(1),
                want: crate::ids::Want::Exclusive,
                have: None,
            },
        ),
    );
    // The home records the write intent durably before granting.
    let intent = n.take_outputs();
    let Some(Output::IntentWrite { token, .. }) = intent.first() else {
        panic!("expected a write intent first, got {intent:?}");
    };
    n.intent_write_done(0, *token, Ok(()));
    let grant = n.take_outputs();
    let Some(Output::Send(Envelope {
        msg: Msg::Grant { txn, .. },
        ..
    })) = grant.first()
    else {
        panic!("expected a grant, got {grant:?}");
    };
    n.step(
        0,
        from1(
            1,
            Msg::GrantAck {
                page: page(),
                txn: *txn,
            },
        ),
    );
    assert_eq!(n.dir_page(page()).and_then(|d| d.owner), Some(NodeId(1)));
    // node1 restarts: its Modified copy is gone and nothing else holds version 1.
    n.step(0, from1(2, Msg::Hello));
    let outs = n.take_outputs();
    assert!(outs.contains(&Output::Event(Event::PagePoisoned {
        page: page(),
        lost_with: Some(NodeId(1))
    })));
    let d = n.dir_page(page()).expect("entry");
    assert!(d.poisoned && d.owner.is_none());
}

#[test]
fn a_peer_declared_dead_is_fenced_and_its_pages_poisoned() {
    let mut n = node(0, 0, 1);
    let from1 = |epoch, msg| Envelope {
        from: NodeId(1),
        from_epoch: Epoch(epoch),
        to: NodeId(0),
        to_epoch: Epoch(1),
        msg,
    };
    n.step(
        0,
        from1(
            1,
            Msg::Acquire {
                page: page(),
                req: crate::ids::ReqId(1),
                want: crate::ids::Want::Exclusive,
                have: None,
            },
        ),
    );
    let outs = n.take_outputs();
    let Some(Output::IntentWrite { token, .. }) = outs.first() else {
        panic!("expected a write intent, got {outs:?}");
    };
    n.intent_write_done(0, *token, Ok(()));
    let grant = n.take_outputs();
    let Some(Output::Send(Envelope {
        msg: Msg::Grant { txn, .. },
        ..
    })) = grant.first()
    else {
        panic!("expected a grant, got {grant:?}");
    };
    n.step(
        0,
        from1(
            1,
            Msg::GrantAck {
                page: page(),
                txn: *txn,
            },
        ),
    );
    n.peer_dead(5, NodeId(1));
    assert!(n
        .take_outputs()
        .contains(&Output::Event(Event::PagePoisoned {
            page: page(),
            lost_with: Some(NodeId(1))
        })));
    assert_eq!(n.peer_epoch(NodeId(1)), Epoch(2));
    // The fenced incarnation is not heard any more...
    n.step(6, from1(1, Msg::Evict { page: page() }));
    assert_eq!(n.coverage().count(Branch::StaleEpochDropped), 1);
    // ...but its restart is, without dropping anything twice.
    n.step(7, from1(2, Msg::Hello));
    assert!(n.take_outputs().is_empty());
    // Segments added later get a directory here when this node is their home.
    let mut info = seg(0);
    info.id = SegmentId(2);
    assert_eq!(n.add_segment(info), Ok(()));
    assert_eq!(n.add_segment(info), Ok(()));
    info.pages = 9;
    assert!(n.add_segment(info).is_err());
    assert_eq!(n.segments().count(), 2);
}

#[test]
fn a_restarted_home_does_not_void_the_holdings_of_a_peer_it_never_heard() {
    // The home restarts while node1 (epoch 1, holding page 3 in M, granted by the home's
    // first incarnation) is cut off, and membership declares node1 dead before the home
    // heard from it. Its epoch is unknown here, so nothing can fence it: the rebuild must
    // go on waiting for its holdings rather than poison page 3 and reuse it while node1,
    // still alive and accepted, writes to its copy.
    let mut n = node(0, 0, 2);
    let token = restart_home(&mut n);
    n.intents_read_done(0, token, Ok(vec![3]));
    n.peer_dead(5, NodeId(1));
    let outs = n.take_outputs();
    assert!(
        !outs.iter().any(|o| matches!(
            o,
            Output::Event(Event::PagePoisoned { .. } | Event::Recovered { .. })
        )),
        "{outs:?}"
    );
    assert_eq!(n.peer_epoch(NodeId(1)), Epoch(0));
    assert_eq!(n.coverage().count(Branch::PeerDeadUnknownEpoch), 1);
    assert!(!n.is_idle(), "the rebuild still waits for node1");
    // The partition heals: node1's incarnation 1 answers and its copy counts.
    n.step(
        10,
        Envelope {
            from: NodeId(1),
            from_epoch: Epoch(1),
            to: NodeId(0),
            to_epoch: Epoch(2),
            msg: Msg::Holdings {
                seg: SegmentId(1),
                snapshot: 1,
                part: 0,
                parts: 1,
                copies: vec![(3, CacheState::Modified, Version(4), crate::ids::TxnId(9))],
            },
        },
    );
    assert!(n.take_outputs().contains(&Output::Event(Event::Recovered {
        seg: SegmentId(1),
        poisoned: 0
    })));
    let d = n.dir_page(page()).expect("entry");
    assert_eq!(
        (d.owner, d.version, d.poisoned),
        (Some(NodeId(1)), Version(4), false)
    );
    // Once heard, a declaration fences that incarnation and voids its copy as usual.
    n.peer_dead(20, NodeId(1));
    assert_eq!(n.peer_epoch(NodeId(1)), Epoch(2));
    assert!(n.dir_page(page()).expect("entry").poisoned);
}

#[test]
fn a_reloaded_fence_drops_the_old_incarnation_but_greets_a_newer_one_as_new() {
    let mut n = node(0, 0, 2);
    n.fence(NodeId(1), Epoch(3));
    let from1 = |epoch| Envelope {
        from: NodeId(1),
        from_epoch: Epoch(epoch),
        to: NodeId(0),
        to_epoch: Epoch(0),
        msg: Msg::Hello,
    };
    n.step(0, from1(2));
    assert_eq!(n.coverage().count(Branch::StaleEpochDropped), 1);
    // Epoch 4 is first contact: nothing it holds is voided (no restart event).
    n.step(0, from1(4));
    assert!(!n
        .take_outputs()
        .iter()
        .any(|o| matches!(o, Output::Event(Event::PeerRestarted { .. }))));
    assert_eq!(n.peer_epoch(NodeId(1)), Epoch(4));
}

#[test]
fn a_restarted_home_rebuilds_from_holdings_and_intents() {
    let mut n = node(0, 0, 2);
    n.start(0);
    let outs = n.take_outputs();
    let token = outs
        .iter()
        .find_map(|o| match o {
            Output::IntentRead { token, .. } => Some(*token),
            _ => None,
        })
        .expect("the home reads its write intents");
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Send(Envelope {
            msg: Msg::Recover { .. },
            to: NodeId(1),
            ..
        })
    )));
    let from1 = |msg| Envelope {
        from: NodeId(1),
        from_epoch: Epoch(1),
        to: NodeId(0),
        to_epoch: Epoch(2),
        msg,
    };
    // Requests wait for the rebuild (the node retransmits them).
    n.step(
        0,
        from1(Msg::Acquire {
            page: PageKey::new(SegmentId(1), 5),
            req: crate::ids::ReqId(1),
            want: crate::ids::Want::Shared,
            have: None,
        }),
    );
    assert!(n.take_outputs().is_empty());
    n.intents_read_done(0, token, Ok(vec![3, 4]));
    n.step(
        0,
        from1(Msg::Holdings {
            seg: SegmentId(1),
            snapshot: 1,
            part: 0,
            parts: 1,
            copies: vec![(4, CacheState::Modified, Version(7), crate::ids::TxnId(9))],
        }),
    );
    let outs = n.take_outputs();
    assert!(outs.contains(&Output::Event(Event::Recovered {
        seg: SegmentId(1),
        poisoned: 1
    })));
    let lost = n.dir_page(PageKey::new(SegmentId(1), 3)).expect("entry");
    assert!(lost.poisoned, "an intent and no surviving copy: poisoned");
    let kept = n.dir_page(PageKey::new(SegmentId(1), 4)).expect("entry");
    assert_eq!((kept.owner, kept.version), (Some(NodeId(1)), Version(7)));
    assert!(kept.durable < kept.version && !kept.poisoned);
    assert!(n.is_idle());
}

/// A restarted home takes a node's holdings reported in parts: out of order, duplicated, and
/// an older report's late parts never mixed with a newer one's.
#[test]
fn a_rebuild_takes_holdings_in_parts_of_one_report_only() {
    let mut n = node(0, 0, 2);
    let token = restart_home(&mut n);
    n.intents_read_done(0, token, Ok(vec![3, 4, 5]));
    let part = |snapshot, part, page, v| Envelope {
        from: NodeId(1),
        from_epoch: Epoch(1),
        to: NodeId(0),
        to_epoch: Epoch(2),
        msg: Msg::Holdings {
            seg: SegmentId(1),
            snapshot,
            part,
            parts: 3,
            copies: vec![(page, CacheState::Modified, Version(v), crate::ids::TxnId(9))],
        },
    };
    let recovered = |n: &mut Node| {
        n.take_outputs()
            .iter()
            .any(|o| matches!(o, Output::Event(Event::Recovered { .. })))
    };
    // Report 1: parts 2 and 0 come (part 0 twice); not complete.
    n.step(1, part(1, 2, 5, 7));
    n.step(2, part(1, 0, 3, 7));
    n.step(3, part(1, 0, 3, 7));
    assert!(!recovered(&mut n), "rebuilt before every part came");
    // A newer report replaces it; a late part of the older one is dropped.
    n.step(4, part(2, 1, 4, 8));
    n.step(5, part(1, 1, 4, 7));
    n.step(6, part(2, 0, 3, 8));
    assert!(!recovered(&mut n));
    n.step(7, part(2, 2, 5, 8));
    assert!(recovered(&mut n), "every part of report 2 is in");
    for p in [3, 4, 5] {
        let d = n.dir_page(PageKey::new(SegmentId(1), p)).expect("entry");
        assert_eq!(
            (d.owner, d.version, d.poisoned),
            (Some(NodeId(1)), Version(8), false),
            "page {p}"
        );
    }
    assert_eq!(n.coverage().count(Branch::HoldingsSnapshotReplaced), 1);
}
