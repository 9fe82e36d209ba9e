//! TLS for every listener and client: rustls with the ring provider (no
//! OpenSSL), a private CA per deployment (`gridsync provision --tls`, made
//! with rcgen), server certificates per node, and children verifying their
//! parent's certificate against that CA only.
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

/// A fresh key and the certificate parameters of node `node` for `hosts`.
fn node_key_and_params(
    node: &str,
    hosts: &[String],
) -> Result<(rcgen::KeyPair, rcgen::CertificateParams), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| format!("{node}: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("gridsync node {node}"));
    Ok((key, params))
}

/// A TLS key made on the node's own machine and a request for a
/// certificate for it: `(request PEM, key PEM)`.
///
/// # Errors
/// Key generation failed or a bad host.
pub fn node_request(node: &str, hosts: &[String]) -> Result<(String, String), String> {
    let (key, params) = node_key_and_params(node, hosts)?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("{node}: {e}"))?;
    let pem = csr.pem().map_err(|e| format!("{node}: {e}"))?;
    Ok((pem, key.serialize_pem()))
}

/// A deployment's private certificate authority.
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    /// A new CA (its key stays with whoever provisions).
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn generate(name: &str) -> Result<Self, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("gridsync CA {name}"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA written earlier by [`Ca::generate`] (to issue more
    /// certificates under the same trust).
    ///
    /// # Errors
    /// Files that are not a CA certificate and its key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| format!("CA key: {e}"))?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| format!("CA certificate: {e}"))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Signs a certificate for the key in `csr_pem` (made by `gridsync init
    /// --tls-host` on the node's own machine, whose private key never
    /// leaves it), valid for `hosts` only whatever the request asked for.
    ///
    /// # Errors
    /// Not a valid, self-signed request; a bad host.
    pub fn sign_csr(&self, node: &str, csr_pem: &str, hosts: &[String]) -> Result<String, String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("{node}: not a valid certificate request: {e}"))?;
        let fresh =
            rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| format!("{node}: {e}"))?;
        csr.params.subject_alt_names = fresh.subject_alt_names;
        csr.params.is_ca = rcgen::IsCa::NoCa;
        csr.params.distinguished_name = rcgen::DistinguishedName::new();
        csr.params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("gridsync node {node}"));
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| format!("{node}: {e}"))?;
        Ok(cert.pem())
    }

    /// A server certificate for `node` valid for `hosts` (IP addresses or
    /// DNS names): `(certificate PEM, key PEM)`.
    ///
    /// # Errors
    /// A host that is neither, or signing failed.
    pub fn node_cert(&self, node: &str, hosts: &[String]) -> Result<(String, String), String> {
        let (key, params) = node_key_and_params(node, hosts)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("{node}: {e}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}
