//! Bad declarative input: every error names the entity, the field and the reason.

use strait_model::{LoadError, load_str};
use test_support::certs::TestCa;
use test_support::gateway::yaml_block;

fn errors(text: &str) -> Vec<String> {
    match load_str(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(LoadError::Invalid(errs)) => errs.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
    }
}

fn expect(text: &str, needles: &[&str]) {
    let errs = errors(text);
    for n in needles {
        assert!(errs.iter().any(|e| e.contains(n)), "no error contains {n:?}: {errs:#?}");
    }
}

fn file(body: &str) -> String {
    format!("_format_version: \"3.0\"\n{body}")
}

#[test]
fn service_fields() {
    expect(
        &file(
            r#"services:
- name: bad name!
  protocol: ftp
  host: "not a host"
  port: 70000
  retries: -1
  connect_timeout: 0
  extra: 1
"#,
        ),
        &[
            "service services[1] (name 'bad name!'): name: invalid value 'bad name!'",
            "protocol: expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp",
            "host: invalid value 'not a host'",
            "port: value should be between 0 and 65535",
            "retries: value should be between 0 and 32767",
            "connect_timeout: value should be between 1 and 2147483646",
            "extra: unknown field",
        ],
    );
}

#[test]
fn tls_only_service_fields_on_tcp() {
    expect(
        &file(
            r#"services:
- name: s
  url: tcp://db:5432
  tls_verify: true
  client_certificate: {id: 1b9b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d}
"#,
        ),
        &[
            "tls_verify: value must be null",
            "client_certificate: value must be null",
            "@entity: failed conditional validation given value of field 'protocol'",
        ],
    );
    expect(&file("services:\n- url: tcp://db:5432/path\n"), &["path: value must be null"]);
    expect(&file("services:\n- url: ftp://db\n"), &["url: invalid url 'ftp://db': unsupported scheme 'ftp'"]);
    expect(&file("services:\n- protocol: tcp\n"), &["host: required field missing"]);
}

#[test]
fn route_rules() {
    expect(
        &file(
            r#"services:
- name: s
  url: tcp://127.0.0.1:1
  routes:
  - name: mixed
    protocols: [tcp, http]
    sources: [{ip: 10.0.0.0/8}]
  - name: snis-on-tcp
    protocols: [tcp]
    snis: [a.test]
  - name: passthrough-without-snis
    protocols: [tls_passthrough]
    destinations: [{port: 1}]
  - name: bad-entries
    protocols: [tcp]
    sources: [{ip: 10.0.0.300}, {port: 99999}, {}, {ip: 10.0.0.0/33}, {ip: 1.2.3.4, extra: 1}]
  - name: bad-snis
    protocols: [tls]
    snis: ["a.test:443", "10.0.0.1", "a.*.test", "*"]
  - name: nothing
    protocols: [udp]
"#,
        ),
        &[
            "route services[1].routes[1] (name 'mixed'): protocols: these sets are mutually exclusive",
            "(name 'snis-on-tcp'): @entity: 'snis' can only be set when 'protocols' is 'grpcs', 'https', 'tls', 'tls_passthrough' or 'udp' (QUIC)",
            "(name 'snis-on-tcp'): snis: length must be 0",
            "(name 'passthrough-without-snis'): @entity: must set snis when 'protocols' is 'tls_passthrough'",
            "sources[1].ip: invalid ip or cidr range: '10.0.0.300'",
            "sources[2].port: value should be between 0 and 65535",
            "sources[3]: at least one of these fields must be non-empty: 'ip', 'port'",
            "sources[4].ip: invalid ip or cidr range: '10.0.0.0/33'",
            "sources[5].extra: unknown field",
            "snis[1]: invalid SNI 'a.test:443': must not have a port",
            "snis[2]: invalid SNI '10.0.0.1': must not be an IP address",
            "snis[3]: invalid SNI 'a.*.test': wildcard must be leftmost",
            "snis[4]: invalid SNI '*'",
            "(name 'nothing'): @entity: must set one of 'sources', 'destinations', 'snis' when 'protocols' is 'tcp', 'tls' or 'udp'",
        ],
    );
}

