//! Resolving target and service host names, with TTLs: the hosts file
//! first, then DNS in `dns_order` (SRV, A, AAAA; `LAST` tries the type that
//! answered last time first). SRV answers give each address its own port and
//! weight; only the lowest priority is used, as RFC 2782 says.
//!
//! The DNS client is hickory's, created on first use inside the runtime.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use strait_config::{DnsSettings, DnsType};

/// One resolved address; `weight` and `name` (the SRV target) are set for
/// SRV answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub addr: SocketAddr,
    pub weight: Option<u16>,
    pub name: Option<String>,
}

/// A successful resolution.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub addrs: Vec<Resolved>,
    pub ttl: Duration,
    /// `A`, `AAAA`, `SRV` or `hosts`, for the health report.
    pub source: &'static str,
}

/// Why a name gave no addresses.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The name does not exist or has no records of the tried types.
    NotFound(String),
    /// Server failure, timeout, unreachable name server.
    Error(String),
}

impl Failure {
    pub(crate) fn message(&self) -> &str {
        match self {
            Failure::NotFound(m) | Failure::Error(m) => m,
        }
    }
}

/// The resolver shared by every upstream.
#[derive(Debug)]
pub struct Dns {
    settings: DnsSettings,
    hosts: HashMap<String, Vec<IpAddr>>,
    client: OnceLock<TokioResolver>,
    /// The record type that last answered, per name (`LAST`).
    last: Mutex<HashMap<String, DnsType>>,
}

/// Hosts-file answers do not expire; the file is read once at start.
const HOSTS_TTL: Duration = Duration::from_secs(365 * 86_400);

impl Dns {
    pub fn new(settings: DnsSettings) -> Dns {
        let hosts = match std::fs::read_to_string(&settings.hostsfile) {
            Ok(text) => parse_hosts(&text),
            Err(e) => {
                tracing::warn!(file = %settings.hostsfile.display(), error = %e, "dns_hostsfile cannot be read; names resolve through DNS only");
                HashMap::new()
            }
        };
        Dns { settings, hosts, client: OnceLock::new(), last: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// The DNS client, created on first use; a failure (say, an unreadable
    /// `/etc/resolv.conf`) is retried on the next resolution.
    fn client(&self) -> Result<&TokioResolver, String> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let (config, mut opts) = if self.settings.resolver.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("cannot read /etc/resolv.conf ({e}); set dns_resolver"))?
        } else {
            let servers = self.settings.resolver.iter().map(|a| name_server(*a)).collect();
            (ResolverConfig::from_name_servers(servers), ResolverOpts::default())
        };
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let client = hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| format!("cannot create the DNS client: {e}"))?;
        Ok(self.client.get_or_init(|| client))
    }

    /// Resolves `name`; `port` is used unless SRV records give their own.
    pub(crate) async fn resolve(&self, name: &str, port: u16) -> Result<Answer, Failure> {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ips) = self.hosts.get(&key) {
            // Typed like DNS answers: `localhost` gives 127.0.0.1 alone when
            // A comes before AAAA in dns_order, as in Kong.
            for t in &self.settings.order {
                let want_v4 = match t {
                    DnsType::A => true,
                    DnsType::Aaaa => false,
                    _ => continue,
                };
                let addrs: Vec<Resolved> = ips
                    .iter()
                    .filter(|ip| ip.is_ipv4() == want_v4)
                    .map(|ip| Resolved { addr: SocketAddr::new(*ip, port), weight: None, name: None })
                    .collect();
                if !addrs.is_empty() {
                    return Ok(Answer { addrs, ttl: HOSTS_TTL, source: "hosts" });
                }
            }
        }
        let client = self.client().map_err(Failure::Error)?;
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
        let mut order: Vec<DnsType> = Vec::with_capacity(self.settings.order.len() + 1);
        for t in &self.settings.order {
            match t {
                DnsType::Last => order.extend(last),
                DnsType::Cname => {}
                t if !order.contains(t) => order.push(*t),
                _ => {}
            }
        }
        // A fully qualified query: no search domains, no surprises.
        let fqdn = format!("{key}.");
        let mut error = None;
        for t in order {
            let result = match t {
                DnsType::Srv => self.srv(client, &fqdn).await,
                DnsType::A => ip_lookup(client, &fqdn, RecordType::A, port).await,
                DnsType::Aaaa => ip_lookup(client, &fqdn, RecordType::AAAA, port).await,
                DnsType::Last | DnsType::Cname => continue,
            };
            match result {
                Ok(mut answer) if !answer.addrs.is_empty() => {
                    self.last.lock().unwrap_or_else(|p| p.into_inner()).insert(key, t);
                    if let Some(ttl) = self.settings.valid_ttl {
                        answer.ttl = ttl;
                    }
                    return Ok(answer);
                }
                Ok(_) => {}
                Err(Failure::NotFound(_)) => {}
                Err(e @ Failure::Error(_)) => error = Some(e),
            }
        }
        Err(error
            .unwrap_or_else(|| Failure::NotFound(format!("name resolution failed for '{key}': no address records"))))
    }

    async fn srv(&self, client: &TokioResolver, fqdn: &str) -> Result<Answer, Failure> {
        let lookup = client.lookup(fqdn, RecordType::SRV).await.map_err(|e| failure(fqdn, &e))?;
        let mut ttl = ttl_of(lookup.valid_until());
        let records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        let mut priorities: Vec<u16> = records.iter().map(|s| s.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let mut addrs = Vec::new();
        // The lowest priority whose records give addresses (RFC 2782: higher
        // values are backups).
        for priority in priorities {
            for s in records.iter().filter(|s| s.priority == priority) {
                let target = s.target.to_ascii();
                // Addresses in the additional section save a round trip.
                let mut ips: Vec<IpAddr> = lookup
                    .additionals()
                    .iter()
                    .filter(|r| r.name == s.target)
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect();
                let host = target.trim_end_matches('.').to_ascii_lowercase();
                if ips.is_empty() {
                    if let Some(h) = self.hosts.get(&host) {
                        ips.clone_from(h);
                    } else {
                        for rt in [RecordType::A, RecordType::AAAA] {
                            if let Ok(a) = ip_lookup(client, &target, rt, s.port).await {
                                if !a.addrs.is_empty() {
                                    ttl = ttl.min(a.ttl);
                                    ips.extend(a.addrs.iter().map(|r| r.addr.ip()));
                                    break;
                                }
                            }
                        }
                    }
                }
                if ips.is_empty() {
                    tracing::warn!(name = fqdn, target = %target, "SRV target has no address; skipped");
                }
                addrs.extend(ips.into_iter().map(|ip| Resolved {
                    addr: SocketAddr::new(ip, s.port),
                    weight: Some(s.weight.max(1)),
                    name: Some(host.clone()),
                }));
            }
            if !addrs.is_empty() {
                break;
            }
        }
        Ok(Answer { addrs, ttl, source: "SRV" })
    }

    /// How long to wait before asking again after `failure`.
    pub(crate) fn retry_after(&self, failure: &Failure) -> Duration {
        match failure {
            Failure::NotFound(_) => self.settings.not_found_ttl,
            Failure::Error(_) => self.settings.error_ttl,
        }
        .max(Duration::from_millis(100))
    }
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    ns
}

