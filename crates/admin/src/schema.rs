//! What the Admin API serves, as data: the route table, and the OpenAPI 3
//! document built from it and from each entity's fields as the loader
//! describes them (`strait_model::entity_schema`, also `/schemas/{entity}`).
//! `docs/openapi.json` in the repository is this document; a test keeps the
//! two equal, and another checks the server answers every route in it.

use serde_json::{Map, Value, json};
use strait_model::{EntityKind, Options};

/// Every path the Admin API answers, with its methods.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["GET"]),
    ("/status", &["GET"]),
    ("/metrics", &["GET"]),
    ("/clustering/status", &["GET"]),
    ("/config", &["GET", "POST"]),
    ("/openapi.json", &["GET"]),
    ("/plugins/enabled", &["GET"]),
    ("/schemas/{entity}", &["GET"]),
    ("/schemas/{entity}/validate", &["POST"]),
    ("/schemas/plugins/{plugin_name}", &["GET"]),
    ("/services", &["GET", "POST"]),
    ("/services/{service}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/services/{service}/routes", &["GET", "POST"]),
    ("/services/{service}/routes/{route}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/services/{service}/plugins", &["GET", "POST"]),
    ("/services/{service}/plugins/{plugin}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/services/{service}/client_certificate", &["GET"]),
    ("/routes", &["GET", "POST"]),
    ("/routes/{route}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/routes/{route}/service", &["GET"]),
    ("/routes/{route}/plugins", &["GET", "POST"]),
    ("/routes/{route}/plugins/{plugin}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/certificates", &["GET", "POST"]),
    ("/certificates/{certificate}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/certificates/{certificate}/snis", &["GET", "POST"]),
    ("/certificates/{certificate}/snis/{sni}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/certificates/{certificate}/services", &["GET"]),
    ("/certificates/{certificate}/x509", &["GET"]),
    ("/snis", &["GET", "POST"]),
    ("/snis/{sni}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/ca_certificates", &["GET", "POST"]),
    ("/ca_certificates/{ca_certificate}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/ca_certificates/{ca_certificate}/x509", &["GET"]),
    ("/upstreams", &["GET", "POST"]),
    ("/upstreams/{upstream}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/upstreams/{upstream}/targets", &["GET", "POST"]),
    ("/upstreams/{upstream}/targets/all", &["GET"]),
    ("/upstreams/{upstream}/targets/{target}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/upstreams/{upstream}/health", &["GET"]),
    ("/upstreams/{upstream}/targets/{target}/healthy", &["PUT", "POST"]),
    ("/upstreams/{upstream}/targets/{target}/unhealthy", &["PUT", "POST"]),
    ("/upstreams/{upstream}/targets/{target}/{address}/healthy", &["PUT", "POST"]),
    ("/upstreams/{upstream}/targets/{target}/{address}/unhealthy", &["PUT", "POST"]),
    ("/upstreams/{upstream}/targets/{target}/drain", &["GET", "POST", "DELETE"]),
    ("/sessions", &["GET", "DELETE"]),
    ("/sessions/events", &["GET"]),
    ("/sessions/{session}", &["GET", "DELETE"]),
    ("/router/match", &["GET"]),
    ("/plugins", &["GET", "POST"]),
    ("/plugins/{plugin}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/schemas/filters/{filter_name}", &["GET"]),
    ("/filter-chains", &["GET", "POST"]),
    ("/filter-chains/{filter_chain}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/filter-chains/{filter_chain}/route", &["GET", "PUT", "PATCH"]),
    ("/filter-chains/{filter_chain}/service", &["GET", "PUT", "PATCH"]),
    ("/routes/{route}/filter-chains", &["GET", "POST"]),
    ("/routes/{route}/filter-chains/{filter_chain}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/routes/{route}/filters/all", &["GET"]),
    ("/routes/{route}/filters/enabled", &["GET"]),
    ("/routes/{route}/filters/disabled", &["GET"]),
    ("/services/{service}/filter-chains", &["GET", "POST"]),
    ("/services/{service}/filter-chains/{filter_chain}", &["GET", "PUT", "PATCH", "DELETE"]),
];

/// The sessions endpoints' filters (`GET`/`DELETE /sessions`, the events).
const SESSION_FILTERS: [(&str, &str, &str); 10] = [
    ("route", "string", "route id or name"),
    ("service", "string", "service id or name"),
    ("upstream", "string", "upstream id or name, or the upstream address"),
    ("target", "string", "target (ip:port or host:port) or the upstream address"),
    ("client", "string", "client IP or CIDR"),
    ("sni", "string", "server name (case-insensitive)"),
    ("protocol", "string", "tcp, tls, tls_passthrough or udp"),
    ("state", "string", "setup, relaying or draining"),
    ("older_than", "number", "seconds since the session began, at least"),
    ("idle_for", "number", "seconds since its last byte, at least"),
];

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": {"type": ty}, "description": description})
}

