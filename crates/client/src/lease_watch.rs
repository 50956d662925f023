//! Leases where the data is read: a process's own check that its node still holds the lease on
//! the home of a cluster segment it maps (docs/cluster.md, "Leases where the data is read").
//!
//! The daemon publishes, in its lease board (`pagemesh_proto::lease_board`), until when its
//! lease on each home holds. The daemon enforces it too, but only while it runs; a stopped or
//! stalled daemon would let this process go on reading its mapped copies after the home gave
//! the pages to another node. So the watchdog reads the board itself: when the deadline passes
//! it zaps the mapping (every later access faults into the daemon, which serves it only under
//! a lease), and when the daemon has not run for the fault timeout either, it gives up on the
//! daemon (every access raises SIGBUS).

use std::os::fd::{AsFd, OwnedFd};

use pagemesh_proto::lease_board::{
    ALIVE_WORD, FAULT_TIMEOUT_WORD, FIRST_SLOT, LEASE_BOARD_VERSION, LEASE_WORD, VERSION_WORD,
};
use pagemesh_uffd::{Memfd, ReadOnlyMapping};

/// The board as one attachment watches it.
pub(crate) struct LeaseWatch {
    board: ReadOnlyMapping,
    /// Word index of the home's slot.
    word: usize,
    home: u32,
}

/// What the watchdog must do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The lease holds, or this lapse was acted on already.
    Holds,
    /// The lease lapsed (at this deadline): zap the mapping, once.
    Lapsed,
    /// The lease lapsed and the daemon has not run for the fault timeout: give up on it.
    GiveUp(String),
}

impl LeaseWatch {
    /// Map the board the daemon sent with an attachment of a segment homed on `home`.
    pub(crate) fn open(fd: OwnedFd, slot: u32, home: u32) -> std::io::Result<LeaseWatch> {
        let memfd = Memfd::from_owned(fd);
        let len = memfd.len_bytes()? as usize;
        let word = FIRST_SLOT + slot as usize;
        if len < (word + 1) * 8 {
            return Err(std::io::Error::other(format!(
                "the daemon's lease board has {len} bytes, too few for slot {slot}"
            )));
        }
        let board = ReadOnlyMapping::map(memfd.as_fd(), len)?;
        let version = board.load_u64(VERSION_WORD);
        if version != LEASE_BOARD_VERSION {
            return Err(std::io::Error::other(format!(
                "the daemon's lease board is format version {version}; this client reads version \
                 {LEASE_BOARD_VERSION}: use a client library of the daemon's release"
            )));
        }
        Ok(LeaseWatch { board, word, home })
    }

    /// How often to look: a fifth of the lease (5..=100 ms), so a lapse is acted on well within
    /// the half of the dead-peer limit that separates it from the home declaring this node dead.
    pub(crate) fn tick_ms(&self) -> i32 {
        (self.board.load_u64(LEASE_WORD) / 5).clamp(5, 100) as i32
    }

    /// The verdict at `now_ns` (`CLOCK_MONOTONIC`), given the deadline last acted on.
    pub(crate) fn check(&self, now_ns: u64, acted_on: &mut Option<u64>) -> Verdict {
        let until = self.board.load_u64(self.word);
        if now_ns < until {
            return Verdict::Holds;
        }
        let timeout_ns = self.board.load_u64(FAULT_TIMEOUT_WORD) * 1_000_000;
        let alive = self.board.load_u64(ALIVE_WORD);
        if now_ns >= until + timeout_ns && now_ns >= alive + timeout_ns {
            return Verdict::GiveUp(format!(
                "this node's lease on home node {} ended {} ms ago and its daemon has not run for \
                 {} ms (fault timeout {} ms)",
                self.home,
                (now_ns - until) / 1_000_000,
                (now_ns - alive) / 1_000_000,
                timeout_ns / 1_000_000
            ));
        }
        if *acted_on == Some(until) {
            return Verdict::Holds;
        }
        *acted_on = Some(until);
        Verdict::Lapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagemesh_proto::lease_board::board_bytes;
    use pagemesh_uffd::SharedMapping;
    use std::sync::atomic::Ordering;

    fn board(until: u64, alive: u64) -> (SharedMapping, LeaseWatch) {
        let len = board_bytes(2);
        let m = Memfd::create("board", len as u64).unwrap();
        let w = SharedMapping::map(m.as_fd(), len).unwrap();
        let words = w.atomics_u64();
        words[VERSION_WORD].store(LEASE_BOARD_VERSION, Ordering::Release);
        words[LEASE_WORD].store(500, Ordering::Release);
        words[FAULT_TIMEOUT_WORD].store(2000, Ordering::Release);
        words[ALIVE_WORD].store(alive, Ordering::Release);
        words[FIRST_SLOT + 1].store(until, Ordering::Release);
        let fd = m.as_fd().try_clone_to_owned().unwrap();
        (w, LeaseWatch::open(fd, 1, 3).unwrap())
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_lapse_is_acted_on_once_per_deadline_and_given_up_on_when_the_daemon_stalls() {
        let (w, l) = board(1000 * MS, 900 * MS);
        assert_eq!(l.tick_ms(), 100);
        let mut acted = None;
        assert_eq!(l.check(999 * MS, &mut acted), Verdict::Holds);
        assert_eq!(l.check(1000 * MS, &mut acted), Verdict::Lapsed);
        assert_eq!(
            l.check(1500 * MS, &mut acted),
            Verdict::Holds,
            "zapped already"
        );
        // Renewed, then lapsed again: zap again.
        w.atomics_u64()[FIRST_SLOT + 1].store(1600 * MS, Ordering::Release);
        assert_eq!(l.check(1550 * MS, &mut acted), Verdict::Holds);
        assert_eq!(l.check(1600 * MS, &mut acted), Verdict::Lapsed);
        // The daemon runs (it will refuse the faults itself): no giving up.
        w.atomics_u64()[ALIVE_WORD].store(3500 * MS, Ordering::Release);
        assert_eq!(l.check(3700 * MS, &mut acted), Verdict::Holds);
        // It stopped running at 3500: the fault timeout after that, give up.
        assert!(matches!(l.check(5500 * MS, &mut acted), Verdict::GiveUp(_)));
    }

    #[test]
    fn a_board_of_another_version_or_too_small_is_refused() {
        // A board of zeros: version 0.
        let len = board_bytes(2);
        let m = Memfd::create("board", len as u64).unwrap();
        let fd = m.as_fd().try_clone_to_owned().unwrap();
        let e = LeaseWatch::open(fd, 0, 2).err().unwrap().to_string();
        assert!(e.contains("version 0") && e.contains("version 1"), "{e}");
        let fd = m.as_fd().try_clone_to_owned().unwrap();
        let e = LeaseWatch::open(fd, 100_000, 2).err().unwrap().to_string();
        assert!(e.contains("too few"), "{e}");
    }
}
