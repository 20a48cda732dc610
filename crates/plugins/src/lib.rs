//! Strait's built-in plugins: ip-restriction, connection-limit,
//! connection-rate-limit, the four log sinks (file, tcp, udp, http),
//! prometheus, mtls-auth, and the kit's examples (tag-session, and
//! redis-guard for the data phase).
//!
//! They use the kit (`strait-plugin`) from outside, exactly as
//! `docs/PLUGINS.md` tells a plugin author to, and the binary registers
//! them ([`registry`]); nothing on the data path depends on this crate, so
//! the HTTP client `http-log` needs stays here.

mod example;
mod ip_restriction;
mod limits;
mod logs;
mod mtls;
mod prometheus;
mod redis_guard;

use strait_plugin::Registry;

pub use example::TagSession;
pub use ip_restriction::IpRestriction;
pub use limits::{ConnectionLimit, ConnectionRateLimit};
pub use logs::{FileLog, HttpLog, TcpLog, UdpLog};
pub use mtls::MtlsAuth;
pub use prometheus::Prometheus;
pub use redis_guard::RedisGuard;

/// Every built-in plugin, and the kit's example plugins (which, not being
/// bundled, run only when the `plugins` setting names them).
pub fn registry() -> Registry {
    Registry::default()
        .with(IpRestriction)
        .with(ConnectionLimit)
        .with(ConnectionRateLimit)
        .with(FileLog)
        .with(TcpLog)
        .with(UdpLog)
        .with(HttpLog)
        .with(Prometheus)
        .with(MtlsAuth)
        .with(TagSession)
        .with(RedisGuard)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_log_plugins_describe_their_common_fields_too() {
        let registry = super::registry();
        let schema = registry.schema("tcp-log").expect("tcp-log is registered");
        let config = &schema["fields"][11]["config"]["fields"];
        for field in ["host", "port", "keepalive", "custom_fields_by_lua", "interval"] {
            assert!(
                config.as_array().expect("a list").iter().any(|f| f.get(field).is_some()),
                "{field} is not described: {config}"
            );
        }
    }
}