#[test]
fn references_and_uniqueness() {
    expect(
        &file(
            r#"services:
- name: dup
  url: tcp://127.0.0.1:1
- name: dup
  url: tcp://127.0.0.1:2
routes:
- name: orphan
  protocols: [tcp]
  destinations: [{port: 1}]
  service: missing
- name: orphan2
  protocols: [tcp]
  destinations: [{port: 1}]
  service: {id: 6a1f0e8c-3b2d-4c5e-9f8a-7b6c5d4e3f2a}
"#,
        ),
        &[
            "service services[2] (name 'dup'): name: UNIQUE violation detected on '{name=\"dup\"}'",
            "route routes[1] (name 'orphan'): service: could not find service 'missing'",
            "route routes[2] (name 'orphan2'): service: could not find service '6a1f0e8c-3b2d-4c5e-9f8a-7b6c5d4e3f2a'",
        ],
    );
}

#[test]
fn format_version_and_top_level() {
    expect("services: []\n", &["_format_version: required field missing"]);
    expect("_format_version: \"4.0\"\n", &["unsupported declarative configuration _format_version '4.0'"]);
    expect("_format_version: \"3.0\"\nservicez: []\n", &["servicez: unknown field"]);
    expect("_format_version: \"3.0\"\nservices: 5\n", &["services: expected an array"]);
    expect("- just\n- a list\n", &["expected a record"]);
    assert!(matches!(load_str("services: [\n"), Err(LoadError::Syntax(_))));
}

#[test]
fn certificates() {
    let ca = TestCa::new("ca");
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["b.test"]);
    let mismatched =
        file(&format!("certificates:\n- cert: |\n{}  key: |\n{}", yaml_block(&a.cert, 4), yaml_block(&b.key, 4)));
    let errs = errors(&mismatched);
    assert!(errs.iter().any(|e| e.contains("@entity: certificate does not match key")), "{errs:#?}");
    assert!(!errs.iter().any(|e| e.contains("PRIVATE KEY")), "a key leaked into an error: {errs:#?}");

    expect(
        &file("certificates:\n- cert: nonsense\n  key: nonsense\n"),
        &["cert: invalid certificate", "key: invalid key"],
    );
    // Same key type twice for cert and cert_alt.
    expect(
        &file(&format!(
            "certificates:\n- cert: |\n{}  key: |\n{}  cert_alt: |\n{}  key_alt: |\n{}",
            yaml_block(&a.cert, 4),
            yaml_block(&a.key, 4),
            yaml_block(&b.cert, 4),
            yaml_block(&b.key, 4)
        )),
        &["certificate and alternative certificate need to have different type"],
    );
    expect(
        &file(&format!(
            "certificates:\n- cert: |\n{}  key: |\n{}  cert_alt: |\n{}",
            yaml_block(&a.cert, 4),
            yaml_block(&a.key, 4),
            yaml_block(&b.cert, 4)
        )),
        &["all or none of these fields must be set: 'cert_alt', 'key_alt'"],
    );
    // SNIs: unique, and referencing a certificate that exists.
    expect(
        &file(&format!(
            "certificates:\n- cert: |\n{}  key: |\n{}  snis: [a.test, a.test]\nsnis:\n- name: b.test\n  certificate: {{id: 0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f}}\n",
            yaml_block(&a.cert, 4),
            yaml_block(&a.key, 4)
        )),
        &[
            "sni certificates[1].snis[2] (name 'a.test'): name: UNIQUE violation",
            "sni snis[1] (name 'b.test'): certificate: could not find certificate",
        ],
    );
    // A good one loads, with its SNIs.
    let ok = load_str(&file(&format!(
        "certificates:\n- cert: |\n{}  key: |\n{}  snis: [a.test, \"*.a.test\"]\n",
        yaml_block(&a.cert, 4),
        yaml_block(&a.key, 4)
    )))
    .unwrap();
    assert_eq!(ok.config.snis.len(), 2);
}

