//! `mtls-auth` on stream routes: the route's TLS handshakes require a client
//! certificate issued by one of the configured CA certificates (and, with
//! `allowed_names`, carrying one of those names). A missing, untrusted or
//! unlisted certificate fails the handshake with a TLS alert, logged as a
//! failed handshake; accepted sessions log the certificate's subject.
//!
//! It fails closed: a session it applies to that did not present a verified
//! certificate — plain TCP on a route that also serves `tcp`, passthrough,
//! UDP — is refused with 403 in `preread`.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use strait_plugin::{Conf, ConfigureCx, ConfigureError, Instance, Plugin, Session, Status, Verdict};

#[derive(Debug)]
pub struct MtlsAuth;

#[derive(Debug)]
pub struct MtlsConfig {
    ca_certificates: Vec<Uuid>,
    allowed_names: Vec<String>,
}

impl Plugin for MtlsAuth {
    type Config = MtlsConfig;

    fn name(&self) -> &'static str {
        "mtls-auth"
    }

    fn priority(&self) -> i32 {
        1600
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<MtlsConfig> {
        let raw = conf.string_list("ca_certificates");
        if raw.is_empty() && conf.is_ok() {
            conf.error("ca_certificates", "length must be at least 1");
        }
        let mut ca_certificates = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            match Uuid::parse_str(s) {
                Ok(u) => ca_certificates.push(u),
                Err(_) => conf.error(format!("ca_certificates[{}]", i + 1), "expected a valid UUID"),
            }
        }
        let allowed_names = conf.string_list("allowed_names");
        // Kong's consumer mapping has no meaning without consumers; its
        // fields are accepted as given.
        for key in [
            "skip_consumer_lookup",
            "consumer_by",
            "anonymous",
            "authenticated_group_by",
            "cache_ttl",
            "cert_cache_ttl",
            "default_consumer",
            "allow_partial_chain",
            "send_ca_dn",
            "http_timeout",
            "http_proxy_host",
            "http_proxy_port",
            "https_proxy_host",
            "https_proxy_port",
        ] {
            conf.accept(key);
        }
        // Revocation lists are not fetched: refusing STRICT says so.
        conf.one_of("revocation_check_mode", "IGNORE_CA_ERROR", &["IGNORE_CA_ERROR", "SKIP"]);
        conf.is_ok().then_some(MtlsConfig { ca_certificates, allowed_names })
    }

    fn configure(&self, c: MtlsConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
        let config = cx.config();
        let mut cas = Vec::with_capacity(c.ca_certificates.len());
        for (i, id) in c.ca_certificates.iter().enumerate() {
            match config.ca_certificates.iter().find(|ca| ca.meta.id == *id) {
                Some(ca) => cas.push(&ca.cert),
                None => {
                    return Err(ConfigureError::field(
                        format!("ca_certificates[{}]", i + 1),
                        format!("no CA certificate with id '{id}'"),
                    ));
                }
            }
        }
        let auth = strait_tls::client_auth(&cas, c.allowed_names).map_err(|e| e.to_string())?;
        Ok(Arc::new(MtlsInstance { auth }))
    }
}

struct MtlsInstance {
    auth: strait_tls::ClientAuth,
}

impl Instance for MtlsInstance {
    fn client_auth(&self) -> Option<strait_tls::ClientAuth> {
        Some(self.auth.clone())
    }

    fn preread(&self, s: &mut Session) -> Verdict {
        match s.tls().filter(|t| t.client_verify == "SUCCESS") {
            Some(t) => {
                let subject = t.client_subject.clone();
                s.add_log_field("mtls", json!({ "subject": subject }));
                Verdict::Continue
            }
            None => Verdict::reject(Status::Forbidden, "a verified client certificate is required".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use strait_model::{Options, PluginNames, RouteIdx};
    use strait_plugin::{Chains, Plugins};

    use super::*;

    #[test]
    fn an_mtls_auth_narrowed_to_tls_on_a_service_leaves_its_tcp_routes_alone() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("CA certificate").pem();
        let id = "5d8e4b1c-0c55-4d4e-9d0c-2f8a3b1e7a10";
        let indented: String = ca.lines().map(|l| format!("    {l}\n")).collect();
        let yaml = format!(
            r#"_format_version: "3.0"
ca_certificates:
- id: {id}
  cert: |
{indented}services:
- url: tcp://127.0.0.1:1
  plugins:
  - {{name: mtls-auth, protocols: [tls], config: {{ca_certificates: [{id}]}}}}
  routes:
  - {{protocols: [tls], snis: [a.test]}}
  - {{protocols: [tcp], destinations: [{{port: 2}}]}}
"#
        );
        let options =
            Options { plugins: PluginNames::default(), schemas: Some(Arc::new(crate::registry())), filters: None };
        let config = strait_model::load_str_with(&yaml, &options).expect("valid config").config;
        let g = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let pair =
            strait_model::pem::key_pair(&g.cert.pem(), &g.signing_key.serialize_pem(), "mismatch").expect("key pair");
        let store = Arc::new(strait_tls::CertStore::new(&config, &pair).expect("certificates"));
        let resumption = strait_tls::Resumption::default();
        let chains = Chains::compile(&config, &Plugins::new(crate::registry()), &|auth| {
            strait_tls::server_config_with_client_auth(store.clone(), auth, &resumption).map_err(|e| e.to_string())
        })
        .expect("compiles");
        let tls = chains.route(RouteIdx(0)).expect("the tls route's chain");
        assert!(tls.tls_server().is_some(), "client certificates are asked for on the tls route");
        assert!(chains.route(RouteIdx(1)).is_none(), "nothing runs on the tcp-only route");
    }
}
