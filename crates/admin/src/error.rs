//! Admin API errors in Kong's shape: `{code, name, message, fields}` with
//! Kong's codes and HTTP statuses, or a bare `{message}` where Kong gives one;
//! and how the control plane's typed errors map onto them.

use std::convert::Infallible;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use strait_control::ChangeError;
use strait_model::{EntityError, ErrorKind, LoadError};
use strait_plugin::ChainError;
use strait_proxy::CompileError;
use strait_store::StoreError;

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

impl<E: Into<ApiError>> From<ChangeError<E>> for ApiError {
    fn from(e: ChangeError<E>) -> ApiError {
        match e {
            ChangeError::Edit(e) => e.into(),
            ChangeError::Invalid { error, target } => load_error(error, target.as_deref()),
            ChangeError::Conflict(e) => {
                let value = match &e.kind {
                    ErrorKind::Unique { value } => value.as_str(),
                    _ => e.name.as_deref().unwrap_or_default(),
                };
                ApiError::unique(e.message.clone(), &e.field, value)
            }
            ChangeError::Compile(e) => compile_error(e),
            ChangeError::Store(e) => db_error(&e),
            ChangeError::Stored(e) => ApiError::database(e.to_string()),
            ChangeError::Interrupted(why) => ApiError::database(format!("the write did not finish: {why}")),
        }
    }
}

impl From<Infallible> for ApiError {
    fn from(e: Infallible) -> ApiError {
        match e {}
    }
}

/// Kong's database error for a store failure.
fn db_error(e: &StoreError) -> ApiError {
    if e.is_unreachable() {
        ApiError::database(format!("the database is unreachable: {e}"))
    } else {
        ApiError::database(e.to_string())
    }
}

/// Loader errors as one Kong error about the entity being written (found
/// at `target` in the document), or as the whole document's.
fn load_error(err: LoadError, target: Option<&str>) -> ApiError {
    let errors = match err {
        LoadError::Syntax(s) => return ApiError::bad_body(&s),
        LoadError::Invalid(errors) => errors,
    };
    let mine: Vec<&EntityError> = match target {
        Some(t) => errors.iter().filter(|e| e.path == t || e.path.starts_with(&format!("{t}."))).collect(),
        None => Vec::new(),
    };
    if mine.is_empty() {
        // Errors elsewhere (e.g. a whole-document import): report them all.
        let flat: Vec<Value> = errors
            .iter()
            .map(|e| json!({ "entity_type": e.entity, "entity_name": e.name, "path": e.path, "field": e.field, "message": e.message }))
            .collect();
        let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        return ApiError::invalid_declarative(format!("declarative config is invalid: {message}"), json!(flat));
    }
    for e in &mine {
        match &e.kind {
            ErrorKind::PrimaryKey { id } => return ApiError::primary_key_violation(&id.to_string()),
            ErrorKind::Unique { value } => return ApiError::unique(e.message.clone(), &e.field, value),
            ErrorKind::ForeignKey { entity, reference } => {
                return ApiError::foreign_key(&e.field, entity.as_str(), reference);
            }
            ErrorKind::Schema => {}
        }
    }
    let mut fields = Map::new();
    for e in mine {
        let field = match target.and_then(|t| e.path.strip_prefix(&format!("{t}."))) {
            // Errors on children created through the entity (a certificate's snis).
            Some(child) => format!("{child}.{}", e.field),
            None => e.field.clone(),
        };
        if field == "@entity" {
            let list = fields.entry("@entity").or_insert_with(|| json!([]));
            if let Some(a) = list.as_array_mut() {
                a.push(json!(e.message));
            }
        } else {
            insert_nested(&mut fields, &field, json!(e.message));
        }
    }
    ApiError::schema(fields)
}

/// A configuration that validated but does not compile. A plugin's error
/// on its config fields becomes Kong's schema violation on those fields.
fn compile_error(e: CompileError) -> ApiError {
    if let CompileError::Plugins(ChainError::Fields { fields: errors, .. }) = &e {
        let mut fields = Map::new();
        for (field, message) in errors {
            insert_nested(&mut fields, &format!("config.{field}"), json!(message));
        }
        return ApiError::schema(fields);
    }
    ApiError::entity(&e.to_string())
}

/// `sources[2].ip` → `{"sources": [null, {"ip": msg}]}`, as Kong nests field errors.
fn insert_nested(fields: &mut Map<String, Value>, path: &str, msg: Value) {
    let mut parts = path.split('.').peekable();
    let mut cursor: &mut Map<String, Value> = fields;
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        match index {
            None if last => {
                cursor.insert(name.to_owned(), msg);
                return;
            }
            None => {
                let next = cursor.entry(name.to_owned()).or_insert_with(|| json!({}));
                if !next.is_object() {
                    *next = json!({});
                }
                let Some(m) = next.as_object_mut() else { return };
                cursor = m;
            }
            Some(i) => {
                let list = cursor.entry(name.to_owned()).or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                let Some(a) = list.as_array_mut() else { return };
                let i = i.saturating_sub(1);
                if a.len() <= i {
                    a.resize(i + 1, Value::Null);
                }
                if last {
                    a[i] = msg;
                    return;
                }
                if !a[i].is_object() {
                    a[i] = json!({});
                }
                let Some(m) = a[i].as_object_mut() else { return };
                cursor = m;
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_field_errors() {
        let mut f = Map::new();
        insert_nested(&mut f, "sources[2].ip", json!("bad"));
        insert_nested(&mut f, "port", json!("range"));
        assert_eq!(Value::Object(f), json!({"sources": [null, {"ip": "bad"}], "port": "range"}));
    }
}
