//! The cluster's certificate authority, as `pagemesh cluster ca init` and `cluster ca issue`
//! make it: a directory holding the CA's certificate and key and a small versioned description
//! (`pki.toml`: format version, cluster id), and one certificate and key per node issued from it.
//!
//! The CA is constrained to this cluster's names (`cluster-ID` and below), so even a CA key
//! shared by mistake with another cluster cannot vouch for its nodes. Keys are ECDSA P-256,
//! written 0600 and never overwritten.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use pagemesh_types::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
};
use time::{Duration, OffsetDateTime};

use crate::tls::node_name;

/// The version of `pki.toml` this build writes and reads.
pub const PKI_FORMAT_VERSION: u32 = 1;
/// How long a CA certificate is valid.
const CA_DAYS: i64 = 10 * 365;
/// How long a node certificate is valid.
const NODE_DAYS: i64 = 5 * 365;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const DESCRIPTION: &str = "pki.toml";

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{} exists already; a CA is made once (remove the directory to start over)", path.display())]
    Exists { path: PathBuf },
    #[error(
        "{} is format version {found}; this pagemesh reads version {PKI_FORMAT_VERSION}",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{}: {cause}", path.display())]
    Malformed { path: PathBuf, cause: String },
    #[error("making a certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

/// What `issue` wrote.
#[derive(Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name the certificate carries.
    pub name: String,
    pub not_after: OffsetDateTime,
}

/// Make a new CA for cluster `cluster_id` in `dir` (created if missing). Returns the CA
/// certificate's path.
pub fn init(dir: &Path, cluster_id: u64) -> Result<PathBuf, PkiError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| PkiError::Io { path, cause }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for f in [CA_CERT, CA_KEY, DESCRIPTION] {
        let p = dir.join(f);
        if p.exists() {
            return Err(PkiError::Exists { path: p });
        }
    }
    let key = KeyPair::generate()?;
    let mut params = ca_params(cluster_id);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CA_DAYS);
    let cert = params.self_signed(&key)?;
    write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
    let desc = format!(
        "# pagemesh cluster CA (written by `pagemesh cluster ca init`)\n\
         format_version = {PKI_FORMAT_VERSION}\ncluster_id = {cluster_id}\n"
    );
    write_new(&dir.join(DESCRIPTION), desc.as_bytes(), 0o644)?;
    Ok(dir.join(CA_CERT))
}

/// Issue node `node`'s certificate and key from the CA in `dir`, into `dir` as
/// `node-N.pem` and `node-N.key`.
pub fn issue(dir: &Path, node: NodeId) -> Result<Issued, PkiError> {
    let cluster_id = read_description(&dir.join(DESCRIPTION))?;
    let key_path = dir.join(CA_KEY);
    let ca_key_pem = std::fs::read_to_string(&key_path).map_err(|cause| PkiError::Io {
        path: key_path.clone(),
        cause,
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| PkiError::Malformed {
        path: key_path,
        cause: e.to_string(),
    })?;
    // The issuer is named by its distinguished name and key: the same parameters and key
    // sign exactly as the CA certificate on disk does.
    let issuer = ca_params(cluster_id).self_signed(&ca_key)?;
    let name = node_name(node, cluster_id);
    let mut params = CertificateParams::new(vec![name.clone()])?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, name.clone());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(NODE_DAYS);
    let not_after = params.not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    let stem = format!("node-{}", node.0);
    let (cert_path, node_key) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    write_new(&node_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: node_key,
        name,
        not_after,
    })
}

/// The CA's certificate parameters, validity aside (the same at init and at every issue).
fn ca_params(cluster_id: u64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(
        DnType::CommonName,
        format!("pagemesh cluster {cluster_id:016x} CA"),
    );
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(format!(
            "cluster-{cluster_id:016x}"
        ))],
        excluded_subtrees: Vec::new(),
    });
    p
}

fn read_description(path: &Path) -> Result<u64, PkiError> {
    let text = std::fs::read_to_string(path).map_err(|cause| PkiError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let malformed = |cause: String| PkiError::Malformed {
        path: path.to_path_buf(),
        cause,
    };
    let value = |key: &str| -> Result<u64, PkiError> {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .ok_or_else(|| malformed(format!("no {key}")))?
            .1
            .trim()
            .parse()
            .map_err(|e| malformed(format!("{key}: {e}")))
    };
    let version = value("format_version")?;
    if version != u64::from(PKI_FORMAT_VERSION) {
        return Err(PkiError::Version {
            path: path.to_path_buf(),
            found: u32::try_from(version).unwrap_or(u32::MAX),
        });
    }
    value("cluster_id")
}

/// Write a file that must not exist yet, with `mode`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |cause: std::io::Error| match cause.kind() {
        std::io::ErrorKind::AlreadyExists => PkiError::Exists {
            path: path.to_path_buf(),
        },
        _ => PkiError::Io {
            path: path.to_path_buf(),
            cause,
        },
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{PeerTls, TlsFiles};

    fn files(dir: &Path, n: u32) -> TlsFiles {
        TlsFiles {
            cert: dir.join(format!("node-{n}.pem")),
            key: dir.join(format!("node-{n}.key")),
            ca: dir.join(CA_CERT),
        }
    }

    #[test]
    fn issued_certificates_load_for_their_node_only() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), 7).unwrap();
        let got = issue(d.path(), NodeId(2)).unwrap();
        assert_eq!(got.name, "node-2.cluster-0000000000000007");
        PeerTls::load(&files(d.path(), 2), NodeId(2), 7).unwrap();
        let wrong_node = PeerTls::load(&files(d.path(), 2), NodeId(3), 7)
            .err()
            .unwrap();
        assert!(
            wrong_node
                .to_string()
                .contains("node-3.cluster-0000000000000007"),
            "{wrong_node}"
        );
        let wrong_cluster = PeerTls::load(&files(d.path(), 2), NodeId(2), 8)
            .err()
            .unwrap();
        assert!(matches!(
            wrong_cluster,
            crate::tls::TlsError::NotThisNode { .. }
        ));
    }

    #[test]
    fn a_certificate_from_another_ca_does_not_load() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        init(a.path(), 7).unwrap();
        init(b.path(), 7).unwrap();
        issue(a.path(), NodeId(1)).unwrap();
        let mut f = files(a.path(), 1);
        f.ca = b.path().join(CA_CERT);
        let e = PeerTls::load(&f, NodeId(1), 7).err().unwrap();
        assert!(matches!(e, crate::tls::TlsError::NotFromCa { .. }), "{e}");
    }

    #[test]
    fn the_ca_is_made_once_and_its_version_checked() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), 7).unwrap();
        assert!(matches!(init(d.path(), 7), Err(PkiError::Exists { .. })));
        issue(d.path(), NodeId(1)).unwrap();
        assert!(matches!(
            issue(d.path(), NodeId(1)),
            Err(PkiError::Exists { .. })
        ));
        std::fs::write(
            d.path().join(DESCRIPTION),
            "format_version = 9\ncluster_id = 7\n",
        )
        .unwrap();
        let e = issue(d.path(), NodeId(2)).unwrap_err();
        assert!(e.to_string().contains("format version 9"), "{e}");
    }
}
