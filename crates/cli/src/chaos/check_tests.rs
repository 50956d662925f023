//! Hand-made histories the checker must accept or reject.

use super::*;
use crate::chaos::history::{Config, Event, Life};

/// A history of one segment of four pages; worker `w` runs on node `w` unless said otherwise.
struct H(History);

fn ok(kind: Kind, worker: u32, page: u64, version: u64, start_ns: u64, end_ns: u64) -> Op {
    Op {
        worker,
        incarnation: 1,
        node: worker,
        kind,
        seg: 0,
        page,
        version,
        tag: if version == 0 { 0 } else { tag(0, page) },
        last: version,
        start_ns,
        end_ns,
        outcome: Outcome::Ok,
    }
}

impl H {
    fn new() -> H {
        let mut h = History {
            config: Config {
                fault_timeout_ms: 10_000,
                dead_after_ms: 1_000,
                segments: 1,
                pages: 4,
            },
            ..History::default()
        };
        for w in 1..=3 {
            h.lives.insert(
                (w, 1),
                Life {
                    node: w,
                    start_ns: 0,
                    end_ns: None,
                    exit_code: None,
                },
            );
        }
        H(h)
    }
    fn write(mut self, worker: u32, page: u64, v: u64, s: u64, e: u64) -> H {
        self.0.ops.push(ok(Kind::Write, worker, page, v, s, e));
        self
    }
    fn read(mut self, worker: u32, page: u64, v: u64, s: u64, e: u64) -> H {
        self.0.ops.push(ok(Kind::Read, worker, page, v, s, e));
        self
    }
    fn op(mut self, op: Op) -> H {
        self.0.ops.push(op);
        self
    }
    fn sigbus(self, kind: Kind, worker: u32, page: u64, s: u64, e: u64) -> H {
        let mut op = ok(kind, worker, page, 0, s, e);
        op.outcome = Outcome::Sigbus;
        self.op(op)
    }
    fn sync(self, worker: u32, s: u64, e: u64) -> H {
        self.op(ok(Kind::Sync, worker, 0, 0, s, e))
    }
    fn node(mut self, node: u32, what: NodeEvent, at_ns: u64) -> H {
        self.0.events.push(Event { node, what, at_ns });
        self
    }
    fn clear(mut self, s: u64, e: u64, pages: u64) -> H {
        self.0.clears.push(Clear {
            seg: 0,
            start_ns: s,
            end_ns: e,
            pages: Some(pages),
        });
        self
    }
    fn violations(&self) -> Vec<String> {
        check(&self.0).violations
    }
    fn assert_ok(&self) -> Counts {
        let r = check(&self.0);
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        r.counts
    }
    fn assert_rejected(&self, says: &str) {
        let v = self.violations();
        assert!(
            v.iter().any(|m| m.contains(says)),
            "expected {says:?} in {v:#?}"
        );
    }
}

#[test]
fn reads_of_the_latest_or_a_concurrent_write_are_accepted() {
    let c = H::new()
        .read(2, 0, 0, 1, 2) // before any write: zeros
        .write(1, 0, 1, 10, 20)
        .read(2, 0, 1, 30, 40)
        .write(1, 0, 2, 50, 60)
        .read(3, 0, 1, 55, 58) // concurrent with version 2: either is right
        .read(3, 0, 2, 59, 65)
        .read(2, 0, 2, 70, 80)
        .assert_ok();
    assert_eq!((c.reads_ok, c.writes_ok, c.reads_zero), (5, 2, 1));
}

#[test]
fn a_stale_read_is_rejected() {
    H::new()
        .write(1, 0, 1, 10, 20)
        .write(1, 0, 2, 50, 60)
        .read(2, 0, 1, 70, 80)
        .assert_rejected("a stale value (1) after worker 1.1 on node 1: write of version 2");
}

#[test]
fn a_zero_read_after_an_acknowledged_write_is_rejected() {
    H::new()
        .write(1, 0, 1, 10, 20)
        .read(2, 0, 0, 30, 40)
        .assert_rejected("returned zeros");
}

#[test]
fn a_value_from_the_future_a_torn_page_and_another_pages_data_are_rejected() {
    H::new()
        .write(1, 0, 2, 100, 110)
        .read(2, 0, 2, 50, 60)
        .assert_rejected("which no write had stored");
    let mut torn = ok(Kind::Read, 2, 0, 1, 30, 40);
    torn.last = 0;
    H::new()
        .write(1, 0, 1, 10, 20)
        .op(torn)
        .assert_rejected("torn");
    let mut other = ok(Kind::Read, 2, 0, 1, 30, 40);
    other.tag = tag(0, 1);
    H::new()
        .write(1, 0, 1, 10, 20)
        .op(other)
        .assert_rejected("not the page's tag");
}

