//! Certificates (with an optional alternative of the other key type), the
//! SNIs that choose them, and CA certificates.

use serde_json::{Map, Value, json};

use crate::entities::*;
use crate::fields::ENTITY;
use crate::pem;

use super::flatten::{Builder, Origin};
use super::syntax::{meta, parse_sni, reference};

impl Builder {
    pub(crate) fn certificate(&mut self, v: &Value, path: String) {
        let Some(obj) = self.object(v, "certificate", &path) else {
            return;
        };
        let mut f = self.fields(obj);
        f.check_unknown(&["id", "cert", "key", "cert_alt", "key_alt", "tags", "snis", "created_at", "updated_at"]);
        let origin = Origin { path, name: None };
        let meta = meta(&mut f, "certificate", &origin);
        let cert = f.required_str("cert");
        let key = f.required_str("key");
        let pair = match (cert, key) {
            (Some(c), Some(k)) => match pem::key_pair(c, k, "certificate does not match key") {
                Ok(p) => Some(p),
                Err(errs) => {
                    for (field, msg) in errs {
                        f.err(field, msg);
                    }
                    None
                }
            },
            _ => None,
        };
        let alt = match (f.str("cert_alt"), f.str("key_alt")) {
            (None, None) => None,
            (Some(c), Some(k)) => match pem::key_pair(c, k, "alternative certificate does not match key") {
                Ok(alt) => {
                    if pair.as_ref().is_some_and(|p| p.key_type == alt.key_type) {
                        f.err(
                            ENTITY,
                            "certificate and alternative certificate need to have different type (e.g. RSA and ECDSA), the provided certificates were both of the same type",
                        );
                    }
                    Some(alt)
                }
                Err(errs) => {
                    for (field, msg) in errs {
                        let field = match field {
                            "cert" => "cert_alt",
                            "key" => "key_alt",
                            other => other,
                        };
                        f.err(field, msg);
                    }
                    None
                }
            },
            _ => {
                f.err(ENTITY, "all or none of these fields must be set: 'cert_alt', 'key_alt'");
                None
            }
        };
        let snis = f.array("snis").cloned();
        self.done(f, "certificate", &origin);
        let Some(pair) = pair else {
            return;
        };
        let idx = CertificateIdx(self.config.certificates.len());
        self.config.certificates.push(Certificate { meta, pair, alt });
        self.cert_origin.push(origin.clone());
        for (i, s) in snis.iter().flatten().enumerate() {
            let path = format!("{}.snis[{}]", origin.path, i + 1);
            match s {
                // The Admin API's shorthand: a list of names.
                Value::String(name) => {
                    let mut obj = Map::new();
                    obj.insert("name".into(), Value::String(name.clone()));
                    self.sni(&Value::Object(obj), path, Some(idx));
                }
                other => self.sni(other, path, Some(idx)),
            }
        }
    }

    pub(crate) fn sni(&mut self, v: &Value, path: String, parent: Option<CertificateIdx>) {
        let Some(obj) = self.object(v, "sni", &path) else {
            return;
        };
        let mut f = self.fields(obj);
        f.check_unknown(&["id", "name", "certificate", "tags", "created_at", "updated_at"]);
        let raw_name = f.required_str("name");
        let origin = Origin { path, name: raw_name.map(str::to_owned) };
        let meta = meta(&mut f, "sni", &origin);
        let name = raw_name.and_then(|n| match parse_sni(n, true) {
            Ok(p) => Some(p),
            Err(e) => {
                f.err("name", e);
                None
            }
        });
        let cert_ref = reference(&mut f, "certificate", EntityKind::Certificates);
        if parent.is_none() {
            f.note_more("certificate", || json!({"required": true}));
        }
        if parent.is_none() && cert_ref.is_none() {
            f.err("certificate", "required field missing");
        }
        self.done(f, "sni", &origin);
        let Some(name) = name else {
            return;
        };
        let i = self.config.snis.len();
        self.config.snis.push(Sni { meta, name, certificate: parent.unwrap_or(CertificateIdx(usize::MAX)) });
        if parent.is_none() {
            if let Some(r) = cert_ref {
                self.sni_cert.push((i, r));
            }
        }
        self.sni_origin.push(origin);
    }

    pub(crate) fn ca_certificate(&mut self, v: &Value, path: String) {
        let Some(obj) = self.object(v, "ca_certificate", &path) else {
            return;
        };
        let mut f = self.fields(obj);
        f.check_unknown(&["id", "cert", "cert_digest", "tags", "created_at", "updated_at"]);
        let origin = Origin { path, name: None };
        let meta = meta(&mut f, "ca_certificate", &origin);
        let cert = f.required_str("cert").and_then(|c| match pem::ca_certificate(c) {
            Ok(der) => Some((der, c.to_owned())),
            Err(e) => {
                f.err("cert", e);
                None
            }
        });
        let cert_digest = f.str("cert_digest").map(str::to_owned);
        self.done(f, "ca_certificate", &origin);
        if let Some((cert, pem)) = cert {
            self.config.ca_certificates.push(CaCertificate { meta, cert, pem, cert_digest });
            self.ca_origin.push(origin);
        }
    }
}
