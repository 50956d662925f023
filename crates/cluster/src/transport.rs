//! Peer transport: one TCP connection per direction and peer.
//!
//! - **Outbound** (what this node sends): a connection thread per peer dials, says hello,
//!   reconnects with backoff, and sends heartbeats. The engine writes frames straight into the
//!   socket without blocking (`send(MSG_DONTWAIT)`); whatever the socket does not take at once
//!   goes to a bounded backlog that the connection thread flushes with blocking writes (2 s
//!   bound), so the engine never waits on a peer and frames stay in order.
//! - **Inbound** (what peers send): the listener thread accepts and checks the hello, then hands
//!   the connection to the engine, which reads it from its own epoll (no thread hop on the data
//!   path).
//!
//! Every wait is bounded: connect, hello, writes (a peer that stops reading is disconnected),
//! and silence (an inbound connection quiet for the dead-peer limit is closed by the engine).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pagemesh_core::lease::{self, LeaseBugs, LeaseLink};
use pagemesh_core::Epoch;
use pagemesh_proto::peer::{
    encode_peer_frame, read_peer_frame, write_peer_frame, PeerFrame, PEER_PROTOCOL_VERSION,
};
use pagemesh_types::NodeId;
use pagemesh_uffd::clock::monotonic_ns;
use pagemesh_uffd::fileio::send_nonblocking;

use crate::input::Input;
use crate::lease_board::LeaseBoard;
use crate::peer_stream::{self, InboundStream};
use crate::tls::PeerTls;
use crate::Waker;
use rustls::ClientConnection;

/// Bytes waiting for one peer's connection thread; frames beyond it are dropped and counted
/// (the protocol retransmits).
const MAX_BACKLOG_BYTES: usize = 64 << 20;
/// Most handshakes in progress at once (each is a short-lived thread).
const MAX_HANDSHAKES: usize = 64;
/// Longest pause between reconnect attempts.

#[derive(Default)]
struct Out {
    stream: Option<Arc<TcpStream>>,
    /// The TLS session of the connection (authenticated links): frames are sealed into
    /// records under this lock, in the order they go on the wire.
    tls: Option<Box<ClientConnection>>,
    /// Scratch for sealed frames (kept for its allocation).
    sealed: Vec<u8>,
    backlog: Vec<u8>,
    /// The connection thread is writing a taken backlog: new frames must queue behind it.
    flushing: bool,
}

struct Link {
    addr: SocketAddr,
    out: Mutex<Out>,
    cv: Condvar,
    connected: AtomicBool,
    /// The peer's epoch from its last welcome (0: never connected).
    epoch: AtomicU64,
    /// Milliseconds since the transport started when the peer was last heard (any frame).
    last_heard_ms: AtomicU64,
    dropped: AtomicU64,
    /// The lease arithmetic of this link (`pagemesh_core::lease`), on this transport's clock:
    /// what to echo to the peer, and the latest of this node's send times the peer echoed,
    /// which the lease on the peer's segments runs from.
    lease: Mutex<LeaseLink>,
    /// When this node last sent the peer a heartbeat, and whether one is wanted now.
    last_hb_ms: AtomicU64,
    hb_now: AtomicBool,
}

fn lock_lease(m: &Mutex<LeaseLink>) -> MutexGuard<'_, LeaseLink> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock(m: &Mutex<Out>) -> MutexGuard<'_, Out> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the engine and the status command see of a peer.
#[derive(Clone, Debug)]
pub struct PeerView {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub connected: bool,
    pub epoch: u64,
    pub silent_ms: u64,
    /// How long ago the peer provably heard this node (`u64::MAX`: no echo yet).
    pub echo_age_ms: u64,
    pub dropped_frames: u64,
}

pub struct Transport {
    me: NodeId,
    epoch: Epoch,
    cluster_id: u64,
    heartbeat: Duration,
    /// The longest wait between reconnection attempts (`lease::reconnect_max_ms`).
    reconnect_max: Duration,
    /// The lease on a home's pages (half the dead-peer limit).
    lease_ms: u64,
    /// Bound on a connect, a hello exchange and a write: a third of the dead-peer limit (at
    /// most 2 s), so a stuck write is noticed well before the peer would be declared dead.
    io_timeout: Duration,
    handshakes: std::sync::atomic::AtomicUsize,
    start: Instant,
    /// `CLOCK_MONOTONIC` at (no later than) `start`: this node's clock in the machine's.
    start_mono_ns: u64,
    /// Where the lease on each home is published for clients (`lease_board`).
    board: Arc<LeaseBoard>,
    links: HashMap<NodeId, Link>,
    engine: Waker,
    /// Lowest epoch accepted from each peer (raised when the peer is declared dead).
    fence: Mutex<HashMap<NodeId, Epoch>>,
    /// Authenticated, encrypted links (`None`: plaintext, `--insecure-peers` or loopback).
    tls: Option<PeerTls>,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
}