async fn ip_lookup(client: &TokioResolver, name: &str, rt: RecordType, port: u16) -> Result<Answer, Failure> {
    let lookup = client.lookup(name, rt).await.map_err(|e| failure(name, &e))?;
    let addrs = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) if rt == RecordType::A => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) if rt == RecordType::AAAA => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .map(|ip| Resolved { addr: SocketAddr::new(ip, port), weight: None, name: None })
        .collect();
    let source = if rt == RecordType::A { "A" } else { "AAAA" };
    Ok(Answer { addrs, ttl: ttl_of(lookup.valid_until()), source })
}

fn ttl_of(valid_until: Instant) -> Duration {
    // A TTL of 0 would mean a query per session; one second is the floor.
    valid_until.saturating_duration_since(Instant::now()).max(Duration::from_secs(1))
}

fn failure(name: &str, e: &hickory_resolver::net::NetError) -> Failure {
    let name = name.trim_end_matches('.');
    if e.is_no_records_found() || e.is_nx_domain() {
        Failure::NotFound(format!("name resolution failed for '{name}': no such name or no records"))
    } else {
        Failure::Error(format!("name resolution failed for '{name}': {e}"))
    }
}

/// `/etc/hosts` syntax: an address, then names; `#` starts a comment.
fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        for name in words {
            let list = map.entry(name.trim_end_matches('.').to_ascii_lowercase()).or_default();
            if !list.contains(&ip) {
                list.push(ip);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file() {
        let h = parse_hosts("127.0.0.1 localhost Pool.Local\n::1 localhost # v6\n# 10.0.0.1 gone\nbad line\n");
        assert_eq!(h["localhost"], vec!["127.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
        assert!(h.contains_key("pool.local"));
        assert!(!h.contains_key("gone"));
    }

    #[tokio::test]
    async fn hosts_answers_follow_dns_order() {
        let file = std::env::temp_dir().join(format!("strait-hosts-{}", std::process::id()));
        std::fs::write(&file, "127.0.0.1 db.local\n::1 db.local\n").unwrap();
        let mut settings = DnsSettings { hostsfile: file.clone(), ..DnsSettings::default() };
        let a = Dns::new(settings.clone()).resolve("DB.local.", 5432).await.unwrap();
        assert_eq!(a.addrs, vec![Resolved { addr: "127.0.0.1:5432".parse().unwrap(), weight: None, name: None }]);
        assert_eq!(a.source, "hosts");
        settings.order = vec![DnsType::Aaaa, DnsType::A];
        let a = Dns::new(settings).resolve("db.local", 5432).await.unwrap();
        assert_eq!(a.addrs[0].addr, "[::1]:5432".parse::<SocketAddr>().unwrap());
        std::fs::remove_file(file).unwrap();
    }
}
