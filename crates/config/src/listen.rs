//! The `stream_listen` setting: Kong's listener syntax parsed into typed entries.
//!
//! `"127.0.0.1:9000, [::1]:9443 ssl reuseport backlog=1024"` becomes a list of
//! [`ListenEntry`]. Binding the sockets is the proxy's job; this module only
//! decides what a valid entry is and says exactly why an entry is not.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// The form Kong prints when an entry cannot be parsed; users recognise it.
pub const STREAM_LISTEN_FORM: &str = "stream_listen must be of form: [off] | <ip>:<port> [ssl] \
[proxy_protocol] [udp] [bind] [reuseport] [backlog=%d+] [ipv6only=on|off] \
[so_keepalive=on|off|[idle]:[intvl]:[cnt]], [... next entry ...]";

/// Where a listener binds: an IP literal or a host name resolved at bind time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenHost {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for ListenHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            ListenHost::Ip(ip) => write!(f, "{ip}"),
            ListenHost::Name(name) => f.write_str(name),
        }
    }
}

/// TCP keepalive on accepted sockets, as nginx's `so_keepalive` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    Off,
    /// Keepalive on with the system's timing.
    On,
    /// Keepalive on; each part left out keeps the system default.
    Tuned {
        idle: Option<Duration>,
        interval: Option<Duration>,
        count: Option<u32>,
    },
}

/// One parsed `stream_listen` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenEntry {
    pub host: ListenHost,
    pub port: u16,
    /// Only TLS is accepted on this listener.
    pub ssl: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
    /// A UDP listener instead of TCP.
    pub udp: bool,
    pub reuseport: bool,
    pub bind: bool,
    pub backlog: Option<u32>,
    pub ipv6only: Option<bool>,
    pub so_keepalive: Option<Keepalive>,
}

impl ListenEntry {
    /// `host:port` as the user wrote it, for logs and the access log.
    pub fn addr_label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why a `stream_listen` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    #[error("entry '{entry}': {reason}; {STREAM_LISTEN_FORM}")]
    Malformed { entry: String, reason: String },
}

/// The form of `admin_listen`, shown when an entry cannot be parsed.
pub const ADMIN_LISTEN_FORM: &str = "admin_listen must be of form: [off] | <ip>:<port> [ssl] [http2] \
[reuseport] [backlog=%d+] [deferred] [bind], [... next entry ...]";

/// One `admin_listen` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminListen {
    pub host: ListenHost,
    pub port: u16,
    /// HTTPS, with `admin_ssl_cert` or the default certificate.
    pub ssl: bool,
    pub reuseport: bool,
    pub backlog: Option<u32>,
}

