//! Properties a filter reads (`proxy_get_property`): Envoy's names for the
//! connection, and Kong's for the route and service, with Envoy's
//! encodings (strings as raw bytes, integers as 8 little-endian bytes,
//! booleans as one byte). A path's segments may be separated by NUL (as
//! the Rust SDK sends them) or by dots (as Kong's docs write them).

use std::net::SocketAddr;

use strait_plugin::Session;

use crate::host::Host;

/// What a session's context answers, taken when the context is made (the
/// upstream address once the upstream is connected).
#[derive(Debug, Clone, Default)]
pub(crate) struct Props {
    pub(crate) source: Option<SocketAddr>,
    pub(crate) destination: Option<SocketAddr>,
    pub(crate) connection_id: u64,
    pub(crate) sni: Option<String>,
    /// Terminated TLS only: its version, and whether a client certificate was verified.
    pub(crate) tls_version: Option<&'static str>,
    pub(crate) mtls: bool,
    pub(crate) peer_subject: Option<String>,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) route_id: Option<String>,
    pub(crate) route_name: Option<String>,
    pub(crate) service_id: Option<String>,
    pub(crate) service_name: Option<String>,
    pub(crate) protocol: &'static str,
}

impl Props {
    pub(crate) fn of(s: &Session, connection_id: u64) -> Props {
        let tls = s.tls();
        Props {
            source: Some(s.client()),
            destination: Some(s.server()),
            connection_id,
            sni: s.sni().map(str::to_owned),
            tls_version: tls.map(|t| t.version),
            mtls: tls.is_some_and(|t| t.client_verify == "SUCCESS"),
            peer_subject: tls.and_then(|t| t.client_subject.clone()),
            upstream: s.upstream(),
            route_id: s.route().map(|r| r.meta.id.to_string()),
            route_name: s.route().and_then(|r| r.name.clone()),
            service_id: s.service().map(|v| v.meta.id.to_string()),
            service_name: s.service().and_then(|v| v.name.clone()),
            protocol: s.protocol().as_str(),
        }
    }
}

/// A path as the host matches it: segments joined by dots, no trailing NUL.
pub(crate) fn normalize(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    String::from_utf8_lossy(raw).replace('\0', ".")
}

/// Appends the value of `path` for the effective context to `out`; false
/// when there is none (NOT_FOUND).
pub(crate) fn lookup(h: &Host, path: &str, out: &mut Vec<u8>) -> bool {
    match path {
        "plugin_name" | "plugin_root_id" | "plugin_vm_id" => {
            out.extend_from_slice(h.filter.as_bytes());
            return true;
        }
        _ => {}
    }
    let Some(s) = h.streams.get(&h.call.effective) else {
        // Connection properties need a session's context.
        return false;
    };
    if let Some((_, v)) = s.own_props.iter().find(|(k, _)| k == path) {
        out.extend_from_slice(v);
        return true;
    }
    let p = &s.props;
    let text = |out: &mut Vec<u8>, v: Option<&str>| match v {
        Some(v) => {
            out.extend_from_slice(v.as_bytes());
            true
        }
        None => false,
    };
    let addr = |out: &mut Vec<u8>, a: Option<SocketAddr>| text(out, a.map(|a| a.to_string()).as_deref());
    let port = |out: &mut Vec<u8>, a: Option<SocketAddr>| match a {
        Some(a) => {
            out.extend_from_slice(&i64::from(a.port()).to_le_bytes());
            true
        }
        None => false,
    };
    match path {
        "source.address" => addr(out, p.source),
        "source.port" => port(out, p.source),
        "destination.address" => addr(out, p.destination),
        "destination.port" => port(out, p.destination),
        "upstream.address" => addr(out, p.upstream),
        "upstream.port" => port(out, p.upstream),
        "connection.id" | "connection_id" => {
            out.extend_from_slice(&p.connection_id.to_le_bytes());
            true
        }
        // Empty without SNI, as Envoy answers.
        "connection.requested_server_name" => {
            text(out, p.sni.as_deref());
            true
        }
        "connection.tls_version" => text(out, p.tls_version),
        "connection.mtls" => {
            out.push(u8::from(p.mtls));
            true
        }
        "connection.subject_peer_certificate" => text(out, p.peer_subject.as_deref()),
        "kong.route_id" => text(out, p.route_id.as_deref()),
        "kong.route_name" => text(out, p.route_name.as_deref()),
        "kong.service_id" => text(out, p.service_id.as_deref()),
        "kong.service_name" => text(out, p.service_name.as_deref()),
        "kong.client.protocol" => text(out, Some(p.protocol)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_taken_with_nul_or_dot_separators() {
        assert_eq!(normalize(b"source\0address"), "source.address");
        assert_eq!(normalize(b"source\0port\0"), "source.port");
        assert_eq!(normalize(b"kong.route_name"), "kong.route_name");
    }
}
