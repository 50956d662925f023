//! Synchronisation for programs that share cluster segments: a barrier and a lock, both served
//! by the segment's home node (a spin loop on shared memory works too, but every spin moves
//! the page between nodes).

use std::time::Duration;

use crate::{Client, ClientError};

/// A barrier of `parties` processes, on any nodes, named by a segment and a number.
///
/// ```no_run
/// # fn main() -> Result<(), pagemesh::ClientError> {
/// let client = pagemesh::Client::connect_default()?;
/// let barrier = pagemesh::Barrier::new(&client, "grid", 0, 6);
/// barrier.wait()?; // returns once 6 processes called wait()
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Barrier {
    client: Client,
    segment: String,
    id: u32,
    parties: u32,
    timeout: Duration,
}

impl Barrier {
    /// Barrier `id` of cluster segment `segment`, released every time `parties` processes
    /// wait at it. A wait gives up after 5 minutes by default.
    pub fn new(client: &Client, segment: &str, id: u32, parties: u32) -> Barrier {
        Barrier {
            client: client.clone(),
            segment: segment.to_string(),
            id,
            parties,
            timeout: Duration::from_secs(300),
        }
    }

    /// Change how long a wait may take before it fails with a timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Barrier {
        self.timeout = timeout;
        self
    }

    /// Wait until every party arrived; returns the round (from 1).
    pub fn wait(&self) -> Result<u64, ClientError> {
        self.client
            .barrier_wait(&self.segment, self.id, self.parties, self.timeout)
    }
}

/// A held cluster lock; released when dropped.
pub struct LockGuard<'a> {
    client: &'a Client,
    segment: String,
    id: u32,
}

impl Client {
    /// Take lock `id` of cluster segment `segment` and release it when the guard drops.
    pub fn lock_guard(
        &self,
        segment: &str,
        id: u32,
        timeout: Duration,
    ) -> Result<LockGuard<'_>, ClientError> {
        self.lock(segment, id, timeout)?;
        Ok(LockGuard {
            client: self,
            segment: segment.to_string(),
            id,
        })
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // A failure leaves the lock to be released when the connection closes.
        let _ = self.client.unlock(&self.segment, self.id);
    }
}
