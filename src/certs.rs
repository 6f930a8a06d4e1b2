//! The cluster's certificates: a CA of its own, node certificates and
//! client certificates (`txlog certs init | issue`).
//!
//! **Layout** of the directory `init` makes (one per cluster; only the CA
//! key must stay secret, and it need not live on any node):
//! - `ca.pem`, `ca.key` — the CA: ECDSA P-256, valid [`CA_DAYS`] days,
//!   issues leaf certificates only (path length 0).
//! - `node-NAME.pem`, `node-NAME.key` — a node: valid for the DNS names
//!   [`NODE_SERVER_NAME`] and `NAME.node.txlog`, for server and client
//!   authentication (a node serves, and dials its peers).
//! - `client-NAME.pem`, `client-NAME.key` — a client: valid for
//!   `NAME.client.txlog`, client authentication only. It never carries
//!   [`NODE_SERVER_NAME`], which is how a node tells it from a peer.
//!
//! Keys are written mode 0600, certificates 0644, each through a new file
//! renamed into place, so a node reloading its files never reads half of
//! one. The CA files are never replaced; a leaf is replaced by `issue`
//! (that is how a certificate is renewed — the node takes it without a
//! restart).
//!
//! Every certificate `issue` writes is checked against `ca.pem` the way a
//! peer will check it, so a CA key that does not belong to `ca.pem` fails
//! here and not at a handshake.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use txlog_client::TlsFiles;
use txlog_client::NODE_SERVER_NAME;

/// How long the CA is valid.
pub const CA_DAYS: u32 = 3650;
/// How long a node or client certificate is valid unless told otherwise.
pub const LEAF_DAYS_DEFAULT: u32 = 365;
/// The longest a leaf certificate may be valid.
pub const LEAF_DAYS_MAX: u32 = CA_DAYS;
/// Certificates start this long before they are made, so a peer whose
/// clock is a little behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);
/// The CA's subject; leaves name it as their issuer.
const CA_COMMON_NAME: &str = "txlog cluster CA";

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Node,
    Client,
}

impl Holder {
    fn prefix(self) -> &'static str {
        match self {
            Holder::Node => "node",
            Holder::Client => "client",
        }
    }
}

/// The files of `holder` NAME in `dir`.
pub fn files(dir: &Path, holder: Holder, name: &str) -> TlsFiles {
    TlsFiles::in_dir(dir, &format!("{}-{name}", holder.prefix()))
}

/// A name is one DNS label: 1-63 of `[a-z0-9-]`, not starting or ending
/// with `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a certificate name: use 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
        ))
    }
}

