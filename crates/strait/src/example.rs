//! The commented example that `strait config init` writes.

/// A declarative file in Kong's format that exercises the stream features.
pub const DECLARATIVE: &str = r#"# Strait declarative configuration, in Kong's format.
# Validate it with: strait config parse <this file>
_format_version: "3.0"

services:
  # A plain TCP service. `url: tcp://127.0.0.1:6379` would say the same.
  - name: redis
    protocol: tcp
    host: 127.0.0.1
    port: 6379
    # Kong's defaults: 5 retries, 60 s timeouts. The idle timeout of a stream
    # session is max(read_timeout, write_timeout).
    connect_timeout: 5000
    read_timeout: 600000
    write_timeout: 600000
    routes:
      # Sessions sent to port 9000 of this host.
      - name: redis-plain
        protocols: [tcp]
        destinations:
          - port: 9000
      # TLS clients asking for redis.localhost: terminated here, plain to Redis.
      - name: redis-tls
        protocols: [tls]
        snis: [redis.localhost]

  # A service reached over TLS: Strait encrypts towards it.
  - name: secure-backend
    url: tls://backend.internal:8443
    tls_verify: false
    routes:
      # Only clients from 10.0.0.0/8 reach it, on port 9001.
      - name: from-private-net
        protocols: [tcp]
        sources:
          - ip: 10.0.0.0/8
        destinations:
          - port: 9001

  # TLS passed through untouched, chosen by the SNI of the ClientHello.
  - name: passthrough-backend
    protocol: tcp
    host: 127.0.0.1
    port: 8443
    routes:
      - name: passthrough
        protocols: [tls_passthrough]
        snis: ["*.pass.localhost"]

# Certificates used to terminate TLS, chosen by SNI (exact, *.x, x.*, then
# the default certificate from ssl_cert or the generated one).
# certificates:
#   - cert: |
#       -----BEGIN CERTIFICATE-----
#       ...
#     key: |
#       -----BEGIN PRIVATE KEY-----
#       ...
#     snis: [redis.localhost]
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn example_is_valid() {
        let loaded = strait_model::load_str(super::DECLARATIVE).unwrap();
        assert_eq!(loaded.config.services.len(), 3);
        assert_eq!(loaded.config.routes.len(), 4);
    }
}
