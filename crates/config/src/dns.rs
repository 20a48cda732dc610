//! Kong's `dns_*` settings: which name servers and hosts file resolve
//! upstream targets and service hosts, in which record order, and how long
//! answers and failures are kept.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A record type tried when resolving a name, as in Kong's `dns_order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsType {
    /// The type that last succeeded for this name.
    Last,
    Srv,
    A,
    Aaaa,
    /// Accepted for Kong configs; CNAME chains are always followed.
    Cname,
}

/// How names are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// Name servers; empty means those of `/etc/resolv.conf`.
    pub resolver: Vec<SocketAddr>,
    pub hostsfile: PathBuf,
    pub order: Vec<DnsType>,
    /// Overrides every record's TTL when set.
    pub valid_ttl: Option<Duration>,
    /// How long the last good answer keeps serving while refreshes fail.
    pub stale_ttl: Duration,
    /// How long a name that does not exist is remembered.
    pub not_found_ttl: Duration,
    /// How long before retrying after a server error or timeout.
    pub error_ttl: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            resolver: Vec::new(),
            hostsfile: PathBuf::from("/etc/hosts"),
            // Kong's default is LAST,SRV,A,CNAME; AAAA is added so that
            // IPv6-only names resolve too (A is still preferred).
            order: vec![DnsType::Last, DnsType::Srv, DnsType::A, DnsType::Aaaa, DnsType::Cname],
            valid_ttl: None,
            stale_ttl: Duration::from_secs(3600),
            not_found_ttl: Duration::from_secs(30),
            error_ttl: Duration::from_secs(1),
        }
    }
}

/// Kong's `dns_resolver`: `ip[:port]` entries (IPv6 in brackets when a port
/// is given), comma-separated; port 53 by default. Names are refused: the
/// resolver cannot resolve its own address.
pub fn parse_resolver(items: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let addr = if let Ok(ip) = item.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            SocketAddr::new(ip, 53)
        } else if let Ok(sa) = item.parse::<SocketAddr>() {
            sa
        } else {
            return Err(format!("'{item}' is not an IP address with an optional port (e.g. 10.0.0.2:53)"));
        };
        if addr.port() == 0 {
            return Err(format!("'{item}': port 0 is not a name server port"));
        }
        out.push(addr);
    }
    Ok(out)
}

/// Kong's `dns_order`, e.g. `LAST,SRV,A,CNAME`.
pub fn parse_order(items: &[String]) -> Result<Vec<DnsType>, String> {
    let mut out = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let t = match item.to_ascii_uppercase().as_str() {
            "LAST" => DnsType::Last,
            "SRV" => DnsType::Srv,
            "A" => DnsType::A,
            "AAAA" => DnsType::Aaaa,
            "CNAME" => DnsType::Cname,
            _ => return Err(format!("'{item}' is not one of LAST, SRV, A, AAAA, CNAME")),
        };
        if out.contains(&t) {
            return Err(format!("'{item}' is listed twice"));
        }
        out.push(t);
    }
    if !out.iter().any(|t| matches!(t, DnsType::Srv | DnsType::A | DnsType::Aaaa)) {
        return Err("must name at least one of SRV, A, AAAA".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(',').map(str::to_owned).collect()
    }

    #[test]
    fn resolver_entries() {
        let r = parse_resolver(&v("8.8.8.8, 127.0.0.1:5353,[::1]:53,::2")).unwrap();
        assert_eq!(r[0], "8.8.8.8:53".parse().unwrap());
        assert_eq!(r[1], "127.0.0.1:5353".parse().unwrap());
        assert_eq!(r[2], "[::1]:53".parse().unwrap());
        assert_eq!(r[3], "[::2]:53".parse().unwrap());
        assert!(parse_resolver(&v("dns.google")).unwrap_err().contains("dns.google"));
        assert!(parse_resolver(&v("1.1.1.1:0")).is_err());
    }

    #[test]
    fn order_entries() {
        assert_eq!(parse_order(&v("last,SRV,A,CNAME")).unwrap().len(), 4);
        assert!(parse_order(&v("A,MX")).unwrap_err().contains("MX"));
        assert!(parse_order(&v("A,A")).is_err());
        assert!(parse_order(&v("LAST,CNAME")).is_err());
    }
}