#[test]
fn unsynced_data_of_a_killed_node_may_be_poisoned_then_cleared_to_older_data() {
    let c = H::new()
        .write(1, 0, 1, 10, 20)
        .sync(2, 25, 30)
        .write(1, 0, 2, 40, 45)
        .node(1, NodeEvent::Kill, 50)
        .sigbus(Kind::Read, 2, 0, 65, 66)
        .node(1, NodeEvent::Up, 70)
        .clear(80, 90, 1)
        .read(3, 0, 1, 100, 110) // version 2 was lost; version 1 was synced
        .assert_ok();
    assert_eq!(
        (c.sigbus_poisoned, c.reads_reverted, c.writes_durable),
        (1, 1, 1)
    );
}

#[test]
fn a_synced_value_lost_with_a_node_is_rejected() {
    let h = H::new()
        .write(1, 0, 1, 10, 20)
        .sync(2, 25, 30)
        .node(1, NodeEvent::Kill, 50)
        .node(1, NodeEvent::Up, 70)
        .clear(80, 90, 1)
        .read(3, 0, 0, 100, 110);
    h.assert_rejected("returned zeros (0) after worker 1.1 on node 1: write of version 1");
    h.assert_rejected("(synced)");
    h.assert_rejected("cleared 1 page(s), but only 0 could have been lost");
}

#[test]
fn a_read_older_than_a_lost_write_needs_a_clear_poison_in_between() {
    // Without a clear, lost data reads as SIGBUS, never as older data.
    H::new()
        .write(1, 0, 1, 10, 20)
        .sync(2, 25, 30)
        .write(1, 0, 2, 40, 45)
        .node(1, NodeEvent::Kill, 50)
        .node(1, NodeEvent::Up, 70)
        .read(3, 0, 1, 100, 110)
        .assert_rejected("a stale value");
}

#[test]
fn poison_of_a_synced_page_or_without_a_death_is_rejected() {
    H::new()
        .write(1, 0, 1, 10, 20)
        .sync(2, 25, 30)
        .node(1, NodeEvent::Kill, 50)
        .node(1, NodeEvent::Up, 60)
        .sigbus(Kind::Read, 2, 0, 65, 66)
        .assert_rejected("SIGBUS, but the page was not poisonable");
    H::new()
        .write(1, 0, 1, 10, 20)
        .sigbus(Kind::Read, 2, 0, 30, 40)
        .assert_rejected("SIGBUS, but the page was not poisonable");
    // A clear after the death, before the read, cleared that poison.
    H::new()
        .write(1, 0, 1, 10, 20)
        .node(1, NodeEvent::Kill, 50)
        .node(1, NodeEvent::Up, 60)
        .clear(70, 80, 1)
        .sigbus(Kind::Read, 2, 0, 90, 95)
        .assert_rejected("SIGBUS, but the page was not poisonable");
}

#[test]
fn sigbus_when_the_own_node_dies_or_after_the_fault_timeout_is_accepted() {
    let c = H::new()
        .write(1, 0, 1, 10, 20)
        .sync(1, 25, 30)
        .node(2, NodeEvent::Kill, 50)
        .sigbus(Kind::Read, 2, 0, 45, 55)
        .sigbus(Kind::Write, 3, 1, 100, 100 + 9_500_000_000)
        .assert_ok();
    assert_eq!((c.sigbus_daemon_lost, c.sigbus_timeout), (1, 1));
}

#[test]
fn writes_a_stopped_node_made_before_it_was_fenced_may_be_lost() {
    // Node 1 stopped at 50 and fenced: the write it acknowledged at 60 (a page it held
    // writable) is gone with it.
    let c = H::new()
        .write(1, 0, 1, 10, 20)
        .sync(2, 25, 30)
        .node(1, NodeEvent::Stop, 50)
        .write(1, 0, 2, 55, 60)
        .node(1, NodeEvent::Cont, 80)
        .node(1, NodeEvent::Exit(3), 90)
        .sigbus(Kind::Read, 3, 0, 70, 95)
        .node(1, NodeEvent::Up, 100)
        .clear(110, 120, 1)
        .read(2, 0, 1, 130, 140)
        .assert_ok();
    assert_eq!((c.stops, c.fenced_exits, c.deaths), (1, 1, 1));
}

#[test]
fn a_stopped_nodes_reader_must_not_return_a_value_the_cluster_overwrote() {
    // Node 3 is stopped; the others declare it dead and node 1 writes version 2. A read on
    // node 3 that began after that write returned version 1: stale, whatever happened next.
    H::new()
        .write(1, 0, 1, 10, 20)
        .read(3, 0, 1, 30, 40)
        .node(3, NodeEvent::Stop, 50)
        .write(1, 0, 2, 300, 310)
        .read(3, 0, 1, 400, 410)
        .node(3, NodeEvent::Cont, 450)
        .node(3, NodeEvent::Exit(3), 500)
        .assert_rejected("a stale value (1)");
}

#[test]
fn a_daemon_that_ends_other_than_killed_or_fenced_is_rejected() {
    H::new()
        .node(2, NodeEvent::Exit(70), 10)
        .assert_rejected("exited with code 70");
    let c = H::new().node(2, NodeEvent::Exit(3), 10).assert_ok();
    assert_eq!(c.unprovoked_fences, 1);
}
