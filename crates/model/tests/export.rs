//! Export gives Kong's full entity shape, and loading an export gives the
//! same configuration back.

use serde_json::Value;
use strait_model::{export, load_str, load_value};
use test_support::certs::TestCa;
use test_support::gateway::yaml_block;

fn round_trip(text: &str) -> (Value, Value) {
    let first = export::to_declarative(&load_str(text).expect("valid input").config);
    let second = export::to_declarative(&load_value(&first).expect("export loads").config);
    (first, second)
}

#[test]
fn a_rich_configuration_round_trips() {
    let ca = TestCa::new("ca");
    let leaf = ca.leaf(&["a.test"]);
    let text = format!(
        r#"_format_version: "3.0"
ca_certificates:
- id: 2f4f1c1e-3d5b-4a8e-9c7d-6b5a4c3d2e1f
  cert: |
{ca}certificates:
- id: 4b6c5a9e-8f1d-4c3e-9a2b-1d2e3f4a5b6c
  cert: |
{cert}  key: |
{key}  snis: [a.test, "*.a.test"]
services:
- name: tls-svc
  url: tls://backend.internal:8443
  tls_verify: true
  tls_verify_depth: 2
  ca_certificates: [2f4f1c1e-3d5b-4a8e-9c7d-6b5a4c3d2e1f]
  client_certificate: {{id: 4b6c5a9e-8f1d-4c3e-9a2b-1d2e3f4a5b6c}}
  tags: [team-a]
  routes:
  - name: r1
    protocols: [tcp, tls]
    sources: [{{ip: 10.1.2.3/16, port: 80}}, {{ip: "::1"}}]
    destinations: [{{port: 9000}}]
    strip_path: false
    plugins:
    - name: ip-restriction
      config: {{allow: [10.0.0.0/8]}}
      protocols: [tcp]
- name: web
  url: http://web.internal/api
  routes:
  - name: http-route
    hosts: [example.com]
    paths: [/x]
upstreams:
- name: pool
  algorithm: least-connections
  host_header: pool.internal
  targets:
  - target: "[::1]:9000"
    weight: 5
  - target: a.internal
plugins:
- name: file-log
  config: {{path: /tmp/x.log}}
"#,
        ca = yaml_block(&ca.pem.cert, 4),
        cert = yaml_block(&leaf.cert, 4),
        key = yaml_block(&leaf.key, 4),
    );
    let (first, second) = round_trip(&text);
    assert_eq!(first, second);

    // Kong's shape: every field present, defaults filled, references by id.
    let route = &first["routes"][0];
    assert_eq!(route["sources"][0]["ip"], "10.1.0.0/16", "IPv4 CIDRs are normalised");
    assert_eq!(route["strip_path"], false, "HTTP-only fields survive");
    assert_eq!(route["https_redirect_status_code"], 426);
    assert_eq!(route["service"]["id"], first["services"][0]["id"]);
    let svc = &first["services"][0];
    assert_eq!(svc["protocol"], "tls");
    assert_eq!(svc["port"], 8443);
    assert_eq!(svc["retries"], 5);
    assert_eq!(svc["client_certificate"]["id"], "4b6c5a9e-8f1d-4c3e-9a2b-1d2e3f4a5b6c");
    assert_eq!(first["services"][1]["path"], "/api");
    assert_eq!(first["routes"][1]["hosts"][0], "example.com");
    assert_eq!(first["snis"].as_array().map(Vec::len), Some(2));
    assert_eq!(first["targets"][0]["target"], "[::1]:9000");
    assert_eq!(first["targets"][1]["target"], "a.internal:8000");
    assert_eq!(first["plugins"][0]["route"]["id"], route["id"]);
    assert_eq!(first["certificates"][0]["key"].as_str().map(|k| k.contains("PRIVATE KEY")), Some(true));
}

#[test]
fn generated_ids_are_stable() {
    let text = "_format_version: \"3.0\"\nservices:\n- name: s\n  url: tcp://127.0.0.1:1\n";
    let a = export::to_declarative(&load_str(text).unwrap().config);
    let b = export::to_declarative(&load_str(text).unwrap().config);
    assert_eq!(a["services"][0]["id"], b["services"][0]["id"]);
}
