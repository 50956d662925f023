//! Peer transport: one TCP connection per direction and peer. Each node dials every peer for
//! what it sends (a writer thread per peer, with a bounded queue, reconnect with backoff and
//! heartbeats) and accepts the peers' connections for what it receives (a reader thread per
//! connection). Every wait is bounded: connect, hello, reads (a silent connection is dropped)
//! and writes (a peer that stops reading is disconnected).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagemesh_core::Epoch;
use pagemesh_proto::peer::{
    encode_peer_frame, read_peer_frame, write_peer_frame, PeerFrame, PEER_PROTOCOL_VERSION,
};
use pagemesh_types::NodeId;

use super::engine::Input;

/// Frames waiting for one peer's writer; more are dropped (the protocol retransmits).
const QUEUE_FRAMES: usize = 8192;
/// A connection attempt, and the hello exchange, give up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A write that cannot complete in this long means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

struct Link {
    addr: SocketAddr,
    queue: SyncSender<PeerFrame>,
    connected: AtomicBool,
    /// The peer's epoch from its last welcome (0: never connected).
    epoch: AtomicU64,
    /// Milliseconds since the transport started when the peer was last heard (any frame).
    last_heard_ms: AtomicU64,
    dropped: AtomicU64,
}

/// What the engine and the status command see of a peer.
#[derive(Clone, Debug)]
pub struct PeerView {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub connected: bool,
    pub epoch: u64,
    pub silent_ms: u64,
    pub dropped_frames: u64,
}

pub struct Transport {
    me: NodeId,
    epoch: Epoch,
    cluster_id: u64,
    heartbeat: Duration,
    dead_after: Duration,
    start: Instant,
    links: HashMap<NodeId, Link>,
    engine: mpsc::Sender<Input>,
    /// Lowest epoch accepted from each peer (raised when the peer is declared dead).
    fence: Mutex<HashMap<NodeId, Epoch>>,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
}