#[test]
fn ca_certificates() {
    let ca = TestCa::new("ca");
    let leaf = ca.leaf(&["a.test"]);
    expect(
        &file(&format!("ca_certificates:\n- cert: |\n{}", yaml_block(&leaf.cert, 4))),
        &["cert: certificate does not appear to be a CA because it is missing the \"CA\" basic constraint"],
    );
    let two = format!("{}{}", ca.pem.cert, TestCa::new("other").pem.cert);
    expect(
        &file(&format!("ca_certificates:\n- cert: |\n{}", yaml_block(&two, 4))),
        &["cert: please submit only one certificate at a time"],
    );
    assert!(load_str(&file(&format!("ca_certificates:\n- cert: |\n{}", yaml_block(&ca.pem.cert, 4)))).is_ok());
}

#[test]
fn upstreams_targets_plugins() {
    expect(
        &file(
            r#"upstreams:
- name: 10.0.0.1
  algorithm: fastest
  slots: 5
  targets:
  - target: "bad host:x"
  - target: a.internal:8080
    weight: 70000
plugins:
- config: {}
- name: ip-restriction
  config: 5
  consumer: {id: 0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f}
"#,
        ),
        &[
            "name: Invalid name ('10.0.0.1'); no ip addresses allowed",
            "algorithm: expected one of: consistent-hashing, least-connections, round-robin, latency",
            "slots: value should be between 10 and 65536",
            "target: Invalid target ('bad host:x')",
            "weight: value should be between 0 and 65535",
            "plugin plugins[1]: name: required field missing",
            "config: expected a record",
            "consumer: stream plugins cannot be scoped to consumers",
        ],
    );
    let ok = load_str(&file(
        "upstreams:\n- name: pool\n  targets:\n  - target: a.internal\n  - target: 10.0.0.1:9000\n    weight: 0\n",
    ))
    .unwrap();
    assert_eq!(ok.config.targets[0].port, 8000, "Kong's default target port");
    assert_eq!(ok.config.targets[1].weight, 0);
}

#[test]
fn upstream_hashing_and_healthchecks() {
    expect(
        &file(
            r#"upstreams:
- name: a
  hash_on: none
  hash_fallback: ip
- name: b
  algorithm: consistent-hashing
  hash_on: ip
  hash_fallback: ip
- name: c
  hash_on: header
  hash_fallback: cookie
- name: d
  hash_on: weather
  healthchecks:
    threshold: 150
    active:
      type: icmp
      concurrency: 0
      healthy: {interval: -1, successes: 256}
      unhealthy: {tcp_failures: 3.5, http_statuses: [99]}
    passive:
      unhealthy: {timeouts: -2}
"#,
        ),
        &[
            "upstream upstreams[1] (name 'a'): hash_fallback: expected one of: none",
            "upstream upstreams[1] (name 'a'): @entity: failed conditional validation given value of field 'hash_on'",
            "upstream upstreams[2] (name 'b'): hash_fallback: expected one of: none, consumer, header",
            "upstream upstreams[3] (name 'c'): hash_on_header: required field missing",
            "upstream upstreams[3] (name 'c'): hash_on_cookie: required field missing",
            "hash_on: expected one of: none, consumer, ip, header, cookie, path, query_arg, uri_capture",
            "healthchecks.threshold: value should be between 0 and 100",
            "healthchecks.active.type: expected one of: tcp, tls, http, https, grpc, grpcs",
            "healthchecks.active.concurrency: value should be between 1 and 2147483648",
            "healthchecks.active.healthy.interval: value should be between 0 and 65535",
            "healthchecks.active.healthy.successes: value should be between 0 and 255",
            "healthchecks.active.unhealthy.tcp_failures: expected an integer",
            "healthchecks.active.unhealthy.http_statuses[1]: value should be between 100 and 999",
            "healthchecks.passive.unhealthy.timeouts: value should be between 0 and 255",
        ],
    );
}

#[test]
fn service_proxy_protocol_extension() {
    expect(
        &file(
            "services:\n- name: s\n  url: tcp://10.0.0.1:1\n  proxy_protocol: v3\n- name: h\n  url: http://10.0.0.1\n  proxy_protocol: v1\n",
        ),
        &[
            "service services[1] (name 's'): proxy_protocol: expected one of: off, v1, v2",
            "service services[2] (name 'h'): proxy_protocol: only tcp and tls services",
        ],
    );
    let ok = load_str(&file("services:\n- name: s\n  url: tls://10.0.0.1:1\n  proxy_protocol: v2\n")).unwrap();
    assert_eq!(ok.config.services[0].proxy_protocol, strait_model::ProxyProtocolOut::V2);
    let exported = strait_model::export::to_declarative(&ok.config);
    assert_eq!(exported["services"][0]["proxy_protocol"], "v2");
}

