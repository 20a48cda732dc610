//! What the Admin API serves, as data: the route table, each entity's
//! fields (for `/schemas/{entity}`), and the OpenAPI 3 document built from
//! both. `docs/openapi.json` in the repository is this document; a test keeps
//! the two equal, and another checks the server answers every route in it.

use serde_json::{Map, Value, json};

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
    ("/snis", &["GET", "POST"]),
    ("/snis/{sni}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/ca_certificates", &["GET", "POST"]),
    ("/ca_certificates/{ca_certificate}", &["GET", "PUT", "PATCH", "DELETE"]),
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
    ("/plugins", &["GET", "POST"]),
    ("/plugins/{plugin}", &["GET", "PUT", "PATCH", "DELETE"]),
];

/// `(field, type, default)` per entity; `required` fields are listed apart.
type FieldSpec = (&'static str, &'static str, Value);

fn fields(kind: &str) -> Option<(Vec<FieldSpec>, &'static [&'static str])> {
    // Built on demand: `Value` defaults cannot be `const`.
    let (f, req): (Vec<FieldSpec>, &'static [&'static str]) = match kind {
        "services" => (
            vec![
                ("id", "uuid", Value::Null),
                ("name", "string", Value::Null),
                ("protocol", "string", json!("http")),
                ("host", "string", Value::Null),
                ("port", "integer", json!(80)),
                ("path", "string", Value::Null),
                ("url", "string", Value::Null),
                ("retries", "integer", json!(5)),
                ("connect_timeout", "integer", json!(60000)),
                ("read_timeout", "integer", json!(60000)),
                ("write_timeout", "integer", json!(60000)),
                ("tls_verify", "boolean", Value::Null),
                ("tls_verify_depth", "integer", Value::Null),
                ("ca_certificates", "array", Value::Null),
                ("client_certificate", "foreign", Value::Null),
                ("enabled", "boolean", json!(true)),
                ("proxy_protocol", "string", json!("off")),
                ("tags", "set", Value::Null),
            ],
            &["host"],
        ),
        "routes" => (
            vec![
                ("id", "uuid", Value::Null),
                ("name", "string", Value::Null),
                ("protocols", "set", json!(["http", "https"])),
                ("sources", "set", Value::Null),
                ("destinations", "set", Value::Null),
                ("snis", "set", Value::Null),
                ("service", "foreign", Value::Null),
                ("preserve_host", "boolean", json!(false)),
                ("tags", "set", Value::Null),
            ],
            &["protocols"],
        ),
        "certificates" => (
            vec![
                ("id", "uuid", Value::Null),
                ("cert", "string", Value::Null),
                ("key", "string", Value::Null),
                ("cert_alt", "string", Value::Null),
                ("key_alt", "string", Value::Null),
                ("snis", "set", Value::Null),
                ("tags", "set", Value::Null),
            ],
            &["cert", "key"],
        ),
        "snis" => (
            vec![
                ("id", "uuid", Value::Null),
                ("name", "string", Value::Null),
                ("certificate", "foreign", Value::Null),
                ("tags", "set", Value::Null),
            ],
            &["name", "certificate"],
        ),
        "ca_certificates" => (
            vec![
                ("id", "uuid", Value::Null),
                ("cert", "string", Value::Null),
                ("cert_digest", "string", Value::Null),
                ("tags", "set", Value::Null),
            ],
            &["cert"],
        ),
        "upstreams" => (
            vec![
                ("id", "uuid", Value::Null),
                ("name", "string", Value::Null),
                ("algorithm", "string", json!("round-robin")),
                ("hash_on", "string", json!("none")),
                ("hash_fallback", "string", json!("none")),
                ("slots", "integer", json!(10000)),
                ("host_header", "string", Value::Null),
                ("client_certificate", "foreign", Value::Null),
                ("use_srv_name", "boolean", json!(false)),
                ("healthchecks", "record", strait_model::Healthchecks::default().to_json()),
                ("tags", "set", Value::Null),
            ],
            &["name"],
        ),
        "targets" => (
            vec![
                ("id", "uuid", Value::Null),
                ("target", "string", Value::Null),
                ("weight", "integer", json!(100)),
                ("upstream", "foreign", Value::Null),
                ("tags", "set", Value::Null),
            ],
            &["target", "upstream"],
        ),
        "plugins" => (
            vec![
                ("id", "uuid", Value::Null),
                ("name", "string", Value::Null),
                ("instance_name", "string", Value::Null),
                ("config", "record", Value::Null),
                ("service", "foreign", Value::Null),
                ("route", "foreign", Value::Null),
                ("protocols", "set", Value::Null),
                ("enabled", "boolean", json!(true)),
                ("tags", "set", Value::Null),
            ],
            &["name"],
        ),
        _ => return None,
    };
    Some((f, req))
}

