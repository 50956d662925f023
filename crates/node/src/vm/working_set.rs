//! A VM's working set: the image pages its faults brought in, in order (the record), and the
//! pages to push ahead of its faults (the replay). Pure: the serving thread feeds the record
//! and takes the replay's next run.

use pagemesh_proto::vm_lease::MAX_WORKING_SET_PAGES;

/// Longest run of consecutive pages one replay step pushes: small enough that a fault
/// arriving meanwhile waits at most for one such copy (64 pages, ~130 µs here when cached).
pub const REPLAY_RUN_PAGES: u64 = 64;

/// The image pages a VM's faults brought in, each once, in the order they came, bounded.
#[derive(Debug)]
pub struct Recorder {
    /// One bit per image page: recorded already.
    seen: Vec<u64>,
    pages: Vec<u64>,
    dropped: u64,
}

impl Recorder {
    /// A recorder for an image of `blocks` pages.
    pub fn new(blocks: u64) -> Recorder {
        Recorder {
            seen: vec![0; blocks.div_ceil(64) as usize],
            pages: Vec::new(),
            dropped: 0,
        }
    }

    /// Pages `[start, end)` were brought in by a fault (the faulting page first).
    pub fn add_run(&mut self, start: u64, end: u64) {
        for p in start..end {
            let (w, bit) = ((p / 64) as usize, 1u64 << (p % 64));
            let Some(word) = self.seen.get_mut(w) else {
                debug_assert!(false, "page {p} past the image");
                return;
            };
            if *word & bit != 0 {
                continue;
            }
            *word |= bit;
            if self.pages.len() < MAX_WORKING_SET_PAGES {
                self.pages.push(p);
            } else {
                self.dropped += 1;
            }
        }
        debug_assert!(self.pages.len() <= MAX_WORKING_SET_PAGES);
    }

    /// What was recorded: the pages in order, and how many more were not kept.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        (self.pages.clone(), self.dropped)
    }
}

/// The pages still to replay, consumed from the front.
#[derive(Debug, Default)]
pub struct Replay {
    pages: Vec<u64>,
    next: usize,
}

impl Replay {
    pub fn new(pages: Vec<u64>) -> Replay {
        Replay { pages, next: 0 }
    }

    pub fn is_done(&self) -> bool {
        self.next >= self.pages.len()
    }

    /// The next run to push: its first page and how many consecutive pages follow it in the
    /// list (1 to `REPLAY_RUN_PAGES`). Not consumed until `advance`.
    pub fn peek_run(&self) -> Option<(u64, u64)> {
        let first = *self.pages.get(self.next)?;
        let n = self.pages[self.next..]
            .iter()
            .zip(first..)
            .take(REPLAY_RUN_PAGES as usize)
            .take_while(|(p, want)| *p == want)
            .count() as u64;
        debug_assert!(n >= 1);
        Some((first, n))
    }

    /// Consume `n` pages of the current run.
    pub fn advance(&mut self, n: u64) {
        self.next = (self.next + n as usize).min(self.pages.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_first_arrivals_in_order_once() {
        let mut r = Recorder::new(1000);
        r.add_run(10, 13);
        r.add_run(5, 6);
        r.add_run(11, 15); // 11, 12 again: kept once, where they first came
        r.add_run(999, 1000);
        assert_eq!(r.snapshot(), (vec![10, 11, 12, 5, 13, 14, 999], 0));
    }

    #[test]
    fn the_record_is_bounded() {
        let total = MAX_WORKING_SET_PAGES as u64 + 10;
        let mut r = Recorder::new(total);
        r.add_run(0, total);
        r.add_run(0, total);
        let (pages, dropped) = r.snapshot();
        assert_eq!(pages.len(), MAX_WORKING_SET_PAGES);
        assert_eq!(dropped, 10);
    }

    #[test]
    fn replay_runs_are_consecutive_and_bounded() {
        let mut list: Vec<u64> = vec![7, 8, 9, 3, 4];
        list.extend(100..100 + REPLAY_RUN_PAGES + 5);
        let mut r = Replay::new(list);
        assert_eq!(r.peek_run(), Some((7, 3)));
        r.advance(1); // a page found present: the rest of the run comes next
        assert_eq!(r.peek_run(), Some((8, 2)));
        r.advance(2);
        assert_eq!(r.peek_run(), Some((3, 2)));
        r.advance(2);
        assert_eq!(r.peek_run(), Some((100, REPLAY_RUN_PAGES)));
        r.advance(REPLAY_RUN_PAGES);
        assert_eq!(r.peek_run(), Some((100 + REPLAY_RUN_PAGES, 5)));
        r.advance(99);
        assert!(r.is_done());
        assert_eq!(r.peek_run(), None);
    }
}
