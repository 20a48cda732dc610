//! `ip-restriction`: allow or deny sessions by the client address (the one
//! a PROXY protocol header gave, when there was one), v4 and v6, exact
//! addresses and CIDR ranges, as Kong's plugin does on streams.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use strait_model::Protocol;

use strait_plugin::{Conf, ConfigureCx, ConfigureError, Instance, Plugin, Session, Status, Verdict};

#[derive(Debug)]
pub struct IpRestriction;

#[derive(Debug)]
pub struct Config {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    status: Status,
    message: String,
}

impl Plugin for IpRestriction {
    type Config = Config;

    fn name(&self) -> &'static str {
        "ip-restriction"
    }

    fn priority(&self) -> i32 {
        990
    }

    fn protocols(&self) -> &'static [Protocol] {
        &[Protocol::Tcp, Protocol::Tls, Protocol::TlsPassthrough, Protocol::Udp]
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<Config> {
        let allow = conf.ip_list("allow");
        let deny = conf.ip_list("deny");
        let status = conf.status("status", Status::Forbidden);
        let message = conf.string("message", None);
        if allow.is_empty() && deny.is_empty() && conf.is_ok() {
            conf.error("@entity", "at least one of these fields must be non-empty: 'config.allow', 'config.deny'");
        }
        conf.is_ok().then(|| Config {
            allow,
            deny,
            status,
            message: message.unwrap_or_else(|| "Your IP address is not allowed".to_owned()),
        })
    }

    fn configure(&self, config: Config, _cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
        Ok(Arc::new(config))
    }
}

fn listed(list: &[IpNet], ip: IpAddr) -> bool {
    list.iter().any(|n| n.contains(&ip))
}

impl Instance for Config {
    fn preread(&self, s: &mut Session) -> Verdict {
        let ip = s.client().ip().to_canonical();
        // As Kong: a denied address is refused even if it is also allowed.
        let refused = listed(&self.deny, ip) || (!self.allow.is_empty() && !listed(&self.allow, ip));
        if refused {
            s.add_log_field("ip_restriction", serde_json::json!(format!("IP address not allowed: {ip}")));
            return Verdict::reject(self.status, self.message.clone());
        }
        Verdict::Continue
    }
}
