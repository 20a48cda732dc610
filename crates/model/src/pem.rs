//! PEM certificates and keys: decoding, key/certificate matching, CA checks.
//!
//! Messages follow Kong's certificate schema. A private key's bytes never
//! appear in an error.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::entities::{KeyPair, KeyType};

/// Every certificate in a PEM text, in order; at least one.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = item.map_err(|e| format!("invalid certificate: {e}"))?;
        X509Certificate::from_der(der.as_ref()).map_err(|e| format!("invalid certificate: {e}"))?;
        out.push(der);
    }
    if out.is_empty() {
        return Err("invalid certificate: no PEM certificate found".into());
    }
    Ok(out)
}

/// The first private key in a PEM text (PKCS#8, PKCS#1 or SEC1).
pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| "invalid key: no usable PEM private key found".to_owned())
}

/// The key algorithm of a certificate's public key.
pub fn key_type(cert: &CertificateDer<'_>) -> KeyType {
    let Ok((_, x509)) = X509Certificate::from_der(cert.as_ref()) else {
        return KeyType::Other;
    };
    match x509.public_key().algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.1" => KeyType::Rsa,
        "1.2.840.10045.2.1" => KeyType::Ecdsa,
        "1.3.101.112" => KeyType::Ed25519,
        _ => KeyType::Other,
    }
}

/// Decodes a certificate and key and proves that they belong together.
/// `mismatch` is the message used when they do not (Kong has one for the
/// main pair and one for the alternative pair). Every problem is returned,
/// as `(field, message)`.
pub fn key_pair(cert_pem: &str, key_pem: &str, mismatch: &str) -> Result<KeyPair, Vec<(&'static str, String)>> {
    let chain = parse_certs(cert_pem).map_err(|e| ("cert", e));
    let key = parse_key(key_pem).map_err(|e| ("key", e));
    let (chain, key) = match (chain, key) {
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => return Err(c.err().into_iter().chain(k.err()).collect()),
    };
    let signer = any_supported_type(&key).map_err(|_| vec![("key", "invalid key: unsupported key type".to_owned())])?;
    CertifiedKey::new(chain.clone(), signer).keys_match().map_err(|_| vec![("@entity", mismatch.to_owned())])?;
    let key_type = key_type(&chain[0]);
    Ok(KeyPair {
        chain,
        key,
        key_type,
        cert_pem: cert_pem.to_owned(),
        key_pem: crate::entities::SecretPem(key_pem.to_owned()),
    })
}

/// Checks a CA certificate as Kong does: one certificate, a CA, not expired.
pub fn ca_certificate(pem: &str) -> Result<CertificateDer<'static>, String> {
    let mut certs = parse_certs(pem)?;
    if certs.len() != 1 {
        return Err("please submit only one certificate at a time".into());
    }
    let der = certs.remove(0);
    let (_, x509) = X509Certificate::from_der(der.as_ref()).map_err(|e| format!("invalid certificate: {e}"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    if x509.validity().not_after.timestamp() < now {
        return Err("certificate expired, \"Not After\" time is in the past".into());
    }
    let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err("certificate does not appear to be a CA because it is missing the \"CA\" basic constraint".into());
    }
    Ok(der)
}

/// What an operator reads off a certificate (the Admin API's
/// `/certificates/{id}/x509`): the leaf's names and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// DNS names and IP addresses of the subject alternative names.
    pub sans: Vec<String>,
    /// Hexadecimal.
    pub serial: String,
    /// Certificates in the chain, the leaf included.
    pub chain_length: usize,
}

/// Reads the leaf of a PEM chain.
pub fn describe(pem: &str) -> Result<CertInfo, String> {
    let chain = parse_certs(pem)?;
    let (_, x509) = X509Certificate::from_der(chain[0].as_ref()).map_err(|e| format!("invalid certificate: {e}"))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = x509.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => sans.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string()),
                    16 => sans.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let v = x509.validity();
    Ok(CertInfo {
        subject: x509.subject().to_string(),
        issuer: x509.issuer().to_string(),
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
        sans,
        serial: x509.raw_serial_as_string().replace(':', ""),
        chain_length: chain.len(),
    })
}

/// Checks that a certificate is within its validity period now (used by TLS
/// health probes, which may not verify the chain but still catch expiry).
pub fn check_validity(der: &CertificateDer<'_>) -> Result<(), String> {
    let (_, x509) = X509Certificate::from_der(der.as_ref()).map_err(|e| format!("invalid certificate: {e}"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let v = x509.validity();
    if v.not_after.timestamp() < now {
        return Err(format!("certificate expired at {}", v.not_after));
    }
    if v.not_before.timestamp() > now {
        return Err(format!("certificate not valid before {}", v.not_before));
    }
    Ok(())
}
