//! How far one fault reaches: the run of pages a fault installs or maps around itself, sized per
//! stream of accesses the way Linux sizes its readahead windows.
//!
//! Each attachment keeps a few streams (a process may scan several regions at once, one per
//! thread). A fault at the page a stream expects next continues it, and the stream's window
//! doubles, up to [`MAX_RUN_PAGES`] (2 MiB); a fault anywhere else starts a new stream (taking the
//! place of the least recently used one) with a window of [`MIN_RUN_PAGES`]. So a sequential
//! writer of a fresh segment takes 1 + log2(512) faults for its first 2 MiB and one fault per
//! 2 MiB after that, while a random writer gets exactly the page it touched: no memory is spent
//! on speculation that nothing supports.

use std::sync::Mutex;

/// The window of a new stream: the faulting page alone.
pub const MIN_RUN_PAGES: u64 = 1;
/// The largest window (2 MiB of 4 KiB pages).
pub const MAX_RUN_PAGES: u64 = 512;
/// Streams tracked per attachment.
const STREAMS: usize = 8;

#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    /// The page a continuing access faults on next (the end of the last run).
    next: u64,
    /// The page the current run starts at (set by `window`, matched by `served`).
    start: u64,
    /// The window of the current run; 0 for an unused slot.
    window: u64,
    /// When the stream was last used (a counter per attachment), for replacement.
    used: u64,
}

impl Stream {
    /// Whether a fault at `page` is within one window of what this stream covers.
    fn near(&self, page: u64) -> bool {
        self.window > 0
            && page >= self.start.saturating_sub(self.window)
            && page < self.next.saturating_add(self.window)
    }
}

#[derive(Debug, Default)]
struct Table {
    streams: [Stream; STREAMS],
    clock: u64,
}

/// The access streams of one attachment.
#[derive(Debug, Default)]
pub struct Streams {
    table: Mutex<Table>,
}

impl Streams {
    /// The window, in pages, for a fault at `page` (the faulting page included): twice the
    /// stream's last window if the fault continues a stream, [`MIN_RUN_PAGES`] for a new one.
    /// Always between `MIN_RUN_PAGES` and `MAX_RUN_PAGES`.
    pub fn window(&self, page: u64) -> u64 {
        self.continue_or_start(page, |s| s.window > 0 && s.next == page, true)
    }

    /// [`Streams::window`] for a reader that moves forward at the grain of its buffer but may
    /// touch the pages inside it in any order (glibc's `memcpy` copies backward for some
    /// alignments: the first page of a 1 MiB buffer, then the last, then downwards): a fault
    /// continues a stream when it lands within one window of the pages the stream has covered,
    /// `[start - window, next + window)`, and then doubles its window; anywhere else it starts a
    /// new stream. Pair it with [`Streams::served_near`].
    pub fn window_near(&self, page: u64) -> u64 {
        self.continue_or_start(page, |s| s.near(page), false)
    }

    /// The window for a fault at `page`: doubled for the first stream `continues` accepts (its
    /// run then starts at `page` if `restart`), else a new stream of [`MIN_RUN_PAGES`] in the
    /// place of the least recently used one.
    fn continue_or_start(
        &self,
        page: u64,
        continues: impl Fn(&Stream) -> bool,
        restart: bool,
    ) -> u64 {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.clock += 1;
        let now = t.clock;
        let window = match t.streams.iter_mut().find(|s| continues(s)) {
            Some(s) => {
                s.window = (s.window * 2).min(MAX_RUN_PAGES);
                if restart {
                    s.start = page;
                }
                s.used = now;
                s.window
            }
            None => {
                let s = t
                    .streams
                    .iter_mut()
                    .min_by_key(|s| (s.window > 0, s.used))
                    .expect("STREAMS > 0");
                *s = Stream {
                    next: page + 1,
                    start: page,
                    window: MIN_RUN_PAGES,
                    used: now,
                };
                MIN_RUN_PAGES
            }
        };
        debug_assert!((MIN_RUN_PAGES..=MAX_RUN_PAGES).contains(&window));
        window
    }

