//! Bounds on client connections: who may connect (the socket's mode and group), how many
//! connections one user may hold, how long a frame may take to arrive once it has begun, and how
//! long a connection that holds nothing may sit idle (docs/ARCHITECTURE.md, "Connections").
//!
//! A connection is served by a thread of its own; the bounds keep their number and their life
//! finite: at most [`ConnectionLimits::per_uid`] per user other than root, at most
//! [`MAX_CONNECTIONS`] in all, with [`ROOT_RESERVE`] more for root only, so an unprivileged user
//! can neither lock out others nor root, whatever it opens.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pagemesh_proto::{read_frame, FrameError, Request};
use pagemesh_uffd::poll::wait_readable;

/// Most client connections at once (root has [`ROOT_RESERVE`] more).
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// Connections only root may open once [`MAX_CONNECTIONS`] are open.
pub(crate) const ROOT_RESERVE: usize = 64;
/// Once a frame has begun, the rest of it must arrive within this.
pub(crate) const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may connect and how much they may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Mode of the socket file: who may connect at all (default 0660: owner and group).
    pub socket_mode: u32,
    /// Group of the socket file (`None`: the daemon's).
    pub socket_group: Option<u32>,
    /// Most connections one user other than root may hold at once (default 128).
    pub per_uid: usize,
    /// A connection that holds no lock and no attachment in the making is closed after this
    /// long without a request (default 60 s); the client library reconnects by itself.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            socket_mode: 0o660,
            socket_group: None,
            per_uid: 128,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Open connections, per user and in all.
#[derive(Default)]
pub(crate) struct Admissions {
    per_uid: Mutex<HashMap<u32, usize>>,
    total: AtomicUsize,
}

impl Admissions {
    /// Connections open.
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

/// One admitted connection; dropping it gives its place back.
pub(crate) struct Admitted {
    admissions: Arc<Admissions>,
    uid: u32,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut m = self
            .admissions
            .per_uid
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
        self.admissions.total.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Admit a connection of `uid` (at most `limit` for a user other than root), or say why not.
pub(crate) fn admit(a: &Arc<Admissions>, uid: u32, limit: usize) -> Result<Admitted, String> {
    let mut m = a.per_uid.lock().unwrap_or_else(|e| e.into_inner());
    let mine = m.get(&uid).copied().unwrap_or(0);
    if uid != 0 && mine >= limit {
        return Err(format!(
            "uid {uid} has {mine} connections open, the most one user may hold (--max-connections-per-uid); try again later"
        ));
    }
    let total = a.total.load(Ordering::SeqCst);
    let cap = if uid == 0 {
        MAX_CONNECTIONS + ROOT_RESERVE
    } else {
        MAX_CONNECTIONS
    };
    if total >= cap {
        return Err(format!(
            "the daemon has {total} connections open; try again later"
        ));
    }
    *m.entry(uid).or_insert(0) += 1;
    a.total.fetch_add(1, Ordering::SeqCst);
    Ok(Admitted {
        admissions: Arc::clone(a),
        uid,
    })
}

/// What waiting for the next request found.
pub(crate) enum Next {
    Request(Request, Vec<std::os::fd::OwnedFd>),
    /// Nothing came for the idle timeout, and the connection holds nothing.
    Idle,
    /// A frame began but did not end within [`FRAME_TIMEOUT`].
    Stalled,
    /// Closed, or unreadable.
    Gone(Option<FrameError>),
}

/// Wait for the next request: without bound while the connection `holds` something (a lock,
/// an attachment in the making), else for `idle` at most; then the frame, within
/// [`FRAME_TIMEOUT`].
pub(crate) fn next_request(sock: &UnixStream, holds: bool, idle: Duration) -> Next {
    let idle_ms = idle.as_millis().min(i32::MAX as u128) as i32;
    loop {
        match wait_readable(sock.as_fd(), if holds { 60_000 } else { idle_ms }) {
            Ok(true) => break,
            Ok(false) if holds => continue,
            Ok(false) => return Next::Idle,
            Err(e) => return Next::Gone(Some(FrameError::Io(e))),
        }
    }
    let _ = sock.set_read_timeout(Some(FRAME_TIMEOUT));
    let frame = read_frame::<Request>(sock);
    // Back to blocking reads: the connection may become a lease, read until it ends.
    let _ = sock.set_read_timeout(None);
    match frame {
        Ok((req, fds)) => Next::Request(req, fds),
        Err(FrameError::Closed) => Next::Gone(None),
        Err(e) if e.is_timeout() => Next::Stalled,
        Err(e) => Next::Gone(Some(e)),
    }
}