impl Transport {
    /// Bind the listener and start the reader and writer threads.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        me: NodeId,
        epoch: Epoch,
        cluster_id: u64,
        listen: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
        dead_after: Duration,
        engine: mpsc::Sender<Input>,
    ) -> std::io::Result<Arc<Transport>> {
        let listener = TcpListener::bind(listen).map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding the peer listener on {listen}: {e}"))
        })?;
        let mut links = HashMap::new();
        let mut queues = Vec::new();
        for &(id, addr) in peers.iter().filter(|p| p.0 != me) {
            let (tx, rx) = mpsc::sync_channel(QUEUE_FRAMES);
            links.insert(
                id,
                Link {
                    addr,
                    queue: tx,
                    connected: AtomicBool::new(false),
                    epoch: AtomicU64::new(0),
                    last_heard_ms: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                },
            );
            queues.push((id, rx));
        }
        let t = Arc::new(Transport {
            me,
            epoch,
            cluster_id,
            heartbeat: (dead_after / 8).clamp(Duration::from_millis(20), Duration::from_millis(500)),
            dead_after,
            start: Instant::now(),
            links,
            engine,
            fence: Mutex::new(HashMap::new()),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
        });
        for (id, rx) in queues {
            let t2 = Arc::clone(&t);
            std::thread::Builder::new()
                .name(format!("peer-out-{}", id.0))
                .spawn(move || t2.writer(id, rx))?;
        }
        let t2 = Arc::clone(&t);
        std::thread::Builder::new()
            .name("peer-listen".into())
            .spawn(move || t2.accept(listener))?;
        Ok(t)
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Queue a frame for a peer; false if it was dropped (queue full or unknown peer).
    pub fn send(&self, to: NodeId, frame: PeerFrame) -> bool {
        let Some(l) = self.links.get(&to) else {
            log::warn!("peer transport: no link to {to}; frame dropped");
            return false;
        };
        match l.queue.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if l.dropped.fetch_add(1, Ordering::Relaxed) % 1024 == 0 {
                    log::warn!("peer {to}: send queue full ({QUEUE_FRAMES} frames); dropping (the protocol retransmits)");
                }
                false
            }
        }
    }

    /// Refuse every incarnation of `peer` below `epoch` from now on.
    pub fn fence(&self, peer: NodeId, epoch: Epoch) {
        let mut f = self.fence.lock().unwrap_or_else(|e| e.into_inner());
        let e = f.entry(peer).or_default();
        *e = (*e).max(epoch);
    }

    pub fn peers(&self) -> Vec<PeerView> {
        let now = self.now_ms();
        let mut v: Vec<PeerView> = self
            .links
            .iter()
            .map(|(id, l)| PeerView {
                id: *id,
                addr: l.addr,
                connected: l.connected.load(Ordering::Relaxed),
                epoch: l.epoch.load(Ordering::Relaxed),
                silent_ms: now.saturating_sub(l.last_heard_ms.load(Ordering::Relaxed)),
                dropped_frames: l.dropped.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by_key(|p| p.id);
        v
    }

    fn heard(&self, peer: NodeId) {
        if let Some(l) = self.links.get(&peer) {
            l.last_heard_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn writer(self: Arc<Self>, peer: NodeId, rx: Receiver<PeerFrame>) {
        let link = &self.links[&peer];
        let mut backoff = Duration::from_millis(20);
        let mut logged_down = false;
        loop {
            let stream = match self.dial(peer, link.addr) {
                Ok(s) => s,
                Err(Dial::Fenced(reason)) => {
                    let _ = self.engine.send(Input::Fenced { by: peer, reason });
                    return;
                }
                Err(Dial::Failed(e)) => {
                    if !logged_down {
                        log::warn!("peer {peer} at {}: {e}; retrying with backoff", link.addr);
                        logged_down = true;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            log::info!("peer {peer} at {}: connected", link.addr);
            logged_down = false;
            backoff = Duration::from_millis(20);
            link.connected.store(true, Ordering::Relaxed);
            let r = self.pump(&stream, &rx);
            link.connected.store(false, Ordering::Relaxed);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            match r {
                Ok(()) => return, // the engine is gone
                Err(e) => log::warn!("peer {peer}: connection lost: {e}; reconnecting"),
            }
        }
    }

    fn dial(&self, peer: NodeId, addr: SocketAddr) -> Result<TcpStream, Dial> {
        let fail = |what: &str, e: std::io::Error| Dial::Failed(format!("{what}: {e}"));
        let mut s =
            TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| fail("connect", e))?;
        s.set_nodelay(true).map_err(|e| fail("nodelay", e))?;
        s.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|e| fail("timeout", e))?;
        s.set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| fail("timeout", e))?;
        let hello = PeerFrame::Hello {
            version: PEER_PROTOCOL_VERSION,
            cluster_id: self.cluster_id,
            from: self.me,
            from_epoch: self.epoch,
            to: peer,
        };
        write_peer_frame(&mut s, &hello).map_err(|e| Dial::Failed(format!("hello: {e}")))?;
        match read_peer_frame(&mut s, &mut Vec::new()) {
            Ok((PeerFrame::Welcome { epoch }, _)) => {
                self.links[&peer].epoch.store(epoch.0, Ordering::Relaxed);
                Ok(s)
            }
            Ok((PeerFrame::Refused { reason, fenced }, _)) => {
                if fenced {
                    Err(Dial::Fenced(reason))
                } else {
                    Err(Dial::Failed(format!("refused: {reason}")))
                }
            }
            Ok((other, _)) => Err(Dial::Failed(format!("expected a welcome, got {other:?}"))),
            Err(e) => Err(Dial::Failed(format!("waiting for the welcome: {e}"))),
        }
    }

    /// Send queued frames (batched into one write) and heartbeats until the connection fails
    /// (`Err`) or the engine is gone (`Ok`).
    fn pump(&self, s: &TcpStream, rx: &Receiver<PeerFrame>) -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(256 << 10, s);
        let mut buf = Vec::with_capacity(64 << 10);
        loop {
            let first = match rx.recv_timeout(self.heartbeat) {
                Ok(f) => f,
                Err(RecvTimeoutError::Timeout) => PeerFrame::Heartbeat,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            buf.clear();
            encode_peer_frame(&first, &mut buf);
            while buf.len() < (192 << 10) {
                match rx.try_recv() {
                    Ok(f) => encode_peer_frame(&f, &mut buf),
                    Err(_) => break,
                }
            }
            w.write_all(&buf)?;
            w.flush()?;
            self.bytes_sent
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
    }

    fn accept(self: Arc<Self>, listener: TcpListener) {
        for conn in listener.incoming() {
            match conn {
                Ok(s) => {
                    let t = Arc::clone(&self);
                    let spawned = std::thread::Builder::new()
                        .name("peer-in".into())
                        .spawn(move || t.reader(s));
                    if let Err(e) = spawned {
                        log::error!("peer listener: cannot start a reader thread: {e}");
                    }
                }
                Err(e) => {
                    log::warn!("peer listener: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn reader(&self, mut s: TcpStream) {
        let who = s
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(CONNECT_TIMEOUT));
        let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
        let mut buf = Vec::with_capacity(64 << 10);
        let from = match read_peer_frame(&mut s, &mut buf) {
            Ok((
                PeerFrame::Hello {
                    version,
                    cluster_id,
                    from,
                    from_epoch,
                    to,
                },
                _,
            )) => {
                let refuse = |s: &mut TcpStream, reason: String, fenced: bool| {
                    log::warn!("peer connection from {who}: refused: {reason}");
                    let _ = write_peer_frame(s, &PeerFrame::Refused { reason, fenced });
                };
                if version != PEER_PROTOCOL_VERSION {
                    return refuse(&mut s, format!("peer protocol version {version}, this node speaks {PEER_PROTOCOL_VERSION}"), false);
                }
                if cluster_id != self.cluster_id {
                    return refuse(&mut s, format!("cluster id {cluster_id:#x}, this node is in cluster {:#x}", self.cluster_id), false);
                }
                if to != self.me || !self.links.contains_key(&from) {
                    return refuse(&mut s, format!("{from} dialled {to}, but this is {} and {from} is not in its peer list", self.me), false);
                }
                let floor = self
                    .fence
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&from)
                    .copied()
                    .unwrap_or_default();
                if from_epoch < floor {
                    return refuse(&mut s, format!("{} declared {from} (epoch {}) dead; restart it so it rejoins with a new epoch", self.me, from_epoch.0), true);
                }
                if let Err(e) = write_peer_frame(&mut s, &PeerFrame::Welcome { epoch: self.epoch }) {
                    log::warn!("peer {from} at {who}: welcome failed: {e}");
                    return;
                }
                from
            }
            Ok((other, _)) => {
                log::warn!("peer connection from {who}: expected a hello, got {other:?}; closed");
                return;
            }
            Err(e) => {
                log::warn!("peer connection from {who}: bad hello: {e}; closed");
                return;
            }
        };
        self.heard(from);
        // A connection silent for longer than the dead-peer limit is over (the writer sends
        // heartbeats far more often).
        let _ = s.set_read_timeout(Some(self.dead_after.max(Duration::from_millis(100))));
        loop {
            let (frame, n) = match read_peer_frame(&mut s, &mut buf) {
                Ok(f) => f,
                Err(e) => {
                    log::info!("peer {from}: inbound connection closed: {e}");
                    return;
                }
            };
            self.heard(from);
            self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
            let input = match frame {
                PeerFrame::Heartbeat => continue,
                PeerFrame::Protocol(env) if env.from == from && env.to == self.me => {
                    Input::Envelope(env)
                }
                PeerFrame::Control(c) => Input::Control { from, msg: c },
                other => {
                    log::warn!("peer {from}: unexpected frame {other:?} (a bug or a lying peer); connection closed");
                    return;
                }
            };
            if self.engine.send(input).is_err() {
                return;
            }
        }
    }
}

enum Dial {
    Failed(String),
    Fenced(String),
}