impl Transport {
    /// Bind the listener and start the listener and connection threads.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        me: NodeId,
        epoch: Epoch,
        cluster_id: u64,
        listen: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
        dead_after: Duration,
        engine: Waker,
        fences: &[(NodeId, Epoch)],
        tls: Option<PeerTls>,
        board: Arc<LeaseBoard>,
    ) -> std::io::Result<Arc<Transport>> {
        let listener = TcpListener::bind(listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding the peer listener on {listen}: {e}"),
            )
        })?;
        let links = peers
            .iter()
            .filter(|p| p.0 != me)
            .map(|&(id, addr)| {
                (
                    id,
                    Link {
                        addr,
                        out: Mutex::new(Out::default()),
                        cv: Condvar::new(),
                        connected: AtomicBool::new(false),
                        epoch: AtomicU64::new(0),
                        last_heard_ms: AtomicU64::new(0),
                        dropped: AtomicU64::new(0),
                        lease: Mutex::new(LeaseLink::new(LeaseBugs::default())),
                        last_hb_ms: AtomicU64::new(0),
                        hb_now: AtomicBool::new(false),
                    },
                )
            })
            .collect::<HashMap<_, _>>();
        let t = Arc::new(Transport {
            me,
            epoch,
            cluster_id,
            heartbeat: Duration::from_millis(lease::heartbeat_ms(dead_after.as_millis() as u64)),
            reconnect_max: Duration::from_millis(lease::reconnect_max_ms(
                dead_after.as_millis() as u64
            )),
            lease_ms: lease::lease_ms(dead_after.as_millis() as u64),
            io_timeout: (dead_after / 3).clamp(Duration::from_millis(100), Duration::from_secs(2)),
            handshakes: std::sync::atomic::AtomicUsize::new(0),
            // Read before `start`, so a deadline converted with it is never late.
            start_mono_ns: monotonic_ns(),
            start: Instant::now(),
            board,
            links,
            engine,
            fence: Mutex::new(fences.iter().copied().collect()),
            tls,
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
        });
        for &id in t.links.keys() {
            let t2 = Arc::clone(&t);
            std::thread::Builder::new()
                .name(format!("peer-out-{}", id.0))
                .spawn(move || t2.connection(id))?;
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

    /// Send a frame to a peer without blocking, encoding it into `buf` (reused by the
    /// caller). False if it was dropped: no connection, or the backlog is full.
    pub fn send(&self, to: NodeId, frame: &PeerFrame, buf: &mut Vec<u8>) -> bool {
        let Some(l) = self.links.get(&to) else {
            log::warn!("peer transport: no link to {to}; frame dropped");
            return false;
        };
        buf.clear();
        encode_peer_frame(frame, buf);
        let mut o = lock(&l.out);
        let Some(s) = o.stream.clone() else {
            l.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let mut sealed = std::mem::take(&mut o.sealed);
        let wire: &[u8] = match o.tls.as_deref_mut() {
            None => buf,
            Some(tls) => {
                sealed.clear();
                if let Err(e) = peer_stream::seal(tls, buf, &mut sealed) {
                    log::warn!("peer {to}: sealing a frame failed: {e}; reconnecting");
                    o.stream = None;
                    l.cv.notify_one();
                    return false;
                }
                &sealed
            }
        };
        let sent = self.send_wire(to, l, &mut o, &s, wire);
        o.sealed = sealed;
        sent
    }

    /// Put `wire` bytes on the socket without blocking, queueing what it does not take.
    fn send_wire(&self, to: NodeId, l: &Link, o: &mut Out, s: &TcpStream, wire: &[u8]) -> bool {
        if o.flushing || !o.backlog.is_empty() {
            return self.queue(l, o, wire);
        }
        match send_nonblocking(s.as_fd(), wire) {
            Ok(n) => {
                self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                if n < wire.len() {
                    return self.queue(l, o, &wire[n..]);
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.queue(l, o, wire),
            Err(e) => {
                log::warn!("peer {to}: send failed: {e}; reconnecting");
                o.stream = None;
                l.cv.notify_one();
                false
            }
        }
    }

    fn queue(&self, l: &Link, o: &mut Out, bytes: &[u8]) -> bool {
        if o.backlog.len() + bytes.len() > MAX_BACKLOG_BYTES {
            if l.dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(1024)
            {
                log::warn!(
                    "peer at {}: {} bytes waiting to be sent; dropping frames (the protocol retransmits)",
                    l.addr,
                    o.backlog.len()
                );
            }
            return false;
        }
        o.backlog.extend_from_slice(bytes);
        l.cv.notify_one();
        true
    }

    /// Refuse every incarnation of `peer` below `epoch` from now on.
    pub fn fence(&self, peer: NodeId, epoch: Epoch) {
        let mut f = self.fence.lock().unwrap_or_else(|e| e.into_inner());
        let e = f.entry(peer).or_default();
        *e = (*e).max(epoch);
    }

    /// The lowest epoch of `peer` accepted now.
    pub fn fence_floor(&self, peer: NodeId) -> Epoch {
        self.fence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .copied()
            .unwrap_or_default()
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
                echo_age_ms: lock_lease(&l.lease)
                    .echoed_ms()
                    .map_or(u64::MAX, |e| now.saturating_sub(e)),
                dropped_frames: l.dropped.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// A heartbeat arrived from `peer`: remember its clock (to echo it) and our echoed clock (the
    /// lease), and answer soon if our own last heartbeat to it is not fresh.
    pub fn on_heartbeat(&self, peer: NodeId, sent_ms: u64, echo_ms: u64) {
        let Some(l) = self.links.get(&peer) else {
            return;
        };
        let now = self.now_ms();
        let mut lease = lock_lease(&l.lease);
        let answer = lease.on_heartbeat(now, sent_ms, echo_ms);
        // Clients learn at once when the lease moves (they zap their copies at its end).
        let until = lease
            .echoed_ms()
            .map_or(0, |e| self.mono_ns(e + self.lease_ms));
        drop(lease);
        self.board.publish(peer, until);
        if answer == lease::Answer::Now {
            l.hb_now.store(true, Ordering::Relaxed);
            l.cv.notify_one();
        }
    }

    /// This node's clock value `ms` on `CLOCK_MONOTONIC`.
    fn mono_ns(&self, ms: u64) -> u64 {
        self.start_mono_ns + ms * 1_000_000
    }

    /// The node's lease board (the engine says there that it runs).
    pub fn board(&self) -> &LeaseBoard {
        &self.board
    }

    /// Whether `peer` heard this node within the last `lease_ms` (by its own echo): while it
    /// has, it cannot have declared this node dead (it waits `dead_after_ms > lease_ms`).
    pub fn lease_ok(&self, peer: NodeId, lease_ms: u64) -> bool {
        self.links
            .get(&peer)
            .is_some_and(|l| lock_lease(&l.lease).holds(self.now_ms(), lease_ms))
    }

    /// A frame (of any kind) arrived from `peer`.
    pub fn heard(&self, peer: NodeId, bytes: usize) {
        if let Some(l) = self.links.get(&peer) {
            l.last_heard_ms.store(self.now_ms(), Ordering::Relaxed);
        }
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The outbound side of one peer: dial, hello, heartbeats, backlog flushing, reconnect.
    fn connection(self: Arc<Self>, peer: NodeId) {
        let link = &self.links[&peer];
        let mut backoff = Duration::from_millis(20);
        let mut logged_down = false;
        loop {
            let (stream, tls) = match self.dial(peer, link.addr) {
                Ok((s, tls)) => (Arc::new(s), tls),
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
                    backoff = (backoff * 2).min(self.reconnect_max);
                    continue;
                }
            };
            log::info!("peer {peer} at {}: connected", link.addr);
            logged_down = false;
            backoff = Duration::from_millis(20);
            {
                let mut o = lock(&link.out);
                o.stream = Some(Arc::clone(&stream));
                o.tls = tls;
                o.backlog.clear();
                o.flushing = false;
            }
            link.connected.store(true, Ordering::Relaxed);
            if self.engine.send(Input::PeerConnected(peer)).is_err() {
                return;
            }
            let r = self.flush_loop(link, &stream);
            link.connected.store(false, Ordering::Relaxed);
            {
                let mut o = lock(&link.out);
                o.stream = None;
                o.tls = None;
                o.backlog.clear();
                o.flushing = false;
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            log::warn!("peer {peer}: connection lost: {r}; reconnecting");
        }
    }

    /// Write the backlog, and a heartbeat every heartbeat interval (busy or not: heartbeats
    /// carry the lease clock) or when asked, until the connection fails.
    fn flush_loop(&self, link: &Link, stream: &TcpStream) -> String {
        // The first heartbeat goes out at once: the peer's lease clock starts with it.
        let mut last_hb: Option<Instant> = None;
        loop {
            let data = {
                let mut o = lock(&link.out);
                loop {
                    if o.stream.is_none() {
                        return "a send failed".into();
                    }
                    let since = last_hb.map_or(self.heartbeat, |t| t.elapsed());
                    if since >= self.heartbeat || link.hb_now.swap(false, Ordering::Relaxed) {
                        let hb = PeerFrame::Heartbeat {
                            sent_ms: self.now_ms().max(1),
                            echo_ms: lock_lease(&link.lease).echo(),
                        };
                        let mut plain = Vec::new();
                        encode_peer_frame(&hb, &mut plain);
                        let o = &mut *o;
                        match o.tls.as_deref_mut() {
                            None => o.backlog.extend_from_slice(&plain),
                            Some(tls) => {
                                if let Err(e) = peer_stream::seal(tls, &plain, &mut o.backlog) {
                                    return format!("sealing a heartbeat failed: {e}");
                                }
                            }
                        }
                        last_hb = Some(Instant::now());
                        link.last_hb_ms.store(self.now_ms(), Ordering::Relaxed);
                        break;
                    }
                    if !o.backlog.is_empty() {
                        break;
                    }
                    o = link
                        .cv
                        .wait_timeout(o, self.heartbeat - since)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                o.flushing = true;
                std::mem::take(&mut o.backlog)
            };
            let len = data.len() as u64;
            let r = (&*stream).write_all(&data);
            let mut o = lock(&link.out);
            o.flushing = false;
            if o.backlog.capacity() == 0 {
                // Hand the buffer back to keep its allocation.
                let mut data = data;
                data.clear();
                o.backlog = data;
            }
            match r {
                Ok(()) => {
                    self.bytes_sent.fetch_add(len, Ordering::Relaxed);
                }
                Err(e) => return format!("write failed: {e}"),
            }
        }
    }

    /// Connect to `peer`, authenticate it (TLS: its certificate must name it), say hello and
    /// take its welcome.
    fn dial(
        &self,
        peer: NodeId,
        addr: SocketAddr,
    ) -> Result<(TcpStream, Option<Box<ClientConnection>>), Dial> {
        let fail = |what: &str, e: &dyn std::fmt::Display| Dial::Failed(format!("{what}: {e}"));
        let mut s =
            TcpStream::connect_timeout(&addr, self.io_timeout).map_err(|e| fail("connect", &e))?;
        s.set_nodelay(true).map_err(|e| fail("nodelay", &e))?;
        s.set_write_timeout(Some(self.io_timeout))
            .map_err(|e| fail("timeout", &e))?;
        s.set_read_timeout(Some(self.io_timeout))
            .map_err(|e| fail("timeout", &e))?;
        let hello = PeerFrame::Hello {
            version: PEER_PROTOCOL_VERSION,
            cluster_id: self.cluster_id,
            from: self.me,
            from_epoch: self.epoch,
            to: peer,
        };
        let mut tls = match &self.tls {
            None => None,
            Some(t) => {
                let mut c = Box::new(t.dial(peer).map_err(|e| fail("TLS", &e))?);
                peer_stream::handshake(&mut c, &mut s)
                    .map_err(|e| fail("TLS handshake (is it this cluster's node?)", &e))?;
                Some(c)
            }
        };
        let answer = match tls.as_deref_mut() {
            None => hello_exchange(&mut s, &hello),
            Some(c) => hello_exchange(&mut rustls::Stream::new(c, &mut s), &hello),
        }?;
        match answer {
            PeerFrame::Welcome { epoch } if epoch < self.fence_floor(peer) => {
                // An incarnation this node declared dead (it was cut off, or stopped): it learns
                // it here if it has not dialled this node since, and stops.
                let fenced = PeerFrame::Refused {
                    reason: self.fenced_reason(peer, epoch),
                    fenced: true,
                };
                let told = match tls.as_deref_mut() {
                    None => write_peer_frame(&mut s, &fenced).is_ok() && s.flush().is_ok(),
                    Some(c) => {
                        let mut io = rustls::Stream::new(c, &mut s);
                        write_peer_frame(&mut io, &fenced).is_ok() && io.flush().is_ok()
                    }
                };
                let told = if told {
                    "told it so"
                } else {
                    "telling it failed"
                };
                Err(Dial::Failed(format!(
                    "it is epoch {}, which this node declared dead ({told})",
                    epoch.0
                )))
            }
            PeerFrame::Welcome { epoch } => {
                self.links[&peer].epoch.store(epoch.0, Ordering::Relaxed);
                if let Some(c) = tls.as_deref_mut() {
                    // Frames are sealed and drained at once: rustls buffers nothing for long.
                    c.set_buffer_limit(None);
                }
                Ok((s, tls))
            }
            PeerFrame::Refused { reason, fenced } => {
                if fenced {
                    Err(Dial::Fenced(reason))
                } else {
                    Err(Dial::Failed(format!("refused: {reason}")))
                }
            }
            other => Err(Dial::Failed(format!("expected a welcome, got {other:?}"))),
        }
    }

    fn accept(self: Arc<Self>, listener: TcpListener) {
        for conn in listener.incoming() {
            match conn {
                Ok(s) => {
                    // The hello is bounded; a thread per handshake (at most MAX_HANDSHAKES)
                    // keeps a slow dialler from holding up the others.
                    if self.handshakes.fetch_add(1, Ordering::SeqCst) >= MAX_HANDSHAKES {
                        self.handshakes.fetch_sub(1, Ordering::SeqCst);
                        log::warn!("peer listener: {MAX_HANDSHAKES} handshakes in progress; connection refused");
                        continue;
                    }
                    let t = Arc::clone(&self);
                    let spawned =
                        std::thread::Builder::new()
                            .name("peer-hello".into())
                            .spawn(move || {
                                t.handshake(s);
                                t.handshakes.fetch_sub(1, Ordering::SeqCst);
                            });
                    if let Err(e) = spawned {
                        self.handshakes.fetch_sub(1, Ordering::SeqCst);
                        log::error!("peer listener: cannot start a handshake thread: {e}");
                    }
                }
                Err(e) => {
                    log::warn!("peer listener: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Authenticate an inbound connection (TLS) and check its hello; on success the engine
    /// takes the connection over.
    fn handshake(&self, mut s: TcpStream) {
        let who = s
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(self.io_timeout));
        let _ = s.set_write_timeout(Some(self.io_timeout));
        let (mut tls, proven) = match &self.tls {
            None => (None, None),
            Some(t) => match self.authenticate(t, &mut s) {
                Ok((c, id)) => (Some(c), Some(id)),
                Err(e) => {
                    log::warn!("peer connection from {who}: refused: {e}");
                    return;
                }
            },
        };
        let checked = match tls.as_deref_mut() {
            None => self.check_hello(&mut s, &who, None),
            Some(c) => self.check_hello(&mut rustls::Stream::new(c, &mut s), &who, proven),
        };
        let Some((from, epoch, n)) = checked else {
            return;
        };
        // A new connection may be a new incarnation, whose clock starts again: echo only what
        // it sends from now on.
        if let Some(l) = self.links.get(&from) {
            lock_lease(&l.lease).reconnected();
        }
        self.heard(from, n);
        if let Err(e) = s.set_nonblocking(true) {
            log::warn!("peer {from}: {e}; closed");
            return;
        }
        let _ = self.engine.send(Input::Inbound {
            from,
            epoch,
            stream: InboundStream::new(s, tls),
        });
    }

    /// The TLS handshake of an inbound connection, and which peer its certificate names.
    fn authenticate(
        &self,
        t: &PeerTls,
        s: &mut TcpStream,
    ) -> Result<(Box<rustls::ServerConnection>, NodeId), String> {
        let mut c = Box::new(t.accept()?);
        peer_stream::handshake(&mut c, s).map_err(|e| format!("TLS handshake failed: {e}"))?;
        let id = t.identity(&c, self.links.keys().copied())?;
        Ok((c, id))
    }

    /// Read and check the hello: version, cluster, that it is for this node from a node of its
    /// peer list (the one its certificate names, on authenticated links) of an incarnation
    /// not fenced. Answer welcome or refused.
    fn check_hello<S: Read + Write>(
        &self,
        io: &mut S,
        who: &str,
        proven: Option<NodeId>,
    ) -> Option<(NodeId, Epoch, usize)> {
        let refuse = |io: &mut S, reason: String, fenced: bool| {
            log::warn!("peer connection from {who}: refused: {reason}");
            let _ = write_peer_frame(io, &PeerFrame::Refused { reason, fenced });
            let _ = io.flush();
            None
        };
        let (hello, n) = match read_hello(io) {
            Ok(h) => h,
            Err(e) => {
                log::warn!("peer connection from {who}: bad hello: {e}; closed");
                return None;
            }
        };
        let PeerFrame::Hello {
            version,
            cluster_id,
            from,
            from_epoch,
            to,
        } = hello
        else {
            log::warn!("peer connection from {who}: expected a hello, got {hello:?}; closed");
            return None;
        };
        if version != PEER_PROTOCOL_VERSION {
            let r = format!(
                "peer protocol version {version}, this node speaks {PEER_PROTOCOL_VERSION}"
            );
            return refuse(io, r, false);
        }
        if cluster_id != self.cluster_id {
            let r = format!(
                "cluster id {cluster_id:#x}, this node is in cluster {:#x}",
                self.cluster_id
            );
            return refuse(io, r, false);
        }
        if let Some(p) = proven.filter(|&p| p != from) {
            let r = format!("its certificate is {p}'s, but its hello says it is {from}");
            return refuse(io, r, false);
        }
        if to != self.me || !self.links.contains_key(&from) {
            let r = format!(
                "{from} dialled {to}, but this is {} and {from} is not in its peer list",
                self.me
            );
            return refuse(io, r, false);
        }
        if from_epoch < self.fence_floor(from) {
            return refuse(io, self.fenced_reason(from, from_epoch), true);
        }
        if let Err(e) = write_peer_frame(io, &PeerFrame::Welcome { epoch: self.epoch })
            .map_err(|e| e.to_string())
            .and_then(|()| io.flush().map_err(|e| e.to_string()))
        {
            log::warn!("peer {from} at {who}: welcome failed: {e}");
            return None;
        }
        Some((from, from_epoch, n))
    }
}

impl Transport {
    /// What a fenced incarnation of `peer` is told.
    fn fenced_reason(&self, peer: NodeId, epoch: Epoch) -> String {
        format!(
            "{} declared {peer} (epoch {}) dead; restart it so it rejoins with a new epoch",
            self.me, epoch.0
        )
    }
}

enum Dial {
    Failed(String),
    Fenced(String),
}

/// Send the hello and read the answer.
fn hello_exchange(io: &mut (impl Read + Write), hello: &PeerFrame) -> Result<PeerFrame, Dial> {
    write_peer_frame(io, hello).map_err(|e| Dial::Failed(format!("hello: {e}")))?;
    io.flush()
        .map_err(|e| Dial::Failed(format!("hello: {e}")))?;
    match read_peer_frame(io, &mut Vec::new()) {
        Ok((f, _)) => Ok(f),
        Err(e) => Err(Dial::Failed(format!("waiting for the welcome: {e}"))),
    }
}

/// Read the first frame of an inbound connection, refusing anything larger than a hello.
fn read_hello(s: &mut impl Read) -> Result<(PeerFrame, usize), String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 64 {
        return Err(format!("a first frame of {len} bytes is not a hello"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    pagemesh_proto::peer::decode_peer_frame(&body)
        .map(|f| (f, 4 + len))
        .map_err(|e| e.to_string())
}

/// Whether the page a message carries (if any) is exactly one page.
pub(super) fn page_sized(m: &pagemesh_core::Msg) -> bool {
    match m {
        pagemesh_core::Msg::Grant {
            data: Some(pagemesh_core::PageData::Bytes(b)),
            ..
        }
        | pagemesh_core::Msg::FetchReply {
            copy: Some((_, pagemesh_core::PageData::Bytes(b))),
            ..
        } => b.len() == pagemesh_types::PAGE_SIZE as usize,
        _ => true,
    }
}

pub(super) fn msg_data(m: &mut pagemesh_core::Msg) -> Option<&mut pagemesh_core::PageData> {
    match m {
        pagemesh_core::Msg::Grant { data: Some(d), .. } => Some(d),
        pagemesh_core::Msg::FetchReply {
            copy: Some((_, d)), ..
        } => Some(d),
        _ => None,
    }
}