/// Kong-style `/schemas/{entity}`: `{"fields": [{name: {type, required, default}}]}`.
pub fn entity_schema(kind: &str) -> Option<Value> {
    let (f, required) = fields(kind)?;
    let list: Vec<Value> = f
        .iter()
        .map(|(name, ty, default)| {
            let mut spec = Map::new();
            spec.insert("type".into(), json!(ty));
            spec.insert("required".into(), json!(required.contains(name)));
            if !default.is_null() {
                spec.insert("default".into(), default.clone());
            }
            json!({ *name: spec })
        })
        .collect();
    Some(json!({ "fields": list }))
}

fn openapi_type(ty: &str) -> Value {
    match ty {
        "integer" => json!({"type": "integer"}),
        "boolean" => json!({"type": "boolean"}),
        "set" | "array" => json!({"type": "array", "items": {}}),
        "record" => json!({"type": "object"}),
        "foreign" => json!({"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}}),
        "uuid" => json!({"type": "string", "format": "uuid"}),
        _ => json!({"type": "string"}),
    }
}

/// The OpenAPI 3 document for the whole Admin API.
pub fn openapi() -> Value {
    let kinds = ["services", "routes", "certificates", "snis", "ca_certificates", "upstreams", "targets", "plugins"];
    let mut schemas = Map::new();
    for kind in kinds {
        if let Some((f, required)) = fields(kind) {
            let props: Map<String, Value> = f.iter().map(|(n, t, _)| ((*n).to_owned(), openapi_type(t))).collect();
            schemas.insert(kind.to_owned(), json!({"type": "object", "properties": props, "required": required}));
        }
    }
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "properties": {
            "code": {"type": "integer"}, "name": {"type": "string"},
            "message": {"type": "string"}, "fields": {"type": "object"}}}),
    );
    let mut paths = Map::new();
    for (path, methods) in ROUTES {
        let kind = kinds.iter().copied().rfind(|k| path.contains(&format!("/{k}")));
        let params: Vec<Value> = path
            .split('/')
            .filter(|s| s.starts_with('{'))
            .map(|p| json!({"name": p.trim_matches(|c| c == '{' || c == '}'), "in": "path", "required": true, "schema": {"type": "string"}, "description": "id or endpoint key"}))
            .collect();
        let mut ops = Map::new();
        for m in *methods {
            let entity_ref = kind.map(|k| json!({"$ref": format!("#/components/schemas/{k}")}));
            let ok = match *m {
                "POST" => "201",
                "DELETE" => "204",
                _ => "200",
            };
            let mut op = json!({
                "summary": format!("{m} {path}"),
                "parameters": params,
                "responses": {
                    ok: {"description": "success"},
                    "400": {"description": "invalid input", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                    "404": {"description": "not found"},
                },
            });
            if matches!(*m, "POST" | "PUT" | "PATCH") {
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
    fn every_entity_has_a_schema() {
        for k in ["services", "routes", "certificates", "snis", "ca_certificates", "upstreams", "targets", "plugins"] {
            assert!(entity_schema(k).is_some(), "{k}");
        }
        assert!(entity_schema("consumers").is_none());
    }
}
