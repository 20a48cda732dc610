//! TLS towards upstreams: one `ClientConfig` per `tls` service, honouring
//! `tls_verify`, `tls_verify_depth`, `ca_certificates` and `client_certificate`.
//!
//! Verification is off unless the service turns it on (Kong leaves nginx's
//! default, off). When on, the chain is checked against the service's CA
//! certificates, or the system's roots when it names none, and the name checked
//! is the one sent as SNI (or the IP address when there is no SNI).

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use strait_model::KeyPair;

use crate::TlsError;

/// How a service wants its upstream TLS.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsOptions<'a> {
    pub verify: bool,
    /// Largest number of CA certificates above the leaf, trust anchor included.
    pub verify_depth: Option<u8>,
    /// Trust anchors; empty means the system's roots.
    pub ca_certificates: Vec<&'a CertificateDer<'static>>,
    pub client_certificate: Option<&'a KeyPair>,
}

fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "could not load a system root certificate");
            }
            let mut store = RootCertStore::empty();
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "loaded system root certificates");
            Arc::new(store)
        })
        .clone()
}

/// Builds the client configuration for one service.
pub fn client_config(opts: &UpstreamTlsOptions<'_>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crate::provider();
    let roots = if opts.ca_certificates.is_empty() {
        if opts.verify { system_roots() } else { Arc::new(RootCertStore::empty()) }
    } else {
        let mut store = RootCertStore::empty();
        for ca in &opts.ca_certificates {
            store.add((*ca).clone()).map_err(|e| TlsError::Config(format!("unusable CA certificate: {e}")))?;
        }
        Arc::new(store)
    };
    let verifier =
        Arc::new(Verifier { roots, verify: opts.verify, depth: opts.verify_depth, provider: provider.clone() });
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match opts.client_certificate {
        Some(pair) => builder
            .with_client_auth_cert(pair.chain.clone(), pair.key.clone_key())
            .map_err(|e| TlsError::Key(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Verifier {
    roots: Arc<RootCertStore>,
    verify: bool,
    depth: Option<u8>,
    provider: Arc<CryptoProvider>,
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    rustls::Error::InvalidCertificate(match e {
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::CertNotValidForName(_) => CertificateError::NotValidForName,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::MaximumPathDepthExceeded => CertificateError::Other(rustls::OtherError(Arc::new(DepthExceeded))),
        other => CertificateError::Other(rustls::OtherError(Arc::new(WebpkiError(other)))),
    })
}

#[derive(Debug)]
struct DepthExceeded;
impl std::fmt::Display for DepthExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("certificate chain is longer than tls_verify_depth allows")
    }
}
impl std::error::Error for DepthExceeded {}

#[derive(Debug)]
struct WebpkiError(webpki::Error);
impl std::fmt::Display for WebpkiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl std::error::Error for WebpkiError {}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.verify {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let depth = self.depth;
        let check_depth = move |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
            match depth {
                Some(d) if path.intermediate_certificates().count() + 1 > usize::from(d) => {
                    Err(webpki::Error::MaximumPathDepthExceeded)
                }
                _ => Ok(()),
            }
        };
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            Some(&check_depth),
        )
        .map_err(pki_error)?;
        cert.verify_is_valid_for_subject_name(server_name).map_err(pki_error)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
