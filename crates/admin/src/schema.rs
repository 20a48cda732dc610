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
        let kind = EntityKind::ALL.iter().rfind(|k| path.contains(&format!("/{}", k.admin_path())));
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