impl AdminListen {
    pub fn addr_label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Parses `admin_listen`. HTTP flags Strait does not need (`http2`,
/// `deferred`, `bind`) are accepted and ignored.
pub fn parse_admin_listen(value: &str) -> Result<Vec<AdminListen>, String> {
    let mut out = Vec::new();
    for (i, raw) in value.trim().split(',').enumerate() {
        let raw = raw.trim();
        if i == 0 && raw.eq_ignore_ascii_case("off") {
            return Ok(Vec::new());
        }
        let bad = |reason: String| format!("entry '{raw}': {reason}; {ADMIN_LISTEN_FORM}");
        let mut words = raw.split_whitespace();
        let addr = words.next().ok_or_else(|| bad("empty entry".into()))?;
        let (host, port) = parse_addr(raw, addr).map_err(|ListenError::Malformed { reason, .. }| bad(reason))?;
        let mut entry = AdminListen { host, port, ssl: false, reuseport: false, backlog: None };
        for flag in words {
            match flag.split_once('=') {
                Some(("backlog", v)) => {
                    entry.backlog = Some(
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| bad(format!("backlog '{v}' is not a positive integer")))?,
                    )
                }
                None if flag == "reuseport" => entry.reuseport = true,
                None if matches!(flag, "http2" | "deferred" | "bind") => {}
                None if flag == "ssl" => entry.ssl = true,
                _ => return Err(bad(format!("unknown flag '{flag}'"))),
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// Parses a whole `stream_listen` value. `off` (alone or as the first entry,
/// as Kong allows) yields no listeners.
pub fn parse_stream_listen(value: &str) -> Result<Vec<ListenEntry>, ListenError> {
    let value = value.trim();
    let mut entries = Vec::new();
    for (i, raw) in value.split(',').enumerate() {
        let raw = raw.trim();
        if i == 0 && raw.eq_ignore_ascii_case("off") {
            return Ok(Vec::new());
        }
        entries.push(parse_entry(raw)?);
    }
    Ok(entries)
}

fn malformed(entry: &str, reason: impl Into<String>) -> ListenError {
    ListenError::Malformed { entry: entry.to_owned(), reason: reason.into() }
}

fn parse_entry(raw: &str) -> Result<ListenEntry, ListenError> {
    let mut words = raw.split_whitespace();
    let Some(addr) = words.next() else {
        return Err(malformed(raw, "empty entry"));
    };
    let (host, port) = parse_addr(raw, addr)?;
    let mut entry = ListenEntry {
        host,
        port,
        ssl: false,
        proxy_protocol: false,
        udp: false,
        reuseport: false,
        bind: false,
        backlog: None,
        ipv6only: None,
        so_keepalive: None,
    };
    for flag in words {
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (flag, None),
        };
        match (name, value) {
            ("ssl", None) => entry.ssl = true,
            ("reuseport", None) => entry.reuseport = true,
            ("bind", None) => entry.bind = true,
            ("udp", None) => entry.udp = true,
            ("proxy_protocol", None) => entry.proxy_protocol = true,
            ("backlog", Some(v)) => {
                let n: u32 = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| malformed(raw, format!("backlog '{v}' is not a positive integer")))?;
                entry.backlog = Some(n);
            }
            ("ipv6only", Some(v)) => {
                entry.ipv6only =
                    Some(on_off(v).ok_or_else(|| malformed(raw, format!("ipv6only must be on or off, not '{v}'")))?);
            }
            ("so_keepalive", Some(v)) => {
                entry.so_keepalive = Some(parse_keepalive(v).map_err(|r| malformed(raw, r))?);
            }
            ("http2" | "deferred", _) => {
                return Err(malformed(raw, format!("'{name}' is an HTTP-only flag")));
            }
            _ => return Err(malformed(raw, format!("unknown flag '{flag}'"))),
        }
    }
    if entry.ipv6only.is_some() && !matches!(entry.host, ListenHost::Ip(IpAddr::V6(_))) {
        return Err(malformed(raw, "ipv6only applies to IPv6 addresses only"));
    }
    if entry.udp && entry.ssl {
        return Err(malformed(raw, "'udp' cannot be combined with 'ssl' (DTLS is not supported)"));
    }
    if entry.udp && entry.proxy_protocol {
        return Err(malformed(raw, "'udp' cannot be combined with 'proxy_protocol'"));
    }
    Ok(entry)
}

fn parse_addr(raw: &str, addr: &str) -> Result<(ListenHost, u16), ListenError> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (ip, port) =
            rest.split_once("]:").ok_or_else(|| malformed(raw, "an IPv6 address must be written [addr]:port"))?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| malformed(raw, format!("'{ip}' is not an IPv6 address")))?;
        (ListenHost::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| malformed(raw, "missing ':<port>'"))?;
        if host.contains(':') {
            return Err(malformed(raw, "an IPv6 address must be written [addr]:port"));
        }
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ListenHost::Ip(ip),
            Err(_) if is_hostname(host) => ListenHost::Name(host.to_ascii_lowercase()),
            Err(_) => return Err(malformed(raw, format!("'{host}' is neither an IP address nor a host name"))),
        };
        (host, port)
    };
    let port: u16 =
        port.parse().map_err(|_| malformed(raw, format!("port '{port}' is not a number from 0 to 65535")))?;
    Ok((host, port))
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn on_off(v: &str) -> Option<bool> {
    match v {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

fn parse_keepalive(v: &str) -> Result<Keepalive, String> {
    if let Some(on) = on_off(v) {
        return Ok(if on { Keepalive::On } else { Keepalive::Off });
    }
    let parts: Vec<&str> = v.split(':').collect();
    let [idle, interval, count] = parts.as_slice() else {
        return Err(format!("so_keepalive must be on, off or [idle]:[intvl]:[cnt], not '{v}'"));
    };
    let secs = |s: &str, what: &str| -> Result<Option<Duration>, String> {
        if s.is_empty() {
            return Ok(None);
        }
        crate::settings::parse_duration_str(s, Unit::Seconds).map(Some).map_err(|e| format!("so_keepalive {what}: {e}"))
    };
    let count = if count.is_empty() {
        None
    } else {
        Some(count.parse::<u32>().map_err(|_| format!("so_keepalive count '{count}' is not a number"))?)
    };
    Ok(Keepalive::Tuned { idle: secs(idle, "idle")?, interval: secs(interval, "interval")?, count })
}

/// The unit a bare number stands for when a duration is written without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_doc_examples_parse() {
        let e = parse_stream_listen("127.0.0.1:7000 reuseport backlog=16384").unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].reuseport);
        assert_eq!(e[0].backlog, Some(16384));

        let e = parse_stream_listen("0.0.0.0:989 reuseport backlog=65536, 0.0.0.0:20").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].port, 20);

        let e = parse_stream_listen("[::1]:1234 backlog=16384 ipv6only=on").unwrap();
        assert_eq!(e[0].host, ListenHost::Ip("::1".parse().unwrap()));
        assert_eq!(e[0].ipv6only, Some(true));
    }

    #[test]
    fn ssl_bind_and_keepalive() {
        let e = parse_stream_listen("127.0.0.1:9443 ssl bind so_keepalive=30s:10:3").unwrap();
        assert!(e[0].ssl && e[0].bind);
        assert_eq!(
            e[0].so_keepalive,
            Some(Keepalive::Tuned {
                idle: Some(Duration::from_secs(30)),
                interval: Some(Duration::from_secs(10)),
                count: Some(3)
            })
        );
        let e = parse_stream_listen("localhost:9000 so_keepalive=::5").unwrap();
        assert_eq!(e[0].host, ListenHost::Name("localhost".into()));
        assert_eq!(e[0].so_keepalive, Some(Keepalive::Tuned { idle: None, interval: None, count: Some(5) }));
    }

    #[test]
    fn admin_listen_forms() {
        let a = parse_admin_listen("127.0.0.1:8001 reuseport backlog=16384, [::1]:8001 http2").unwrap();
        assert_eq!(a.len(), 2);
        assert!(a[0].reuseport);
        assert!(parse_admin_listen("off").unwrap().is_empty());
        assert!(parse_admin_listen("127.0.0.1:8444 ssl").unwrap()[0].ssl);
        assert!(parse_admin_listen("8001").unwrap_err().contains("admin_listen must be of form"));
        assert!(parse_admin_listen("127.0.0.1:8001 udp").unwrap_err().contains("unknown flag 'udp'"));
    }

    #[test]
    fn off_means_no_listener() {
        assert!(parse_stream_listen("off").unwrap().is_empty());
        assert!(parse_stream_listen(" OFF ").unwrap().is_empty());
    }

    #[test]
    fn udp_and_proxy_protocol_flags() {
        let e = parse_stream_listen("127.0.0.1:53 udp reuseport, 127.0.0.1:9000 ssl proxy_protocol").unwrap();
        assert!(e[0].udp && e[0].reuseport && !e[0].ssl);
        assert!(e[1].proxy_protocol && e[1].ssl && !e[1].udp);
        assert!(parse_stream_listen("127.0.0.1:53 udp ssl").unwrap_err().to_string().contains("DTLS"));
        assert!(parse_stream_listen("127.0.0.1:53 udp proxy_protocol").is_err());
    }

    #[test]
    fn malformed_entries_show_the_form() {
        for bad in [
            "",
            "9000",
            "127.0.0.1",
            "127.0.0.1:99999",
            "::1:9000",
            "[::1:9000",
            "127.0.0.1:9000 http2",
            "127.0.0.1:9000 backlog=abc",
            "127.0.0.1:9000 backlog=0",
            "127.0.0.1:9000 ipv6only=on",
            "127.0.0.1:9000 so_keepalive=maybe",
            "127.0.0.1:9000 sslx",
            "127.0.0.1:9000,",
            "bad_host!:9000",
        ] {
            let err = parse_stream_listen(bad).unwrap_err();
            assert!(err.to_string().contains("stream_listen must be of form"), "{bad:?}: {err}");
        }
    }
}