#[test]
fn duplicate_targets_are_refused() {
    expect(
        &file(
            r#"upstreams:
- name: pool
  targets:
  - target: 10.0.0.1:6379
  - target: 10.0.0.1:6379
  - target: Redis.internal
targets:
- target: redis.internal:8000
  upstream: pool
"#,
        ),
        &[
            r#"target upstreams[1].targets[2] (name '10.0.0.1:6379'): target: UNIQUE violation detected on '{target="10.0.0.1:6379","#,
            r#"target targets[1] (name 'redis.internal:8000'): target: UNIQUE violation"#,
        ],
    );
    // The same address in two upstreams is fine.
    load_str(&file(
        "upstreams:\n- name: a\n  targets: [{target: 10.0.0.1:1}]\n- name: b\n  targets: [{target: 10.0.0.1:1}]\n",
    ))
    .unwrap();
}

#[test]
fn every_prefix_of_a_valid_file_is_handled() {
    let text = file(
        r#"services:
- name: s
  url: tcp://127.0.0.1:6379
  routes:
  - name: r
    protocols: [tcp, tls]
    destinations: [{ip: 127.0.0.1, port: 9000}]
    sources: [{ip: "::1/128"}]
"#,
    );
    assert!(load_str(&text).is_ok());
    for (i, _) in text.char_indices() {
        let _ = load_str(&text[..i]);
    }
    let json = serde_json::to_string(&strait_model::declarative::parse_text(&text).unwrap()).unwrap();
    for (i, _) in json.char_indices() {
        let _ = load_str(&json[..i]);
    }
}

#[test]
fn syntax_errors_never_echo_the_input() {
    let text = "_format_version: \"3.0\"\ncertificates:\n- key: |\n    -----BEGIN PRIVATE KEY-----\n    c2VjcmV0\n  cert: [unclosed\n";
    let err = load_str(text).unwrap_err().to_string();
    assert!(!err.contains("c2VjcmV0") && !err.contains("PRIVATE KEY"), "{err}");
}

/// A plugin that runs on `tcp` and `tls` only.
struct TcpTlsOnly;

impl strait_model::PluginSchemas for TcpTlsOnly {
    fn check(
        &self,
        _name: &str,
        config: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<strait_model::ConfigCheck> {
        Some(Ok(config.clone()))
    }

    fn protocols(&self, _name: &str) -> Option<&'static [strait_model::Protocol]> {
        Some(&[strait_model::Protocol::Tcp, strait_model::Protocol::Tls])
    }
}

#[test]
fn plugin_errors_name_the_protocol_as_written_and_no_false_duplicate() {
    let options = strait_model::Options {
        plugins: strait_model::PluginNames { bundled: true, custom: vec!["narrow".into()] },
        schemas: Some(std::sync::Arc::new(TcpTlsOnly)),
        filters: None,
    };
    let text = file(
        r#"plugins:
- name: narrow
  protocols: [udp, tcp, tls_passthrough]
- name: narrow
  route: nowhere
- name: narrow
  route: nothing-either
"#,
    );
    let errs = match strait_model::load_str_with(&text, &options) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(LoadError::Invalid(errs)) => errs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        Err(e) => panic!("{e}"),
    };
    // In the order written: udp first, tls_passthrough third.
    for n in ["plugins[1]", "protocols[1]: expected one of: tcp, tls", "protocols[3]: expected one of: tcp, tls"] {
        assert!(errs.iter().any(|e| e.contains(n)), "no error contains {n:?}: {errs:#?}");
    }
    assert!(!errs.iter().any(|e| e.contains("protocols[2]")), "{errs:#?}");
    // Two plugins naming missing routes: their errors, and no UNIQUE violation.
    assert_eq!(errs.iter().filter(|e| e.contains("nowhere") || e.contains("nothing-either")).count(), 2, "{errs:#?}");
    assert!(!errs.iter().any(|e| e.contains("UNIQUE")), "{errs:#?}");
}
