//! Real Kong configurations (see kong-configs/MANIFEST.md): what Kong accepts,
//! Strait accepts; what Kong rejects, Strait rejects naming the field.

use strait_model::{LoadError, Options, PluginNames, Protocol, load_str, load_str_with};

/// `plugins = bundled,myplugin`, as those users' kong.conf must say.
fn with_myplugin() -> Options {
    Options { plugins: PluginNames { bundled: true, custom: vec!["myplugin".into()] }, schemas: None, filters: None }
}

fn corpus(name: &str) -> String {
    let path = format!("{}/tests/kong-configs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn errors(text: &str) -> Vec<String> {
    match load_str(text) {
        Ok(_) => Vec::new(),
        Err(LoadError::Invalid(errs)) => errs.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
    }
}

fn assert_rejected(text: &str, needles: &[&str]) {
    let errs = errors(text);
    assert!(!errs.is_empty(), "accepted, but Kong rejects it");
    for n in needles {
        assert!(errs.iter().any(|e| e.contains(n)), "no error contains {n:?}: {errs:#?}");
    }
}

/// Wraps a route object (docs fragment or Admin API object) into a 3.0 file.
fn as_route_file(fragment: &str) -> String {
    let route = strait_model::declarative::parse_text(fragment).expect("fragment parses");
    serde_json::json!({"_format_version": "3.0", "routes": [route]}).to_string()
}

#[test]
fn kic_tls_route_on_upstream_backed_service_is_accepted() {
    let loaded = load_str(&corpus("02-kic-golden-tlsroute.yml")).unwrap();
    let c = &loaded.config;
    assert_eq!(c.routes.len(), 1);
    assert!(c.routes[0].protocols.contains(Protocol::Tls));
    assert_eq!(c.upstreams[0].name, c.services[0].host, "service host names the upstream");
    assert_eq!(c.plugins[0].name, "request-termination");
    assert_eq!(c.plugins[0].service.map(|s| s.0), Some(0));
}

#[test]
fn deck_dump_with_http_only_fields_and_format_1_1_is_accepted() {
    let text = corpus("04-sratkong-tcp-stream-plugin-sample.yml");
    // A custom plugin must be enabled, as in Kong.
    assert_rejected(&text, &["name: plugin 'myplugin' not enabled; add it to the 'plugins' configuration property"]);
    let loaded = load_str_with(&text, &with_myplugin()).unwrap();
    let c = &loaded.config;
    assert_eq!(c.services[0].port, 4242);
    assert_eq!(c.routes[0].sources.len(), 1);
    assert_eq!(c.plugins.len(), 2);
    assert!(c.plugins.iter().all(|p| p.protocols.is_some_and(|s| s.contains(Protocol::Tcp))));
}

#[test]
fn dbless_destination_port_route_is_accepted() {
    let loaded = load_str(&corpus("07-issue-kong-5656-dbless-stream.yml")).unwrap();
    assert_eq!(loaded.config.routes[0].destinations[0].port, Some(9000));
}

#[test]
fn tcp_and_udp_routes_without_matchers_are_rejected() {
    for f in ["01-kic-golden-tcproute.yml", "03-kic-golden-udproute.yml"] {
        assert_rejected(
            &corpus(f),
            &["@entity: must set one of 'sources', 'destinations', 'snis' when 'protocols' is 'tcp', 'tls' or 'udp'"],
        );
    }
}

#[test]
fn files_without_format_version_are_rejected() {
    for f in ["08-issue-kong-5501-tls-sni-route.yml", "10-issue-kong-4482-dbless-tcp-toplevel-routes.yml"] {
        assert_rejected(&corpus(f), &["_format_version: required field missing"]);
    }
    // With the version added, Kong's DB-less loader accepts them.
    for f in ["08-issue-kong-5501-tls-sni-route.yml", "10-issue-kong-4482-dbless-tcp-toplevel-routes.yml"] {
        let text = format!("_format_version: \"3.0\"\n{}", corpus(f));
        let loaded = load_str_with(&text, &with_myplugin()).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(loaded.config.routes[0].service.is_some(), "{f}: route resolved to its service");
    }
}

#[test]
fn url_shorthand_and_reference_by_name() {
    let text = format!("_format_version: \"3.0\"\n{}", corpus("10-issue-kong-4482-dbless-tcp-toplevel-routes.yml"));
    let c = load_str_with(&text, &with_myplugin()).unwrap().config;
    assert_eq!(c.services[0].protocol, Protocol::Tcp);
    assert_eq!((c.services[0].host.as_str(), c.services[0].port), ("127.0.0.1", 28830));
    assert_eq!(c.plugins[0].route.map(|r| r.0), Some(0), "plugin nested under a top-level route");
}

#[test]
fn hosts_on_a_tcp_route_is_rejected() {
    assert_rejected(
        &corpus("14-issue-deck-932-tcp-route-with-hosts.yml"),
        &["hosts: cannot set 'hosts' when 'protocols' is 'tcp', 'tls', 'tls_passthrough' or 'udp'"],
    );
}

#[test]
fn docs_route_fragments_get_kong_errors() {
    for f in [
        "11-docs-routing-traffic-tcp-route.yml",
        "12-docs-routing-traffic-tls-route.yml",
        "13-docs-routing-traffic-tcp-and-tls-route.yml",
    ] {
        assert_rejected(
            &as_route_file(&corpus(f)),
            &["cannot set 'hosts'", "cannot set 'paths'", "cannot set 'methods'", "service.id: expected a valid UUID"],
        );
    }
    // The sources example is fine but for its placeholder id.
    assert_rejected(&as_route_file(&corpus("05-docs-traditional-router-sources.yml")), &["id: expected a valid UUID"]);
    // https mixed with tls, and an unknown field.
    assert_rejected(
        &as_route_file(&strait_model::declarative::parse_text(&corpus("09-docs-route-entity-tls-route-config.yml")).unwrap()["data"].to_string()),
        &["protocols: these sets are mutually exclusive", "host: unknown field"],
    );
}

#[test]
fn admin_api_route_object_with_nulls_is_accepted_in_a_file() {
    let mut route =
        strait_model::declarative::parse_text(&corpus("15-issue-kong-11748-admin-api-tcp-route.yml")).unwrap();
    // The service it names is not in this file; give it one.
    route["service"] = serde_json::json!({"id": "28154309-aa0e-4cb2-b903-cc16838980d0"});
    let file = serde_json::json!({
        "_format_version": "3.0",
        "services": [{"id": "28154309-aa0e-4cb2-b903-cc16838980d0", "name": "mysql", "url": "tcp://127.0.0.1:3306"}],
        "routes": [route],
    });
    let c = load_str(&file.to_string()).unwrap().config;
    assert_eq!(c.routes[0].sources[0].port, None);
    assert_eq!(c.routes[0].service.map(|s| s.0), Some(0));
}

#[test]
fn invalid_json_fragment_is_a_syntax_error() {
    assert!(matches!(
        load_str(&corpus("06-docs-traditional-compat-priority-sources-on-http.yml")),
        Err(LoadError::Syntax(_)) | Err(LoadError::Invalid(_))
    ));
}
