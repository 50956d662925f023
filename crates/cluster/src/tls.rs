//! Authenticated, encrypted peer links: TLS 1.3 (rustls, ring) with a certificate per node from
//! the cluster's CA (made by [`crate::pki`]).
//!
//! A node's identity is its certificate's: a node's certificate names it `node-N.cluster-ID`
//! (a DNS SAN, N the node id, ID the cluster id in hex), the dialler checks the listener's
//! certificate against the name of the node it dials, and the listener finds which peer the
//! dialler's certificate names and refuses a hello that claims any other. Both ends require a
//! certificate chained to the cluster CA; no other root is trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pagemesh_types::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};

/// Where a node's credentials are (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate (issued by `pagemesh cluster ca issue`).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The cluster CA's certificate: the only root peers are checked against.
    pub ca: PathBuf,
}

/// Why a node's credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {}: {cause}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        cause: String,
    },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "the certificate {} is not node {node}'s in cluster {cluster_id:#x} (it must name {name}): \
         {cause}; issue one with `pagemesh cluster ca issue --node {node}`",
        path.display()
    )]
    NotThisNode {
        path: PathBuf,
        node: u32,
        cluster_id: u64,
        name: String,
        cause: String,
    },
    #[error(
        "the certificate {} is not one the cluster CA {} vouches for now: {cause}",
        path.display(), ca.display()
    )]
    NotFromCa {
        path: PathBuf,
        ca: PathBuf,
        cause: String,
    },
    #[error("setting up TLS: {0}")]
    Config(String),
}

/// The DNS name a node's certificate carries.
pub fn node_name(node: NodeId, cluster_id: u64) -> String {
    format!("node-{}.cluster-{cluster_id:016x}", node.0)
}

/// A node's TLS set-up: one client config (dialling) and one server config (listening).
pub struct PeerTls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    cluster_id: u64,
}

impl PeerTls {
    /// Load and check this node's credentials: the certificate must chain to the CA and name
    /// this node in this cluster (a node started with another node's certificate stops here,
    /// not at its first handshake).
    pub fn load(files: &TlsFiles, me: NodeId, cluster_id: u64) -> Result<PeerTls, TlsError> {
        let chain = read_certs(&files.cert, "the node certificate")?;
        let ca = read_certs(&files.ca, "the cluster CA certificate")?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Read {
            what: "the node key",
            path: files.key.clone(),
            cause: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots
                .add(c)
                .map_err(|e| TlsError::Config(format!("the CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let name = node_name(me, cluster_id);
        names(&chain[0], &name).map_err(|cause| TlsError::NotThisNode {
            path: files.cert.clone(),
            node: me.0,
            cluster_id,
            name: name.clone(),
            cause,
        })?;
        // ring, not aws-lc-rs: no C library build on every node. rustls deprecates it for
        // lacking the post-quantum hybrid key exchange (docs/cluster.md, "Peer links").
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError::Config(format!("the peer verifier: {e}")))?;
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::Config(format!("the node certificate and key: {e}")))?;
        // Inbound links are read-only after the welcome: nothing for tickets to resume.
        server.send_tls13_tickets = 0;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("the node certificate and key: {e}")))?;
        check_chain(files, &server, &client, me, cluster_id)?;
        Ok(PeerTls {
            client: Arc::new(client),
            server: Arc::new(server),
            cluster_id,
        })
    }

    /// A client session for dialling `peer`: the peer must present `peer`'s certificate.
    pub fn dial(&self, peer: NodeId) -> Result<ClientConnection, String> {
        let name = ServerName::try_from(node_name(peer, self.cluster_id))
            .map_err(|e| format!("the name of {peer}: {e}"))?;
        ClientConnection::new(Arc::clone(&self.client), name).map_err(|e| e.to_string())
    }

    /// A server session for an inbound connection.
    pub fn accept(&self) -> Result<ServerConnection, String> {
        ServerConnection::new(Arc::clone(&self.server)).map_err(|e| e.to_string())
    }

    /// Which of `peers` the dialler's (already verified) certificate names, if exactly one.
    pub fn identity(
        &self,
        conn: &ServerConnection,
        peers: impl Iterator<Item = NodeId>,
    ) -> Result<NodeId, String> {
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("the peer presented no certificate")?;
        let mut named = peers.filter(|&p| names(cert, &node_name(p, self.cluster_id)).is_ok());
        match (named.next(), named.next()) {
            (Some(p), None) => Ok(p),
            (None, _) => Err(format!(
                "its certificate names no node of this cluster's peer list (cluster {:#x})",
                self.cluster_id
            )),
            (Some(_), Some(_)) => Err("its certificate names more than one node".into()),
        }
    }
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            what,
            path: path.to_path_buf(),
            cause: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Whether `cert` is valid for the DNS name `name`.
fn names(cert: &CertificateDer<'_>, name: &str) -> Result<(), String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| e.to_string())?;
    let sn = ServerName::try_from(name).map_err(|e| e.to_string())?;
    ee.verify_is_valid_for_subject_name(&sn)
        .map_err(|e| format!("{e:?}"))
}

/// Prove the node's own certificate chains to the CA by a handshake with itself in memory:
/// a certificate from another CA (or expired) fails here, at start, with its cause.
fn check_chain(
    files: &TlsFiles,
    server: &ServerConfig,
    client: &ClientConfig,
    me: NodeId,
    cluster_id: u64,
) -> Result<(), TlsError> {
    let not_this = |cause: String| TlsError::NotFromCa {
        path: files.cert.clone(),
        ca: files.ca.clone(),
        cause,
    };
    let name =
        ServerName::try_from(node_name(me, cluster_id)).map_err(|e| not_this(e.to_string()))?;
    let mut c: Connection = ClientConnection::new(Arc::new(client.clone()), name)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .into();
    let mut s: Connection = ServerConnection::new(Arc::new(server.clone()))
        .map_err(|e| TlsError::Config(e.to_string()))?
        .into();
    // A TLS 1.3 handshake with client authentication takes three flights; allow a few more.
    for _ in 0..8 {
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
        pass(&mut c, &mut s).map_err(not_this)?;
        pass(&mut s, &mut c).map_err(not_this)?;
    }
    Err(not_this("the handshake with itself did not finish".into()))
}

/// Move what `from` wants to send into `to`.
fn pass(from: &mut Connection, to: &mut Connection) -> Result<(), String> {
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).map_err(|e| e.to_string())?;
    }
    let mut rd = &bytes[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).map_err(|e| e.to_string())?;
    }
    to.process_new_packets().map_err(|e| e.to_string())?;
    Ok(())
}
