//! Typed entities back to Kong's JSON: every field present, defaults filled,
//! references as `{"id": …}` — the shape Kong's Admin API returns and the
//! flat `_format_version: "3.0"` document `GET /config` and `db_export` give.
//!
//! Loading what this writes gives the same configuration again (tested).

use serde_json::{Map, Value, json};

use crate::entities::*;

fn id_ref(id: uuid::Uuid) -> Value {
    json!({ "id": id.to_string() })
}

fn tags(m: &Meta) -> Value {
    if m.tags.is_empty() { Value::Null } else { json!(m.tags) }
}

/// The bookkeeping fields every entity has.
fn with_meta(m: &Meta, mut fields: Map<String, Value>) -> Value {
    fields.insert("id".into(), json!(m.id.to_string()));
    fields.insert("tags".into(), tags(m));
    fields.insert("created_at".into(), m.created_at.map_or(Value::Null, |t| json!(t)));
    fields.insert("updated_at".into(), m.updated_at.map_or(Value::Null, |t| json!(t)));
    Value::Object(fields)
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

pub fn service(c: &Config, s: &Service) -> Value {
    let tls = matches!(s.protocol, Protocol::Tls | Protocol::Https);
    let mut m = obj(json!({
            "name": s.name,
            "protocol": s.protocol.as_str(),
            "host": s.host,
            "port": s.port,
            "path": s.path,
            "retries": s.retries,
            "connect_timeout": s.connect_timeout.as_millis() as u64,
            "read_timeout": s.read_timeout.as_millis() as u64,
            "write_timeout": s.write_timeout.as_millis() as u64,
            "tls_verify": if tls { json!(s.tls_verify) } else { Value::Null },
            "tls_verify_depth": if tls { json!(s.tls_verify_depth) } else { Value::Null },
            "ca_certificates": if s.ca_certificates.is_empty() {
                Value::Null
            } else {
                json!(s.ca_certificates.iter().map(|i| c.ca_certificates[i.0].meta.id.to_string()).collect::<Vec<_>>())
            },
            "client_certificate": s.client_certificate.map_or(Value::Null, |i| id_ref(c.certificates[i.0].meta.id)),
            "enabled": s.enabled,
    }));
    // Strait's extension is written only when used, so an export stays
    // readable by Kong's tools.
    if s.proxy_protocol != ProxyProtocolOut::Off {
        m.insert("proxy_protocol".into(), json!(s.proxy_protocol.as_str()));
    }
    with_meta(&s.meta, m)
}

fn endpoints(list: &[Endpoint]) -> Value {
    if list.is_empty() {
        return Value::Null;
    }
    json!(
        list.iter()
            .map(|e| {
                let ip = e.ip.map(|m| match m {
                    IpMatch::Exact(a) => a.to_string(),
                    IpMatch::Cidr(n) => n.to_string(),
                });
                json!({ "ip": ip, "port": e.port })
            })
            .collect::<Vec<_>>()
    )
}

pub fn route(c: &Config, r: &Route) -> Value {
    let mut m = obj(json!({
        "name": r.name,
        "protocols": r.protocols.iter().map(Protocol::as_str).collect::<Vec<_>>(),
        "sources": endpoints(&r.sources),
        "destinations": endpoints(&r.destinations),
        "snis": if r.snis.is_empty() { Value::Null } else { json!(r.snis.iter().map(ToString::to_string).collect::<Vec<_>>()) },
        "service": r.service.map_or(Value::Null, |i| id_ref(c.services[i.0].meta.id)),
        "preserve_host": r.preserve_host,
        // Kong's defaults for the HTTP-only fields, overridden below by what was given.
        "methods": null,
        "hosts": null,
        "paths": null,
        "headers": null,
        "strip_path": true,
        "regex_priority": 0,
        "path_handling": "v0",
        "https_redirect_status_code": 426,
        "request_buffering": true,
        "response_buffering": true,
    }));
    for (k, v) in &r.http {
        m.insert(k.clone(), v.clone());
    }
    with_meta(&r.meta, m)
}

/// A certificate; `snis` lists the names that point at it, as Kong's Admin API shows.
pub fn certificate(c: &Config, idx: CertificateIdx, with_snis: bool) -> Value {
    let cert = &c.certificates[idx.0];
    let mut m = obj(json!({
        "cert": cert.pair.cert_pem,
        "key": cert.pair.key_pem.0,
        "cert_alt": cert.alt.as_ref().map(|a| a.cert_pem.clone()),
        "key_alt": cert.alt.as_ref().map(|a| a.key_pem.0.clone()),
    }));
    if with_snis {
        let names: Vec<String> = c.snis.iter().filter(|s| s.certificate == idx).map(|s| s.name.to_string()).collect();
        m.insert("snis".into(), json!(names));
    }
    with_meta(&cert.meta, m)
}

pub fn sni(c: &Config, s: &Sni) -> Value {
    with_meta(
        &s.meta,
        obj(json!({
            "name": s.name.to_string(),
            "certificate": id_ref(c.certificates[s.certificate.0].meta.id),
        })),
    )
}

pub fn ca_certificate(ca: &CaCertificate) -> Value {
    with_meta(&ca.meta, obj(json!({ "cert": ca.pem, "cert_digest": ca.cert_digest })))
}

pub fn upstream(c: &Config, u: &Upstream) -> Value {
    let mut m = obj(json!({
        "name": u.name,
        "algorithm": u.algorithm.as_str(),
        "hash_on": u.hash_on.as_str(),
        "hash_fallback": u.hash_fallback.as_str(),
        "hash_on_cookie_path": "/",
        "slots": u.slots,
        "host_header": u.host_header,
        "client_certificate": u.client_certificate.map_or(Value::Null, |i| id_ref(c.certificates[i.0].meta.id)),
        "use_srv_name": u.use_srv_name,
        "healthchecks": u.healthchecks.to_json(),
    }));
    // Strait's own fields, only when set: a Kong export stays a Kong one.
    if let Some(d) = u.on_target_down {
        m.insert("on_target_down".into(), json!(d.as_str()));
    }
    if let Some(r) = u.on_target_removed {
        m.insert("on_target_removed".into(), json!(r.as_str()));
    }
    for (k, v) in &u.extra {
        m.insert(k.clone(), v.clone());
    }
    with_meta(&u.meta, m)
}

pub fn target(c: &Config, t: &Target) -> Value {
    with_meta(
        &t.meta,
        obj(json!({
            "target": t.authority(),
            "weight": t.weight,
            "upstream": id_ref(c.upstreams[t.upstream.0].meta.id),
        })),
    )
}

pub fn plugin(c: &Config, p: &Plugin) -> Value {
    with_meta(
        &p.meta,
        obj(json!({
            "name": p.name,
            "instance_name": p.instance_name,
            "config": p.config.to_json(),
            "service": p.service.map_or(Value::Null, |i| id_ref(c.services[i.0].meta.id)),
            "route": p.route.map_or(Value::Null, |i| id_ref(c.routes[i.0].meta.id)),
            "consumer": null,
            "protocols": p.protocols.map_or(Value::Null, |s| json!(s.iter().map(Protocol::as_str).collect::<Vec<_>>())),
            "enabled": p.enabled,
        })),
    )
}

pub fn filter_chain(c: &Config, fc: &FilterChain) -> Value {
    let filters: Vec<Value> =
        fc.filters.iter().map(|f| json!({ "name": f.name, "enabled": f.enabled, "config": f.config })).collect();
    with_meta(
        &fc.meta,
        obj(json!({
            "name": fc.name,
            "enabled": fc.enabled,
            "route": fc.route.map_or(Value::Null, |i| id_ref(c.routes[i.0].meta.id)),
            "service": fc.service.map_or(Value::Null, |i| id_ref(c.services[i.0].meta.id)),
            "filters": filters,
        })),
    )
}

/// The whole configuration as a flat `_format_version: "3.0"` document.
pub fn to_declarative(c: &Config) -> Value {
    json!({
        "_format_version": "3.0",
        "services": c.services.iter().map(|s| service(c, s)).collect::<Vec<_>>(),
        "routes": c.routes.iter().map(|r| route(c, r)).collect::<Vec<_>>(),
        "certificates": (0..c.certificates.len()).map(|i| certificate(c, CertificateIdx(i), false)).collect::<Vec<_>>(),
        "snis": c.snis.iter().map(|s| sni(c, s)).collect::<Vec<_>>(),
        "ca_certificates": c.ca_certificates.iter().map(ca_certificate).collect::<Vec<_>>(),
        "upstreams": c.upstreams.iter().map(|u| upstream(c, u)).collect::<Vec<_>>(),
        "targets": c.targets.iter().map(|t| target(c, t)).collect::<Vec<_>>(),
        "plugins": c.plugins.iter().map(|p| plugin(c, p)).collect::<Vec<_>>(),
        "filter_chains": c.filter_chains.iter().map(|fc| filter_chain(c, fc)).collect::<Vec<_>>(),
    })
}
