//! Admin API errors in Kong's shape: `{code, name, message, fields}` with
//! Kong's codes and HTTP statuses, or a bare `{message}` where Kong gives one.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// An error answered to an Admin API client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiError {
    fn coded(status: StatusCode, code: u8, name: &str, message: String, fields: Value) -> ApiError {
        let mut body = json!({ "code": code, "name": name, "message": message });
        if !fields.is_null() {
            body["fields"] = fields;
        }
        ApiError { status, body }
    }

    pub fn message(status: StatusCode, message: &str) -> ApiError {
        ApiError { status, body: json!({ "message": message }) }
    }

    pub fn not_found() -> ApiError {
        ApiError::message(StatusCode::NOT_FOUND, "Not found")
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::message(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
    }

    pub fn bad_body(reason: &str) -> ApiError {
        ApiError::message(StatusCode::BAD_REQUEST, reason)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::message(StatusCode::UNAUTHORIZED, "Invalid authentication credentials")
    }

    /// Kong code 2. `fields` maps field names (or `@entity`) to messages.
    pub fn schema(fields: Map<String, Value>) -> ApiError {
        let mut parts = Vec::new();
        flat_parts(&fields, "", &mut parts);
        let message = if parts.len() == 1 {
            format!("schema violation ({})", parts[0])
        } else {
            format!("{} schema violations ({})", parts.len(), parts.join("; "))
        };
        ApiError::coded(StatusCode::BAD_REQUEST, 2, "schema violation", message, Value::Object(fields))
    }

    /// Kong code 2 with one entity-level message.
    pub fn entity(message: &str) -> ApiError {
        let mut f = Map::new();
        f.insert("@entity".into(), json!([message]));
        ApiError::schema(f)
    }

    /// Kong code 1: a path names an entity by something that is not a valid id.
    pub fn invalid_primary_key(id: &str) -> ApiError {
        ApiError::coded(
            StatusCode::BAD_REQUEST,
            1,
            "invalid primary key",
            format!("invalid primary key: '{{id=\"{id}\"}}'"),
            json!({ "id": "expected a valid UUID" }),
        )
    }

    /// Kong code 3: an id already taken.
    pub fn primary_key_violation(id: &str) -> ApiError {
        ApiError::coded(
            StatusCode::BAD_REQUEST,
            3,
            "primary key violation",
            format!("primary key violation on key '{{id=\"{id}\"}}'"),
            json!({ "id": id }),
        )
    }

    /// Kong code 4.
    pub fn foreign_key(field: &str, entity: &str, reference: &str) -> ApiError {
        let key = if uuid::Uuid::parse_str(reference).is_ok() { "id" } else { "name" };
        ApiError::coded(
            StatusCode::BAD_REQUEST,
            4,
            "foreign key violation",
            format!("the foreign key '{{{key}=\"{reference}\"}}' does not reference an existing '{entity}' entity."),
            json!({ field: { key: reference } }),
        )
    }

    /// Kong code 5.
    pub fn unique(message: String, field: &str, value: &str) -> ApiError {
        ApiError::coded(StatusCode::CONFLICT, 5, "unique constraint violation", message, json!({ field: value }))
    }

    /// Kong code 7.
    pub fn invalid_offset(offset: &str) -> ApiError {
        ApiError::coded(
            StatusCode::BAD_REQUEST,
            7,
            "invalid offset",
            format!("'{offset}' is not a valid offset: bad encoding"),
            Value::Null,
        )
    }

    /// Kong code 8.
    pub fn database(message: String) -> ApiError {
        ApiError::coded(StatusCode::INTERNAL_SERVER_ERROR, 8, "database error", message, Value::Null)
    }

    /// Kong code 9.
    pub fn invalid_size() -> ApiError {
        ApiError::coded(
            StatusCode::BAD_REQUEST,
            9,
            "invalid size",
            "size must be an integer between 1 and 1000".into(),
            Value::Null,
        )
    }

    /// Kong code 14.
    pub fn invalid_declarative(message: String, fields: Value) -> ApiError {
        ApiError::coded(StatusCode::BAD_REQUEST, 14, "invalid declarative configuration", message, fields)
    }

    /// Kong code 19: a delete refused because other entities point here.
    pub fn referenced(by: &str, entity: &str) -> ApiError {
        ApiError::coded(
            StatusCode::BAD_REQUEST,
            19,
            "referenced by others",
            format!("an existing '{by}' entity references this '{entity}' entity"),
            Value::Null,
        )
    }

    /// 405 for writes when the configuration comes only from `/config`.
    pub fn read_only() -> ApiError {
        ApiError::message(
            StatusCode::METHOD_NOT_ALLOWED,
            "cannot create or update entities when database is 'off'; use POST /config",
        )
    }
}

/// `{"config": {"path": "x"}}` → `config.path: x`, as Kong words nested errors.
fn flat_parts(fields: &Map<String, Value>, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in fields {
        match v {
            Value::Object(inner) if k != "@entity" => flat_parts(inner, &format!("{prefix}{k}."), out),
            _ => out.push(format!("{prefix}{k}: {}", flat_message(v))),
        }
    }
}

fn flat_message(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(flat_message).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(", "),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}: {}", flat_message(v))).collect::<Vec<_>>().join(", "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}
