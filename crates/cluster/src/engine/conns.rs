//! Inbound peer connections: reading their frames into the core, closing the silent and the broken.

use std::time::{Duration, Instant};

use pagemesh_proto::peer::{decode_peer_frame, PeerFrame, MAX_PEER_FRAME_BYTES};
use pagemesh_types::NodeId;

use crate::fatal::{self, Fatal};
use crate::peer_stream::Drained;
use crate::transport::page_sized;

use super::{Engine, CONN_TOKEN, READ_PER_WAKE};

impl Engine {
    pub(super) fn conn_ready(&mut self, id: u64) {
        let mut closed: Option<String> = {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            match c.stream.read_available(&mut c.buf, READ_PER_WAKE) {
                Drained::Later => None,
                Drained::Closed(why) => Some(why),
            }
        };
        // Take whole frames out and act on each.
        let mut at = 0usize;
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let buf = &c.buf[at..];
            if buf.len() < 4 {
                break;
            }
            let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
            if len > MAX_PEER_FRAME_BYTES {
                closed = Some(format!("a frame of {len} bytes (over the limit)"));
                break;
            }
            let total = 4 + len as usize;
            if buf.len() < total {
                break;
            }
            let (from, epoch) = (c.from, c.epoch);
            let frame = decode_peer_frame(&buf[4..total]);
            c.last_frame = Instant::now();
            at += total;
            self.transport.heard(from, total);
            match frame {
                Ok(PeerFrame::Heartbeat { sent_ms, echo_ms }) => {
                    self.transport.on_heartbeat(from, sent_ms, echo_ms);
                }
                Ok(PeerFrame::Protocol(env)) if !page_sized(&env.msg) => {
                    closed = Some(format!(
                        "a page of the wrong size in {} (a bug or a lying peer)",
                        env.msg
                    ));
                    break;
                }
                Ok(PeerFrame::Protocol(env)) if env.from_epoch != epoch => {
                    closed = Some(format!(
                        "an envelope of epoch {} on a connection of epoch {} (a bug or a lying peer)",
                        env.from_epoch.0, epoch.0
                    ));
                    break;
                }
                Ok(PeerFrame::Protocol(env)) if env.from == from && env.to == self.me() => {
                    let now = self.now();
                    self.node.step(now, env);
                    self.pump();
                }
                Ok(PeerFrame::Control(msg)) => {
                    self.control(from, msg);
                    self.pump();
                }
                Ok(PeerFrame::Refused {
                    reason,
                    fenced: true,
                }) => {
                    // The peer dialled this node, found an incarnation it declared dead, and
                    // says so (the link came back after a partition past the limit).
                    let epoch = self.node.epoch().0;
                    fatal::stop(Fatal::Fenced {
                        by: from,
                        reason,
                        epoch,
                    })
                }
                Ok(other) => {
                    closed = Some(format!(
                        "unexpected frame {other:?} (a bug or a lying peer)"
                    ));
                    break;
                }
                Err(e) => {
                    closed = Some(format!("{e} (a bug or a lying peer)"));
                    break;
                }
            }
        }
        if let Some(c) = self.conns.get_mut(&id) {
            c.buf.drain(..at);
        }
        match closed {
            Some(why) => self.close_conn(id, &why),
            None => {
                if let Some(c) = self.conns.get(&id) {
                    let _ = self.epoll.rearm(c.stream.fd(), CONN_TOKEN | id);
                }
            }
        }
    }

    pub(super) fn close_conn(&mut self, id: u64, why: &str) {
        if let Some(c) = self.conns.remove(&id) {
            log::info!("{}: inbound connection closed: {why}", c.from);
            let _ = self.epoll.remove(c.stream.fd());
            c.stream.shutdown();
        }
    }

    /// Inbound connections that stayed silent (no heartbeat) for the dead-peer limit are over;
    /// the peer redials.
    pub(super) fn close_silent_conns(&mut self) {
        let limit = Duration::from_millis(self.dead_after_ms);
        let silent: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_frame.elapsed() > limit)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            self.close_conn(id, "silent for the dead-peer limit");
        }
    }

    pub(super) fn send_peer(&mut self, to: NodeId, frame: PeerFrame) {
        let mut buf = std::mem::take(&mut self.sendbuf);
        self.transport.send(to, &frame, &mut buf);
        self.sendbuf = buf;
    }
}
