//! Client certificates on terminated TLS (mtls-auth): verification against
//! chosen CA certificates, optionally narrowed to allowed names, so that a
//! missing, untrusted or unlisted certificate fails the handshake itself.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{CertStore, Resumption, TlsError};

/// What a server configuration asks of client certificates: the verifier,
/// and a digest of what it accepts (two that accept the same may resume each
/// other's sessions; see [`crate::Resumption`]).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    verifier: Arc<dyn ClientCertVerifier>,
    identity: u64,
}

impl ClientAuth {
    /// `identity` names everything `verifier` decides on (its CAs, names,
    /// settings), and `kind` the code that decides (a plugin's name):
    /// sessions are resumed, without verifying again, only under a
    /// configuration whose client authentication has the same kind and
    /// identity.
    pub fn new<'a>(
        verifier: Arc<dyn ClientCertVerifier>,
        kind: &'a str,
        identity: impl IntoIterator<Item = &'a [u8]>,
    ) -> ClientAuth {
        let parts = std::iter::once(kind.as_bytes()).chain(identity);
        ClientAuth { verifier, identity: crate::server::identity(parts) }
    }

    pub fn verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.verifier
    }
}

/// Verifies client certificates against `cas`; with `allowed_names`, the
/// certificate must also carry one of them as its subject CN or a SAN.
pub fn client_auth(cas: &[&CertificateDer<'static>], allowed_names: Vec<String>) -> Result<ClientAuth, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add((*ca).clone()).map_err(|e| TlsError::Config(format!("unusable CA certificate: {e}")))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // How many CAs first: the parts are length-prefixed, so CAs and names
    // cannot be mistaken for each other.
    let names = Arc::new(Names { inner, allowed: allowed_names });
    let count = cas.len().to_be_bytes();
    let parts: Vec<&[u8]> = std::iter::once(&count[..])
        .chain(cas.iter().map(|c| c.as_ref()))
        .chain(names.allowed.iter().map(|n| n.as_bytes()))
        .collect();
    Ok(ClientAuth::new(names.clone(), "mtls-auth", parts))
}

#[derive(Debug)]
struct Names {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for Names {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.is_empty() {
            return Ok(ok);
        }
        let names = certificate_names(end_entity);
        if names.iter().any(|n| self.allowed.iter().any(|a| a.eq_ignore_ascii_case(n))) {
            Ok(ok)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(NotAllowed)))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct NotAllowed;

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client certificate's names are not in allowed_names")
    }
}

impl std::error::Error for NotAllowed {}

/// The subject common names and subject alternative names (DNS, email, URI,
/// IP) of a certificate.
pub fn certificate_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_owned)).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    names.push((*s).to_owned())
                }
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        names.push(std::net::IpAddr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        names.push(std::net::IpAddr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    names
}

/// The certificate's subject, as `CN=x, O=y`.
pub fn certificate_subject(der: &CertificateDer<'_>) -> Option<String> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c.subject().to_string())
}

/// As [`crate::server_config`], requiring client certificates `auth` accepts.
pub fn server_config_with_client_auth(
    store: Arc<CertStore>,
    auth: &ClientAuth,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, TlsError> {
    let id = crate::server::identity([
        &b"client certificates"[..],
        &store.identity().to_be_bytes(),
        &auth.identity.to_be_bytes(),
    ]);
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(auth.verifier.clone())
        .with_cert_resolver(store);
    resumption.apply(&mut config, id)?;
    Ok(Arc::new(config))
}
