//! Segment I/O through the coherence protocol: a request's job (one fault per page, the bytes
//! copied between the request and the page cache as each page is granted), and why it failed,
//! as a value: the user sees the cause ("being removed", "no lease yet, retry"), and the socket
//! API answers with the error code that matches it, never a blanket "poisoned".

use crate::table::Full;
use std::sync::mpsc::Sender;

use pagemesh_core::FaultResult;
use pagemesh_proto::ErrorCode;
use pagemesh_types::{NodeId, SegmentId, PAGE_SIZE};
use pagemesh_uffd::Memfd;

const PS: u64 = PAGE_SIZE;

/// One segment read or write in progress.
pub struct IoJob {
    pub seg: SegmentId,
    pub offset: u64,
    pub buf: Vec<u8>,
    pub write: bool,
    /// Pages not done yet.
    pub remaining: usize,
    /// The first failure (the request fails with it once every page is done).
    pub error: Option<IoFailure>,
    pub reply: Sender<Result<Vec<u8>, IoFailure>>,
}

impl IoJob {
    /// Page `page` of the request is done: with `failure`, or granted, and then its bytes are
    /// copied between the request and the page cache (`memfd`; `None` once the segment is
    /// gone, which fails the request). Returns whether every page is done.
    pub fn page_done(
        &mut self,
        page: u64,
        failure: Option<IoFailure>,
        memfd: Option<&Memfd>,
    ) -> bool {
        assert!(self.remaining > 0, "page {page} done twice");
        self.remaining -= 1;
        if let Some(f) = failure {
            self.error.get_or_insert(f);
        } else if let Some(memfd) = memfd {
            let end = self.offset + self.buf.len() as u64;
            let (lo, hi) = (self.offset.max(page * PS), end.min((page + 1) * PS));
            assert!(
                lo < hi,
                "page {page} is outside the request {}+{}",
                self.offset,
                self.buf.len()
            );
            let range = (lo - self.offset) as usize..(hi - self.offset) as usize;
            let r = if self.write {
                memfd.write_all_at(&self.buf[range], lo)
            } else {
                memfd.read_exact_at(&mut self.buf[range], lo)
            };
            if let Err(e) = r {
                self.error.get_or_insert(IoFailure::PageCache {
                    offset: lo,
                    message: e.to_string(),
                });
            }
        } else {
            // The segment went meanwhile: never answer a read with zeros it did not hold.
            self.error.get_or_insert(IoFailure::UnknownSegment { page });
        }
        self.remaining == 0
    }

    /// Answer the request.
    pub fn finish(self) {
        let _ = self.reply.send(match self.error {
            Some(e) => Err(e),
            None => Ok(self.buf),
        });
    }
}

/// A failed cluster segment I/O request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IoFailure {
    /// `segment rm` is running for the segment: its I/O is refused until the removal ends.
    #[error("it is being removed (`segment rm` is running); I/O is refused until it ends")]
    BeingRemoved,
    /// The segment's home has not heard this node lately: its copies may be stale.
    #[error("its home {home} has not answered for {silent_ms} ms (no lease yet); try again")]
    NoLease { home: NodeId, silent_ms: u64 },
    /// The page's only valid copy was lost with a node that died.
    #[error(
        "page {page}: its only copy was lost with a node that died (poisoned); \
         `pagemesh segment clear-poison` restores it from the mapper"
    )]
    Poisoned { page: u64 },
    /// The home's mapper could not read the page.
    #[error("page {page}: the home's mapper could not read it (see the home's log)")]
    MapperFailed { page: u64 },
    /// The page's home did not answer within the fault timeout.
    #[error("page {page}: its home did not answer in time (is it alive?)")]
    TimedOut { page: u64 },
    /// This node does not know the segment (it was removed meanwhile).
    #[error("page {page}: the segment is not known on this node (removed meanwhile?)")]
    UnknownSegment { page: u64 },
    /// Too much is in flight on this node already (faults or I/O requests).
    #[error("{0}")]
    Busy(Full),
    /// Copying between the request and the node's page cache failed.
    #[error("page cache I/O at offset {offset:#x}: {message}")]
    PageCache { offset: u64, message: String },
}

impl IoFailure {
    /// The failure of one page's fault, from how the core ended it (`None` for `Ok`).
    pub fn of_fault(page: u64, result: FaultResult) -> Option<IoFailure> {
        match result {
            FaultResult::Ok => None,
            FaultResult::Poisoned => Some(IoFailure::Poisoned { page }),
            FaultResult::MapperFailed => Some(IoFailure::MapperFailed { page }),
            FaultResult::TimedOut => Some(IoFailure::TimedOut { page }),
            FaultResult::UnknownSegment => Some(IoFailure::UnknownSegment { page }),
        }
    }

    /// The socket API's error class for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            IoFailure::BeingRemoved | IoFailure::UnknownSegment { .. } => ErrorCode::NotFound,
            IoFailure::NoLease { .. } | IoFailure::TimedOut { .. } => ErrorCode::TimedOut,
            IoFailure::Poisoned { .. } => ErrorCode::Poisoned,
            IoFailure::MapperFailed { .. } | IoFailure::PageCache { .. } => ErrorCode::Io,
            IoFailure::Busy(_) => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lost_pages_are_reported_poisoned() {
        let all = [
            IoFailure::BeingRemoved,
            IoFailure::NoLease {
                home: NodeId(2),
                silent_ms: 750,
            },
            IoFailure::of_fault(3, FaultResult::Poisoned).expect("a failure"),
            IoFailure::of_fault(3, FaultResult::MapperFailed).expect("a failure"),
            IoFailure::of_fault(3, FaultResult::TimedOut).expect("a failure"),
            IoFailure::of_fault(3, FaultResult::UnknownSegment).expect("a failure"),
            IoFailure::PageCache {
                offset: 4096,
                message: "EIO".into(),
            },
        ];
        for f in &all {
            let poisoned = matches!(f, IoFailure::Poisoned { .. });
            assert_eq!(f.code() == ErrorCode::Poisoned, poisoned, "{f}");
            assert_eq!(f.to_string().contains("poisoned"), poisoned, "{f}");
        }
        assert_eq!(IoFailure::of_fault(3, FaultResult::Ok), None);
        assert!(all[0].to_string().contains("being removed"));
        assert!(all[1].to_string().contains("try again"));
    }
}
