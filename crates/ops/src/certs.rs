//! The deployment's private certificate authority and node certificates
//! (rcgen): made by `gridsync provision --tls` and `gridsync init
//! --tls-host`, never by a running node, so the runtime does not link a
//! certificate generator.

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
