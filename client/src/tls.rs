//! Mutual TLS to a txlog cluster: the files a client (or a node, when it
//! calls its peers) presents and trusts.
//!
//! Every txlog listener asks for a client certificate from the cluster CA
//! (`txlog certs init` makes the CA, `txlog certs issue` the node and
//! client certificates). A client trusts only that CA and checks that the
//! node it reached holds a *node* certificate: every node certificate is
//! valid for [`NODE_SERVER_NAME`], and no client certificate is, so a
//! stolen client certificate cannot impersonate a node. The address a
//! client dials plays no part in the check; nodes move between hosts
//! without new certificates.

use std::path::Path;
use std::path::PathBuf;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::PrivateKeyDer;
use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Identity;

/// The DNS name every node certificate is valid for, and that clients and
/// peers ask the node they reach to prove.
pub const NODE_SERVER_NAME: &str = "node.txlog";
/// A certificate or key file larger than this is not one (a chain of a few
/// certificates is a few KiB).
pub const TLS_FILE_BYTES_MAX: u64 = 1 << 20;

/// Where the three PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate: the only issuer trusted.
    pub ca: PathBuf,
    /// This party's certificate (chain), issued by the cluster CA.
    pub cert: PathBuf,
    /// Its private key; mode 0600 (group and others may not read it).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The layout `txlog certs` writes: `ca.pem`, `NAME.pem`, `NAME.key`,
    /// where NAME is `node-…` or `client-…`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// Read and check the three files: each parses as PEM of the right
    /// kind, and the key file is private. The chain itself is checked by
    /// the other side at the handshake (and by a node at load).
    pub fn read(&self) -> Result<TlsPem, String> {
        let ca = read_pem_file(&self.ca, "CA certificate", false)?;
        let cert = read_pem_file(&self.cert, "certificate", false)?;
        let key = read_pem_file(&self.key, "private key", true)?;
        let pem = TlsPem { ca, cert, key };
        pem.ca_certificates()
            .map_err(|e| format!("{}: {e}", self.ca.display()))?;
        pem.certificate_chain()
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
        pem.private_key().map_err(|e| format!("{}: {e}", self.key.display()))?;
        Ok(pem)
    }
}

/// The contents of [`TlsFiles`], read and checked.
#[derive(Clone)]
pub struct TlsPem {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsPem")
            .field("ca_bytes", &self.ca.len())
            .finish_non_exhaustive()
    }
}

impl TlsPem {
    pub fn ca_certificates(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        certificates(&self.ca)
    }

    pub fn certificate_chain(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        certificates(&self.cert)
    }

    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, String> {
        PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| format!("no private key: {e}"))
    }

    /// What a client presents and trusts: this certificate, the cluster CA,
    /// and a node certificate on the other end.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(NODE_SERVER_NAME)
    }
}

/// The endpoint for `address` (`HOST:PORT`): `https` with `tls`, else
/// plain `http`. The one place a dialler picks its scheme.
pub fn endpoint(address: &str, tls: Option<ClientTlsConfig>) -> Result<tonic::transport::Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("{address}: {e}"))?;
    match tls {
        Some(tls) => endpoint.tls_config(tls).map_err(|e| format!("{address}: TLS: {e}")),
        None => Ok(endpoint),
    }
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

fn read_pem_file(path: &Path, what: &str, private: bool) -> Result<Vec<u8>, String> {
    crate::local_file::read_bounded(path, &format!("TLS {what}"), TLS_FILE_BYTES_MAX, private)
}
