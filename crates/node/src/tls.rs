//! TLS for every listener and client: rustls with the ring provider (no
//! OpenSSL), server certificates per node issued by the deployment's private
//! CA (made by `gridsync_ops::certs`), and children verifying their parent's
//! certificate against that CA only.
//!
//! The sync handshake is bound to the TLS channel: both proofs sign a value
//! exported from the session (RFC 5705 keying material exporter, as RFC
//! 9266 does for SCRAM), so a handshake relayed by a man in the middle —
//! even one holding a certificate the child trusts — fails.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Label of the keying material the sync proofs are bound to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-gridsync-sync-v1";

/// Installs the ring crypto provider for rustls (once per process).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))
}

/// The certificates in a PEM file.
///
/// # Errors
/// Unreadable file or no certificate in it.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: holds no certificate"));
    }
    Ok(certs)
}

/// A server configuration from a PEM certificate chain and key.
///
/// # Errors
/// Unreadable or mismatched files, with which one.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    install_provider();
    let chain = certs_from_pem(&read(cert, "certificate")?, &cert.display().to_string())?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key, "key")?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "{} and {} do not make a TLS identity: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// A client configuration trusting only the CA certificates in `ca_pem`.
///
/// # Errors
/// No usable certificate in it.
pub fn client_config(ca_pem: &[u8], what: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem(ca_pem, what)? {
        roots
            .add(c)
            .map_err(|e| format!("{what}: not a usable CA certificate: {e}"))?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A client configuration for HTTP tools (`audit replay --url`, `load`,
/// tests): trusting only the CA certificates in `ca_pem`, or nothing at all
/// without one (so an `https` URL fails rather than trusting the system's
/// roots by accident).
///
/// # Errors
/// No usable certificate in `ca_pem`.
pub fn tool_client_config(
    ca_pem: Option<&[u8]>,
    what: &str,
) -> Result<rustls::ClientConfig, String> {
    match ca_pem {
        Some(pem) => client_config(pem, what).map(|c| (*c).clone()),
        None => {
            install_provider();
            Ok(rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth())
        }
    }
}

/// The TLS channel a request or sync socket arrived on: keying material
/// exported from its session (`None` on plain HTTP). Put into every
/// request's extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ChannelBinding(pub Option<[u8; 32]>);

/// The 32 bytes of keying material both ends of a TLS session share.
pub fn exporter<D>(conn: &rustls::ConnectionCommon<D>) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let ok = conn
        .export_keying_material(&mut out, EXPORTER_LABEL, None)
        .is_ok();
    ok.then_some(out)
}
