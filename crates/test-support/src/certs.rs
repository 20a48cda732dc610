//! Certificates for tests: a CA that signs leaves for given names, and
//! rustls configurations built from them.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert.as_bytes()).collect::<Result<_, _>>().expect("test certificate PEM")
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key.as_bytes()).expect("test key PEM")
    }

    /// The leaf's DER bytes, to compare with what a peer presented.
    pub fn leaf_der(&self) -> Vec<u8> {
        self.chain()[0].as_ref().to_vec()
    }
}

/// A test certificate authority.
#[derive(Debug)]
pub struct TestCa {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem = Pem { cert: cert.pem(), key: key.serialize_pem() };
        TestCa { pem, issuer: Issuer::new(params, key) }
    }

    /// A leaf for `names` (DNS names or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Pem {
        let key = KeyPair::generate().expect("leaf key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        Pem { cert: cert.pem(), key: key.serialize_pem() }
    }

    /// A leaf for `names` valid from yesterday for `days` more days.
    pub fn leaf_for_days(&self, names: &[&str], days: u64) -> Pem {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(86_400)).into();
        params.not_after = (now + std::time::Duration::from_secs(days * 86_400 + 3_600)).into();
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        Pem { cert: cert.pem(), key: key.serialize_pem() }
    }

    /// A leaf for `names` that expired yesterday (valid for the day before).
    pub fn expired_leaf(&self, names: &[&str]) -> Pem {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(2 * 86_400)).into();
        params.not_after = (now - std::time::Duration::from_secs(86_400)).into();
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        Pem { cert: cert.pem(), key: key.serialize_pem() }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for c in self.pem.chain() {
            roots.add(c).expect("CA root");
        }
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration presenting `pem`, optionally requiring client
/// certificates signed by `client_ca`.
pub fn server_config(pem: &Pem, client_ca: Option<&TestCa>) -> Arc<ServerConfig> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().expect("versions");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                .build()
                .expect("client verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_single_cert(pem.chain(), pem.private_key()).expect("server cert"))
}

/// A client configuration trusting `ca`.
pub fn client_config(ca: &TestCa) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(ca.roots())
            .with_no_client_auth(),
    )
}

/// A client configuration that trusts `ca` and presents `client` when asked.
pub fn client_config_with_cert(ca: &TestCa, client: &Pem) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(ca.roots())
            .with_client_auth_cert(client.chain(), client.private_key())
            .expect("client certificate"),
    )
}

/// A client configuration that accepts any server certificate, so tests can
/// look at which one was presented.
pub fn insecure_client_config() -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