/// Make the CA in `dir` (created if absent). Refuses to replace one.
pub fn init(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    for path in [&ca_pem, &ca_key] {
        if path.exists() {
            return Err(format!(
                "{} exists: a CA is never replaced (every certificate of the cluster hangs on it); \
                 use `txlog certs issue` to add certificates",
                path.display()
            ));
        }
    }
    let key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
    let cert = ca_params()?
        .self_signed(&key)
        .map_err(|e| format!("CA certificate: {e}"))?;
    write_new(&ca_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&ca_pem, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Issue (or renew) the certificate of `holder` NAME, valid `days` days,
/// signed by the CA in `dir`. Returns the files written.
pub fn issue(dir: &Path, holder: Holder, name: &str, days: u32) -> Result<TlsFiles, String> {
    check_name(name)?;
    if !(1..=LEAF_DAYS_MAX).contains(&days) {
        return Err(format!("--days must be 1..={LEAF_DAYS_MAX}, not {days}"));
    }
    let ca_key_path = dir.join("ca.key");
    let ca_key = std::fs::read_to_string(&ca_key_path).map_err(|e| {
        format!(
            "CA key {}: {e} (make the CA with `txlog certs init`)",
            ca_key_path.display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key).map_err(|e| format!("CA key {}: {e}", ca_key_path.display()))?;
    let issuer = Issuer::new(ca_params()?, ca_key);

    let (names, usages) = match holder {
        Holder::Node => (
            vec![NODE_SERVER_NAME.to_string(), format!("{name}.{NODE_SERVER_NAME}")],
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        ),
        Holder::Client => (
            vec![format!("{name}.client.txlog")],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        ),
    };
    let mut params = CertificateParams::new(names).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("txlog {} {name}", holder.prefix()));
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    let now = std::time::SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + Duration::from_secs(u64::from(days) * 86_400)).into();
    let key = KeyPair::generate().map_err(|e| format!("key: {e}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("certificate: {e}"))?;

    let files = files(dir, holder, name);
    check_against_ca(&files.ca, holder, cert.der())?;
    replace(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    replace(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// The CA's parameters; the same every time, so a leaf issued later names
/// the issuer `ca.pem` has as its subject.
fn ca_params() -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = std::time::SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + Duration::from_secs(u64::from(CA_DAYS) * 86_400)).into();
    Ok(params)
}

/// Check `cert` as a peer will: a node certificate as a server certificate
/// for [`NODE_SERVER_NAME`], a client certificate as a client one.
fn check_against_ca(ca_pem: &Path, holder: Holder, cert: &rustls::pki_types::CertificateDer<'_>) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier as _;
    let ca = std::fs::read(ca_pem).map_err(|e| format!("CA certificate {}: {e}", ca_pem.display()))?;
    let pem = txlog_client::TlsPem {
        ca,
        cert: Vec::new(),
        key: Vec::new(),
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem
        .ca_certificates()
        .map_err(|e| format!("{}: {e}", ca_pem.display()))?
    {
        roots.add(ca).map_err(|e| format!("{}: {e}", ca_pem.display()))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let now = rustls::pki_types::UnixTime::now();
    let checked = match holder {
        Holder::Node => rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())?
            .verify_server_cert(
                cert,
                &[],
                &rustls::pki_types::ServerName::try_from(NODE_SERVER_NAME).expect("a DNS name"),
                &[],
                now,
            )
            .map(|_| ()),
        Holder::Client => rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())?
            .verify_client_cert(cert, &[], now)
            .map(|_| ()),
    };
    checked.map_err(|e| {
        format!(
            "the new certificate does not verify against {}: {e} (is ca.key the key of that CA?)",
            ca_pem.display()
        )
    })
}

/// Write a file that must not exist yet.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// Write `path` whole, through a new file renamed over it.
fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut staged = PathBuf::from(path);
    staged.as_mut_os_string().push(".new");
    let _ = std::fs::remove_file(&staged);
    write_new(&staged, bytes, mode)?;
    std::fs::rename(&staged, path).map_err(|e| format!("rename {} to {}: {e}", staged.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, a node and a client: the node's files load as a node's (and
    /// its certificate is a node certificate), the client's do not, and
    /// a client certificate is never taken for a node's.
    #[test]
    fn issued_certificates_load_and_tell_nodes_from_clients() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        assert!(init(dir.path()).unwrap_err().contains("never replaced"));
        let node = issue(dir.path(), Holder::Node, "paris", 30).unwrap();
        let client = issue(dir.path(), Holder::Client, "risk-1", 30).unwrap();
        crate::tls::load(&node).unwrap();
        let err = crate::tls::load(&client)
            .err()
            .expect("a client certificate cannot serve");
        assert!(err.contains("not a node certificate"), "{err}");
        let node_cert = node.read().unwrap().certificate_chain().unwrap();
        let client_cert = client.read().unwrap().certificate_chain().unwrap();
        assert!(crate::tls::is_node_certificate(&node_cert[0]));
        assert!(!crate::tls::is_node_certificate(&client_cert[0]));
        use std::os::unix::fs::PermissionsExt as _;
        for key in [&node.key, &client.key, &dir.path().join("ca.key")] {
            assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Renewal replaces the leaf; it still loads.
        issue(dir.path(), Holder::Node, "paris", 30).unwrap();
        crate::tls::load(&node).unwrap();
    }

    /// Another cluster's CA key cannot issue for this CA, names are DNS
    /// labels, and validity is bounded.
    #[test]
    fn foreign_ca_and_bad_input_refused() {
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        init(ours.path()).unwrap();
        init(theirs.path()).unwrap();
        std::fs::copy(theirs.path().join("ca.key"), ours.path().join("ca.key")).unwrap();
        let err = issue(ours.path(), Holder::Node, "paris", 30).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        assert!(!ours.path().join("node-paris.pem").exists(), "nothing written");
        for bad in ["", "Paris", "-x", "x-", "a.b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(issue(theirs.path(), Holder::Client, "x", 0).is_err());
        assert!(issue(theirs.path(), Holder::Client, "x", LEAF_DAYS_MAX + 1).is_err());
    }
}