    /// The fault at `page` (after [`Streams::window_near`]) was served with the run `[lo, hi)`
    /// (`lo <= page < hi`): the stream now covers it too (at most its last 4 maximal windows,
    /// so an old region does not keep a stream alive).
    pub fn served_near(&self, page: u64, lo: u64, hi: u64) {
        assert!(
            lo <= page && page < hi,
            "a run [{lo}, {hi}) without page {page}"
        );
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = t.streams.iter_mut().find(|s| s.near(page)) {
            s.next = s.next.max(hi);
            s.start = s
                .start
                .min(lo)
                .max(s.next.saturating_sub(4 * MAX_RUN_PAGES));
        }
    }

    /// The fault at `page` was served with a run that ends at `end` (exclusive; `end > page`):
    /// the stream now expects `end`. A run cut short (it met a page that is there already) keeps
    /// its window, so a scan over a partly cached range does not start over.
    pub fn served(&self, page: u64, end: u64) {
        assert!(end > page, "a run [{page}, {end}) served no page");
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = t
            .streams
            .iter_mut()
            .find(|s| s.window > 0 && s.start == page)
        {
            s.next = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serve runs as a sequential scan from `from` would, `n` faults; the windows it got.
    fn scan(s: &Streams, from: u64, n: usize) -> Vec<u64> {
        let mut page = from;
        let mut got = Vec::new();
        for _ in 0..n {
            let w = s.window(page);
            got.push(w);
            s.served(page, page + w);
            page += w;
        }
        got
    }

    #[test]
    fn a_sequential_stream_doubles_to_the_maximum() {
        let s = Streams::default();
        assert_eq!(
            scan(&s, 0, 12),
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 512, 512]
        );
    }

    #[test]
    fn a_random_access_gets_one_page() {
        let s = Streams::default();
        for p in [100, 7, 9000, 55, 100_000, 3] {
            let w = s.window(p);
            assert_eq!(w, MIN_RUN_PAGES);
            s.served(p, p + w);
        }
    }

    #[test]
    fn interleaved_streams_each_keep_their_window() {
        let s = Streams::default();
        let (mut a, mut b) = (0u64, 1 << 20);
        let mut last = (0, 0);
        for _ in 0..6 {
            let wa = s.window(a);
            s.served(a, a + wa);
            a += wa;
            let wb = s.window(b);
            s.served(b, b + wb);
            b += wb;
            last = (wa, wb);
        }
        assert_eq!(last, (32, 32));
    }

    #[test]
    fn a_short_run_continues_from_where_it_ended() {
        let s = Streams::default();
        assert_eq!(s.window(10), 1);
        s.served(10, 11);
        assert_eq!(s.window(11), 2);
        s.served(11, 12); // cut short: only one page was free
        assert_eq!(s.window(12), 4);
    }

    #[test]
    fn a_buffered_reader_copying_backward_is_one_stream() {
        // 256-page buffers, each copied first page first, then from its end downwards, 16
        // pages per fault: the windows grow as for a forward scan.
        let s = Streams::default();
        let mut last = 0;
        for buf in 0..4u64 {
            let base = buf * 256;
            let w = s.window_near(base);
            s.served_near(base, base, base + 16);
            last = last.max(w);
            let mut p = base + 255;
            while p > base + 16 {
                let w = s.window_near(p);
                let lo = p.saturating_sub(w.max(16) - 1).max(base + 16);
                s.served_near(p, lo, p + 1);
                last = w;
                p = lo.saturating_sub(1);
            }
        }
        assert_eq!(last, MAX_RUN_PAGES);
        // Far from it: a new stream.
        assert_eq!(s.window_near(1 << 30), MIN_RUN_PAGES);
    }

    #[test]
    fn more_streams_than_slots_replace_the_oldest() {
        let s = Streams::default();
        for i in 0..STREAMS as u64 + 1 {
            let p = i * 1000;
            assert_eq!(s.window(p), 1);
            s.served(p, p + 1);
        }
        // The stream at 1000 is still known; the one at 0 was replaced.
        assert_eq!(s.window(1001), 2);
        assert_eq!(s.window(1), 1);
    }
}
