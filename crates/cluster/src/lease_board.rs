//! The node's lease board (format: `pagemesh_proto::lease_board`): the engine publishes, for
//! every home, until when its lease on that home holds, and when it last ran; clients read it
//! and stop using their copies of a home's pages when its lease ends, whether or not the daemon
//! runs then.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;

use pagemesh_proto::lease_board::{
    board_bytes, ALIVE_WORD, FAULT_TIMEOUT_WORD, FIRST_SLOT, LEASE_BOARD_VERSION, LEASE_WORD,
    VERSION_WORD,
};
use pagemesh_types::NodeId;
use pagemesh_uffd::{Memfd, SharedMapping};

/// The board: a memfd sealed against every writer but this mapping.
pub struct LeaseBoard {
    memfd: Memfd,
    map: SharedMapping,
    slots: HashMap<NodeId, u32>,
}

impl LeaseBoard {
    /// A board with a slot per peer (in the order given), no lease yet.
    pub fn new(
        peers: &[NodeId],
        lease_ms: u64,
        fault_timeout_ms: u64,
    ) -> std::io::Result<LeaseBoard> {
        let len = board_bytes(peers.len());
        let memfd = Memfd::create_sealable("pagemesh-lease-board", len as u64)?;
        let map = SharedMapping::map(memfd.as_fd(), len)?;
        memfd.seal_future_writes()?;
        let w = map.atomics_u64();
        w[VERSION_WORD].store(LEASE_BOARD_VERSION, Ordering::Release);
        w[FAULT_TIMEOUT_WORD].store(fault_timeout_ms, Ordering::Release);
        w[LEASE_WORD].store(lease_ms, Ordering::Release);
        let slots = peers
            .iter()
            .enumerate()
            .map(|(i, &p)| (p, u32::try_from(i).expect("fewer than 2^32 peers")))
            .collect();
        Ok(LeaseBoard { memfd, map, slots })
    }

    /// The slot of `home` (`None`: not a peer, e.g. this node).
    pub fn slot(&self, home: NodeId) -> Option<u32> {
        self.slots.get(&home).copied()
    }

    /// The lease on `home` holds until `until_ns` (`CLOCK_MONOTONIC`; 0: it does not hold).
    pub fn publish(&self, home: NodeId, until_ns: u64) {
        if let Some(&s) = self.slots.get(&home) {
            self.map.atomics_u64()[FIRST_SLOT + s as usize].store(until_ns, Ordering::Release);
        }
    }

    /// The engine ran at `now_ns`.
    pub fn alive(&self, now_ns: u64) {
        self.map.atomics_u64()[ALIVE_WORD].store(now_ns, Ordering::Release);
    }

    /// The memfd clients receive (read-only for them: it is sealed).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    #[cfg(test)]
    fn word(&self, i: usize) -> u64 {
        self.map.atomics_u64()[i].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_reads_what_the_engine_publishes_and_cannot_write_it() {
        let b = LeaseBoard::new(&[NodeId(2), NodeId(3)], 2500, 30_000).unwrap();
        assert_eq!(b.slot(NodeId(3)), Some(1));
        assert_eq!(b.slot(NodeId(1)), None);
        b.publish(NodeId(3), 12345);
        b.alive(777);
        let fd = b.fd().try_clone_to_owned().unwrap();
        let ro = pagemesh_uffd::ReadOnlyMapping::map(fd.as_fd(), board_bytes(2)).unwrap();
        assert_eq!(ro.load_u64(VERSION_WORD), LEASE_BOARD_VERSION);
        assert_eq!(ro.load_u64(FIRST_SLOT + 1), 12345);
        assert_eq!(ro.load_u64(ALIVE_WORD), 777);
        assert_eq!(b.word(LEASE_WORD), 2500);
        // Sealed: nobody else can map it writable or write it.
        assert!(SharedMapping::map(fd.as_fd(), board_bytes(2)).is_err());
        let f = Memfd::from_owned(fd);
        assert!(f.write_all_at(&[1; 8], 0).is_err());
    }
}
