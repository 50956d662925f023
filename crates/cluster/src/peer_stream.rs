//! The bytes of a peer connection, plaintext or TLS: sealing what this node sends (outbound
//! links are written only), and reading what a peer sends (inbound links are read only, by the
//! engine, without blocking).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};

use rustls::{ClientConnection, ServerConnection};

/// Encrypt `plain` into TLS records appended to `out`. Records come out in the order frames
/// are sealed, so every caller seals and queues under one lock.
pub fn seal(tls: &mut ClientConnection, plain: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    tls.writer().write_all(plain)?;
    while tls.wants_write() {
        tls.write_tls(out)?;
    }
    Ok(())
}

/// Finish a TLS handshake on a blocking socket (its timeouts bound it).
pub fn handshake<D: rustls::SideData>(
    tls: &mut rustls::ConnectionCommon<D>,
    s: &mut TcpStream,
) -> std::io::Result<()> {
    while tls.is_handshaking() {
        tls.complete_io(s)?;
    }
    Ok(())
}

/// What one read of an inbound connection found.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Nothing more now (the socket would block, or `max` bytes were taken).
    Later,
    /// The peer closed the connection (or it failed): the reason.
    Closed(String),
}

/// The read side of an inbound peer connection.
pub struct InboundStream {
    tcp: TcpStream,
    tls: Option<Box<ServerConnection>>,
}

impl InboundStream {
    pub fn new(tcp: TcpStream, tls: Option<Box<ServerConnection>>) -> Self {
        InboundStream { tcp, tls }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.tcp.as_fd()
    }

    pub fn shutdown(&self) {
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
    }

    /// Append the plaintext available now to `buf`, taking about `max` bytes at most.
    pub fn read_available(&mut self, buf: &mut Vec<u8>, max: usize) -> Drained {
        let start = buf.len();
        while buf.len() - start < max {
            let r = match self.tls.as_deref_mut() {
                Some(tls) => read_tls(tls, &self.tcp, buf),
                None => read_plain(&self.tcp, buf),
            };
            match r {
                Ok(0) => return Drained::Closed("closed by the peer".into()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Drained::Later,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Drained::Closed(e.to_string()),
            }
        }
        Drained::Later
    }
}

fn read_plain(tcp: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut tmp = [0u8; 64 << 10];
    let n = (&*tcp).read(&mut tmp)?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

/// One read of TLS records, decrypted into `buf`. Ok(0) at the end of the stream.
fn read_tls(
    tls: &mut ServerConnection,
    tcp: &TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let n = tls.read_tls(&mut &*tcp)?;
    let state = tls
        .process_new_packets()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
    let plain = state.plaintext_bytes_to_read();
    let old = buf.len();
    buf.resize(old + plain, 0);
    tls.reader().read_exact(&mut buf[old..])?;
    if n == 0 || (plain == 0 && state.peer_has_closed()) {
        return Ok(0);
    }
    // Records in, no plaintext yet (a partial record): not the end.
    Ok(n)
}
