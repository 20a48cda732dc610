//! Services: Kong's fields (or the `url` shorthand), timeouts, upstream TLS
//! and the PROXY protocol header sent upstream.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::entities::*;
use crate::fields::{ENTITY, Fields};

use super::flatten::{Builder, Origin};
use super::syntax::{Ref, check_name, is_host, meta, protocol_choices, reference, split_host_port};

impl Builder {
    pub(crate) fn service(&mut self, v: &Value, path: String) {
        let Some(obj) = self.object(v, "service", &path) else {
            return;
        };
        let mut f = self.fields(obj);
        f.check_unknown(&[
            "id",
            "name",
            "protocol",
            "host",
            "port",
            "path",
            "url",
            "retries",
            "connect_timeout",
            "read_timeout",
            "write_timeout",
            "tls_verify",
            "tls_verify_depth",
            "ca_certificates",
            "client_certificate",
            "enabled",
            "proxy_protocol",
            "tags",
            "created_at",
            "updated_at",
            "routes",
            "plugins",
            "filter_chains",
        ]);
        let name = f.str("name").map(str::to_owned);
        if let Some(n) = &name {
            check_name(&mut f, "name", n);
        }
        let origin = Origin { path, name };
        let meta = meta(&mut f, "service", &origin);

        // Kong's defaults: a service without a protocol is HTTP, on port 80.
        const PROTOCOL: Protocol = Protocol::Http;
        const PORT: u16 = 80;
        let mut protocol = PROTOCOL;
        let mut host = None;
        let mut port = None;
        let mut path_field = None;
        if let Some(url) = f.str("url") {
            match parse_url(url) {
                Ok(u) => {
                    protocol = u.protocol;
                    host = Some(u.host);
                    port = Some(u.port);
                    path_field = u.path;
                }
                Err(e) => f.err("url", e),
            }
        } else {
            let protocol_field = f.str("protocol");
            f.note_more(
                "protocol",
                || json!({"default": PROTOCOL.as_str(), "one_of": Protocol::ALL.map(Protocol::as_str)}),
            );
            if let Some(p) = protocol_field {
                match Protocol::parse(p) {
                    Some(p) => protocol = p,
                    None => f.err("protocol", protocol_choices()),
                }
            }
            match f.required_str("host") {
                Some(h) if is_host(h) => host = Some(h.to_ascii_lowercase()),
                Some(h) => f.err("host", format!("invalid value '{h}': not a valid hostname or IP address")),
                None => {}
            }
            port = f.int("port", 0, 65535).map(|p| p as u16);
            f.note_more("port", || json!({"default": PORT}));
            path_field = f.str("path").map(str::to_owned);
        }
        let port = port.unwrap_or(PORT);
        if path_field.is_some()
            && matches!(protocol, Protocol::Tcp | Protocol::Tls | Protocol::Udp | Protocol::Grpc | Protocol::Grpcs)
        {
            f.err("path", "value must be null");
            f.err(ENTITY, "failed conditional validation given value of field 'protocol'");
        }
        if protocol == Protocol::TlsPassthrough {
            f.err(
                "protocol",
                "a service cannot use 'tls_passthrough'; use 'tcp' for a tls_passthrough route's service",
            );
        }
        let retries = f.int_or("retries", 0, 32767, 5) as u16;
        let timeout =
            |f: &mut Fields<'_>, key: &str| Duration::from_millis(f.int_or(key, 1, 2_147_483_646, 60_000) as u64);
        let connect_timeout = timeout(&mut f, "connect_timeout");
        let read_timeout = timeout(&mut f, "read_timeout");
        let write_timeout = timeout(&mut f, "write_timeout");
        let tls_verify = f.bool("tls_verify");
        let tls_verify_depth = f.int("tls_verify_depth", 0, 64).map(|d| d as u8);
        f.note("ca_certificates", || json!({"type": "array", "elements": {"type": "string", "uuid": true}}));
        let cas: Vec<Ref> = match f.get("ca_certificates") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                    Some(id) => Some(Ref::Id(id)),
                    None => {
                        f.err(format!("ca_certificates[{}]", i + 1), "expected a valid UUID");
                        None
                    }
                })
                .collect(),
            Some(_) => {
                f.err("ca_certificates", "expected an array");
                Vec::new()
            }
        };
        let client_cert = reference(&mut f, "client_certificate", EntityKind::Certificates);
        let tls_capable = matches!(protocol, Protocol::Tls | Protocol::Https);
        if !tls_capable {
            let mut conditional = false;
            for key in ["tls_verify", "tls_verify_depth", "ca_certificates", "client_certificate"] {
                if f.has(key) {
                    f.err(key, "value must be null");
                    conditional = true;
                }
            }
            if conditional {
                f.err(ENTITY, "failed conditional validation given value of field 'protocol'");
            }
        }
        let enabled = f.bool_or("enabled", true);
        let proxy_protocol_field = f.str("proxy_protocol");
        f.note_more("proxy_protocol", || json!({"default": "off", "one_of": ["off", "v1", "v2"]}));
        let proxy_protocol = match proxy_protocol_field {
            None | Some("off") => ProxyProtocolOut::Off,
            Some("v1") => ProxyProtocolOut::V1,
            Some("v2") => ProxyProtocolOut::V2,
            Some(_) => {
                f.err("proxy_protocol", "expected one of: off, v1, v2");
                ProxyProtocolOut::Off
            }
        };
        if proxy_protocol != ProxyProtocolOut::Off && !matches!(protocol, Protocol::Tcp | Protocol::Tls) {
            f.err("proxy_protocol", "only tcp and tls services can send a PROXY protocol header");
        }
        let routes = f.nested("routes").cloned();
        let plugins = f.nested("plugins").cloned();
        let chains = f.nested("filter_chains").cloned();
        self.done(f, "service", &origin);

        let idx = ServiceIdx(self.config.services.len());
        self.config.services.push(Service {
            meta,
            name: origin.name.clone(),
            protocol,
            host: host.unwrap_or_default(),
            port,
            path: path_field,
            retries,
            connect_timeout,
            read_timeout,
            write_timeout,
            tls_verify,
            tls_verify_depth,
            ca_certificates: Vec::new(),
            client_certificate: None,
            enabled,
            proxy_protocol,
        });
        if !cas.is_empty() {
            self.service_cas.push((idx, cas));
        }
        if let Some(r) = client_cert {
            self.service_client_cert.push((idx, r));
        }
        self.service_origin.push(origin.clone());
        for (i, r) in routes.iter().flatten().enumerate() {
            self.route(r, format!("{}.routes[{}]", origin.path, i + 1), Some(idx));
        }
        for (i, c) in chains.iter().flatten().enumerate() {
            self.filter_chain(c, format!("{}.filter_chains[{}]", origin.path, i + 1), Some(idx), None);
        }
        for (i, p) in plugins.iter().flatten().enumerate() {
            self.plugin(p, format!("{}.plugins[{}]", origin.path, i + 1), Some(idx), None);
        }
    }
}

pub(crate) struct ParsedUrl {
    pub(crate) protocol: Protocol,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: Option<String>,
}

pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("invalid url '{url}': missing scheme"))?;
    let protocol = Protocol::parse(&scheme.to_ascii_lowercase())
        .filter(|p| *p != Protocol::TlsPassthrough)
        .ok_or_else(|| format!("invalid url '{url}': unsupported scheme '{scheme}'"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
        None => (rest, None),
    };
    if authority.is_empty() {
        return Err("missing host in url".into());
    }
    let (host, port) = split_host_port(authority).ok_or_else(|| format!("invalid url '{url}': bad host or port"))?;
    if !is_host(&host) {
        return Err(format!("invalid url '{url}': bad host '{host}'"));
    }
    let default_port = match protocol {
        Protocol::Https | Protocol::Grpcs | Protocol::Tls => 443,
        _ => 80,
    };
    Ok(ParsedUrl { protocol, host, port: port.unwrap_or(default_port), path })
}
