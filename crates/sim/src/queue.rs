//! The event queue of a simulated world: events in simulated time, ties in the order they were
//! scheduled (so a seed replays exactly).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Events by due time; an event taken out early (`take_where`) is skipped when its time comes.
#[derive(Debug)]
pub(crate) struct EventQueue<E> {
    next_id: u64,
    due: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, E>,
}

impl<E> EventQueue<E> {
    pub(crate) fn new() -> EventQueue<E> {
        EventQueue {
            next_id: 0,
            due: BinaryHeap::new(),
            events: BTreeMap::new(),
        }
    }

    /// Schedule `ev` at time `at_ms`.
    pub(crate) fn push(&mut self, at_ms: u64, ev: E) {
        self.next_id += 1;
        self.due.push(Reverse((at_ms, self.next_id)));
        self.events.insert(self.next_id, ev);
    }

    /// The next event due and its time.
    pub(crate) fn pop(&mut self) -> Option<(u64, E)> {
        while let Some(Reverse((t, id))) = self.due.pop() {
            if let Some(ev) = self.events.remove(&id) {
                return Some((t, ev));
            }
        }
        None
    }

    /// The events still pending, in the order they were scheduled.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &E> {
        self.events.values()
    }

    /// Take out (in the order they were scheduled) the pending events `pred` picks.
    pub(crate) fn take_where(&mut self, pred: impl Fn(&E) -> bool) -> Vec<E> {
        let ids: Vec<u64> = self
            .events
            .iter()
            .filter(|(_, ev)| pred(ev))
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| self.events.remove(id)).collect()
    }
}
