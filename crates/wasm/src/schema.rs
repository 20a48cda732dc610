//! A filter's configuration schema: the `config_schema` of its
//! `<name>.meta.json` (JSON Schema, draft 4 whatever it says, as Kong
//! forces it), or Kong's default for filters without one — a string or
//! nothing, passed to the filter as is. Errors are worded as Kong words
//! them (`property add is required`).

use serde_json::{Value, json};

const DRAFT4: &str = "http://json-schema.org/draft-04/schema#";

/// How a filter's `config` is checked.
pub(crate) enum ConfigSchema {
    /// No `config_schema`: a string, or nothing.
    Default,
    Json {
        schemas: boon::Schemas,
        index: boon::SchemaIndex,
        doc: Value,
    },
}

impl std::fmt::Debug for ConfigSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSchema::Default => f.write_str("Default"),
            ConfigSchema::Json { doc, .. } => f.debug_struct("Json").field("doc", doc).finish_non_exhaustive(),
        }
    }
}

/// The JSON type of a value, in JSON Schema's words.
fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl ConfigSchema {
    /// Compiles a `config_schema`; the error says why it is not one.
    pub(crate) fn compile(filter: &str, mut doc: Value) -> Result<ConfigSchema, String> {
        if let Value::Object(o) = &mut doc {
            o.insert("$schema".to_owned(), json!(DRAFT4));
        } else {
            return Err("config_schema must be a JSON object".to_owned());
        }
        let url = format!("urn:strait:proxy-wasm-filters:{filter}");
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V4);
        compiler.add_resource(&url, doc.clone()).map_err(|e| e.to_string())?;
        let mut schemas = boon::Schemas::new();
        let index = compiler.compile(&url, &mut schemas).map_err(|e| e.to_string())?;
        Ok(ConfigSchema::Json { schemas, index, doc })
    }

    /// Kong's `/schemas/filters/{name}`.
    pub(crate) fn doc(&self) -> Value {
        match self {
            ConfigSchema::Default => json!({ "$schema": DRAFT4, "type": ["string", "null"] }),
            ConfigSchema::Json { doc, .. } => doc.clone(),
        }
    }

    pub(crate) fn check(&self, config: Option<&Value>) -> Result<(), String> {
        match self {
            ConfigSchema::Default => match config {
                None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
                Some(v) => Err(format!("wrong type: expected one of string, null, got {}", type_of(v))),
            },
            ConfigSchema::Json { schemas, index, .. } => {
                let value = config.cloned().unwrap_or(Value::Null);
                // Checked when compiled: the index belongs to these schemas.
                if !schemas.contains(*index) {
                    return Err("the filter's config_schema could not be used".to_owned());
                }
                schemas.validate(&value, *index).map_err(|e| message(&e))
            }
        }
    }
}

/// The first failure as Kong's validator words it: `property a validation
/// failed: property b is required`.
fn message(e: &boon::ValidationError<'_, '_>) -> String {
    let mut leaf = e;
    while let Some(first) = leaf.causes.first() {
        leaf = first;
    }
    let base = match &leaf.kind {
        boon::ErrorKind::Required { want } => format!("property {} is required", want.join(", ")),
        boon::ErrorKind::Type { got, want } => {
            let want: Vec<String> = want.iter().map(|t| t.to_string()).collect();
            format!("wrong type: expected {}, got {got}", want.join(" or "))
        }
        other => other.to_string(),
    };
    let mut out = String::new();
    for t in &leaf.instance_location.tokens {
        match t {
            boon::InstanceToken::Prop(p) => out.push_str(&format!("property {p} validation failed: ")),
            boon::InstanceToken::Item(i) => out.push_str(&format!("item {} validation failed: ", i + 1)),
        }
    }
    out.push_str(&base);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kongs_default_takes_a_string_or_nothing() {
        let s = ConfigSchema::Default;
        assert!(s.check(None).is_ok() && s.check(Some(&json!("a=b"))).is_ok());
        assert_eq!(
            s.check(Some(&json!({"a": 1}))).unwrap_err(),
            "wrong type: expected one of string, null, got object"
        );
        assert_eq!(s.doc()["type"], json!(["string", "null"]));
    }

    #[test]
    fn a_config_schema_is_draft_4_with_kongs_messages() {
        let s = ConfigSchema::compile(
            "f",
            json!({"type": "object", "properties": {"add": {"type": "object", "required": ["headers"],
                "properties": {"headers": {"type": "array"}}}}, "required": ["add"]}),
        )
        .expect("a valid schema");
        assert_eq!(s.check(Some(&json!({}))).unwrap_err(), "property add is required");
        assert_eq!(
            s.check(Some(&json!({"add": {}}))).unwrap_err(),
            "property add validation failed: property headers is required"
        );
        assert!(s.check(None).unwrap_err().contains("expected object, got null"));
        assert!(s.check(Some(&json!({"add": {"headers": []}}))).is_ok());
        assert_eq!(s.doc()["$schema"], DRAFT4, "forced to draft 4, as Kong does");
        assert!(ConfigSchema::compile("g", json!({"type": 5})).is_err());
        assert!(ConfigSchema::compile("g", json!("no")).is_err());
    }
}
