//! The pure pieces every entity uses: references, ids and tags, names,
//! SNI patterns, IP matches, host names and URLs.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::entities::*;
use crate::fields::Fields;

use super::flatten::Origin;

/// A reference to another entity, as written: by id or by name.
#[derive(Debug, Clone)]
pub(crate) enum Ref {
    Id(Uuid),
    Name(String),
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Id(id) => write!(f, "{id}"),
            Ref::Name(n) => f.write_str(n),
        }
    }
}

/// Namespace for ids generated for entities that have none, so the same file
/// always yields the same ids.
pub(crate) const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_2e8a_51c3_4d7e_9a0f_3c5d_7e9b_1a2c);

/// Every entity's bookkeeping fields: `id` (generated from the entity's
/// name or place when absent), `tags`, and the two timestamps.
pub(crate) fn meta(f: &mut Fields<'_>, entity: &str, origin: &Origin) -> Meta {
    f.note("id", || json!({"type": "string", "uuid": true, "auto": true}));
    let id = match f.get("id") {
        None => None,
        Some(Value::String(s)) => match Uuid::parse_str(s) {
            Ok(id) => Some(id),
            Err(_) => {
                f.err("id", "expected a valid UUID");
                None
            }
        },
        Some(_) => {
            f.err("id", "expected a string");
            None
        }
    };
    let id = id.unwrap_or_else(|| {
        let key = match &origin.name {
            Some(n) => format!("{entity}:name:{n}"),
            None => format!("{entity}:path:{}", origin.path),
        };
        Uuid::new_v5(&ID_NAMESPACE, key.as_bytes())
    });
    let tags = f.str_list("tags").unwrap_or_default().into_iter().map(str::to_owned).collect::<Vec<_>>();
    for (i, t) in tags.iter().enumerate() {
        if t.is_empty() || t.contains(',') || t.contains('/') {
            f.err(format!("tags[{}]", i + 1), "invalid tag: a tag is non-empty and contains no ',' or '/'");
        }
    }
    for key in ["created_at", "updated_at"] {
        f.note(key, || json!({"type": "integer", "timestamp": true, "auto": true}));
    }
    let created_at = f.int("created_at", 0, i64::MAX);
    let updated_at = f.int("updated_at", 0, i64::MAX);
    Meta { id, tags, created_at, updated_at }
}

/// Kong's `utf8_name`: letters, digits and `.-_~`, or any non-ASCII character.
pub(crate) fn check_name(f: &mut Fields<'_>, key: &str, name: &str) {
    let ok = !name.is_empty()
        && name.chars().all(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~'));
    if !ok {
        f.err(
            key,
            format!("invalid value '{name}': the only accepted ascii characters are alphanumerics or ., -, _, and ~"),
        );
    }
}

pub(crate) fn protocol_choices() -> String {
    "expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp".into()
}

/// A reference field: `"name"`, `"<uuid>"`, `{id: …}` or `{name: …}`.
pub(crate) fn reference(f: &mut Fields<'_>, key: &str, to: EntityKind) -> Option<Ref> {
    f.note(key, || json!({"type": "foreign", "reference": to.as_str()}));
    let r = match f.get(key)? {
        Value::String(s) => Uuid::parse_str(s).map(Ref::Id).unwrap_or_else(|_| Ref::Name(s.clone())),
        Value::Object(o) => match (o.get("id").and_then(Value::as_str), o.get("name").and_then(Value::as_str)) {
            (Some(id), _) => match Uuid::parse_str(id) {
                Ok(id) => Ref::Id(id),
                Err(_) => {
                    f.err(format!("{key}.id"), "expected a valid UUID");
                    return None;
                }
            },
            (None, Some(name)) => Ref::Name(name.to_owned()),
            (None, None) => {
                f.err(key, "expected a reference: a name, an id, or a record with 'id' or 'name'");
                return None;
            }
        },
        _ => {
            f.err(key, "expected a reference: a name, an id, or a record with 'id' or 'name'");
            return None;
        }
    };
    Some(r)
}

/// An IP (`ip ==`) or a CIDR (`ip in`); IPv4 CIDRs are normalised to their
/// network address, as Kong does.
pub fn parse_ip_match(s: &str) -> Option<IpMatch> {
    if s.contains('/') {
        let net: IpNet = s.parse().ok()?;
        Some(IpMatch::Cidr(net.trunc()))
    } else {
        s.parse::<IpAddr>().ok().map(IpMatch::Exact)
    }
}

/// Parses a server name pattern. `allow_any` admits the lone `*` of SNI entities.
pub fn parse_sni(raw: &str, allow_any: bool) -> Result<SniPattern, String> {
    let s = raw.trim_end_matches('.').to_ascii_lowercase();
    if s == "*" {
        return if allow_any {
            Ok(SniPattern::Any)
        } else {
            Err(format!("invalid SNI '{raw}': a lone '*' is not allowed here"))
        };
    }
    if s.parse::<IpAddr>().is_ok() || s.starts_with('[') {
        return Err(format!("invalid SNI '{raw}': must not be an IP address"));
    }
    if s.contains(':') {
        return Err(format!("invalid SNI '{raw}': must not have a port"));
    }
    let stars = s.matches('*').count();
    let (pattern, body) = if stars == 0 {
        (SniPattern::Exact(s.clone()), s.as_str())
    } else if stars == 1 && s.starts_with("*.") {
        (SniPattern::Suffix(s[2..].to_owned()), &s[2..])
    } else if stars == 1 && s.ends_with(".*") {
        (SniPattern::Prefix(s[..s.len() - 2].to_owned()), &s[..s.len() - 2])
    } else {
        return Err(format!(
            "invalid SNI '{raw}': wildcard must be leftmost ('*.example.com') or rightmost ('example.*')"
        ));
    };
    if !is_dns_name(body) {
        return Err(format!("invalid SNI '{raw}': not a valid hostname"));
    }
    Ok(pattern)
}

pub(crate) fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Kong's service/target host: a host name (leniently, as KIC generates names
/// like `tcproute..echo.0`) or an IP literal.
pub(crate) fn is_host(h: &str) -> bool {
    if h.parse::<IpAddr>().is_ok() {
        return true;
    }
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.len() <= 253
        && !h.starts_with('.')
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
pub(crate) fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((ip.to_owned(), port));
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some((s.to_owned(), None));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_ascii_lowercase(), Some(p.parse().ok()?))),
        None => Some((s.to_ascii_lowercase(), None)),
    }
}