/// Query parameters and request bodies of the paths that are not entities.
fn extras(path: &str, method: &str) -> (Vec<Value>, Option<Value>) {
    let filters = || SESSION_FILTERS.iter().map(|(n, t, d)| query(n, t, d)).collect::<Vec<_>>();
    match (path, method) {
        ("/sessions", "GET") => {
            let mut q = filters();
            q.push(query("sort", "string", "started_at, last_activity_at or bytes; a leading - for descending"));
            q.push(query("size", "integer", "page size, 1 to 1000 (100)"));
            q.push(query("offset", "string", "the previous page's offset"));
            (q, None)
        }
        ("/sessions", "DELETE") => {
            let mut q = filters();
            q.push(query("dry_run", "boolean", "only count the matching sessions"));
            q.push(query("all", "boolean", "needed to close every session when no filter is given"));
            (q, None)
        }
        ("/sessions/events", _) => (filters(), None),
        ("/router/match", _) => (
            vec![
                json!({"name": "protocol", "in": "query", "required": true, "schema": {"type": "string"}, "description": "tcp, tls, tls_passthrough or udp"}),
                json!({"name": "source", "in": "query", "required": true, "schema": {"type": "string"}, "description": "client ip:port"}),
                json!({"name": "destination", "in": "query", "required": true, "schema": {"type": "string"}, "description": "ip:port the client reaches"}),
                query("sni", "string", "server name (tls and tls_passthrough only)"),
            ],
            None,
        ),
        (p, "POST") if p.ends_with("/drain") => {
            let body = json!({"type": "object", "properties": {
                "timeout": {"type": "number", "description": "seconds until `then` applies"},
                "then": {"type": "string", "enum": ["close", "keep"], "description": "at the timeout: close the sessions left (default) or keep them"}}});
            (
                vec![query("timeout", "number", "as in the body"), query("then", "string", "as in the body")],
                Some(
                    json!({"content": {"application/json": {"schema": body}, "application/x-www-form-urlencoded": {"schema": body}}}),
                ),
            )
        }
        _ => (Vec::new(), None),
    }
}

/// An entity field's schema (as `/schemas/{entity}` gives it) in OpenAPI.
fn openapi_type(spec: &Value) -> Value {
    match spec.get("type").and_then(Value::as_str) {
        Some("integer") => json!({"type": "integer"}),
        Some("boolean") => json!({"type": "boolean"}),
        Some("set" | "array") => json!({"type": "array", "items": {}}),
        Some("record" | "map") => json!({"type": "object"}),
        Some("foreign") => json!({"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}}),
        _ if spec.get("uuid") == Some(&json!(true)) => json!({"type": "string", "format": "uuid"}),
        _ => json!({"type": "string"}),
    }
}

/// An entity's properties and required fields, from the loader's schema.
fn component(kind: EntityKind) -> Value {
    let schema = strait_model::entity_schema(kind, &Options::default());
    let mut props = Map::new();
    let mut required = Vec::new();
    for field in schema["fields"].as_array().into_iter().flatten() {
        let Some((name, spec)) = field.as_object().and_then(|o| o.iter().next()) else { continue };
        props.insert(name.clone(), openapi_type(spec));
        if spec.get("required") == Some(&json!(true)) {
            required.push(json!(name));
        }
    }
    json!({"type": "object", "properties": props, "required": required})
}

/// The OpenAPI 3 document for the whole Admin API.
pub fn openapi() -> Value {
    let mut schemas = Map::new();
    for kind in EntityKind::ALL {
        schemas.insert(kind.as_str().to_owned(), component(kind));
    }
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "properties": {
            "code": {"type": "integer"}, "name": {"type": "string"},
            "message": {"type": "string"}, "fields": {"type": "object"}}}),
    );
    let mut paths = Map::new();
    for (path, methods) in ROUTES {
        let entity = !path.starts_with("/sessions") && !path.starts_with("/router") && !path.ends_with("/drain");
        let kind = EntityKind::ALL.iter().rfind(|k| entity && path.contains(&format!("/{}", k.admin_path())));
        let path_params: Vec<Value> = path
            .split('/')
            .filter(|s| s.starts_with('{'))
            .map(|p| json!({"name": p.trim_matches(|c| c == '{' || c == '}'), "in": "path", "required": true, "schema": {"type": "string"}, "description": "id or endpoint key"}))
            .collect();
        let mut ops = Map::new();
        for m in *methods {
            let entity_ref = kind.map(|k| json!({"$ref": format!("#/components/schemas/{k}")}));
            let ok = match *m {
                "POST" if entity => "201",
                // A bulk kill answers with its count.
                "DELETE" if *path != "/sessions" => "204",
                _ => "200",
            };
            let (mut params, body) = extras(path, m);
            params.splice(0..0, path_params.iter().cloned());
            let mut op = json!({
                "summary": format!("{m} {path}"),
                "parameters": params,
                "responses": {
                    ok: {"description": "success"},
                    "400": {"description": "invalid input", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                    "404": {"description": "not found"},
                },
            });
            if let Some(b) = body {
                op["requestBody"] = b;
            } else if matches!(*m, "POST" | "PUT" | "PATCH") {
                if let Some(r) = &entity_ref {
                    op["requestBody"] = json!({"content": {
                        "application/json": {"schema": r},
                        "application/x-www-form-urlencoded": {"schema": r}}});
                }
            }
            ops.insert(m.to_ascii_lowercase(), op);
        }
        paths.insert((*path).to_owned(), Value::Object(ops));
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Strait Admin API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Kong-compatible Admin API for Strait's stream (L4) gateway."},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let generated = serde_json::to_string_pretty(&openapi()).unwrap() + "\n";
        if std::env::var_os("STRAIT_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run `STRAIT_WRITE_OPENAPI=1 cargo test -p strait-admin the_committed_document_is_current`"
        );
    }

    #[test]
    fn every_entity_is_a_component_with_its_fields() {
        let doc = openapi();
        for k in EntityKind::ALL {
            let props = &doc["components"]["schemas"][k.as_str()]["properties"];
            assert!(props.get("id").is_some() && props.get("tags").is_some(), "{k}: {props}");
        }
        let services = &doc["components"]["schemas"]["services"];
        assert_eq!(services["properties"]["retries"]["type"], "integer");
        assert_eq!(services["required"], json!(["host"]));
    }
}
