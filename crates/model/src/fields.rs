//! Reading one entity's JSON object field by field, collecting Kong-style
//! errors (`expected a string`, `value should be between 0 and 65535`, …)
//! instead of stopping at the first one.
//!
//! The same reads describe the entity: in describing mode every field read
//! is recorded with its type, bounds and default, in Kong's schema terms,
//! so `/schemas/{entity}` is what the loader does (see
//! `declarative::entity_schema`).

use serde_json::{Map, Value, json};

/// Error key for problems with the entity as a whole, as in Kong.
pub(crate) const ENTITY: &str = "@entity";

pub(crate) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    pub(crate) errors: Vec<(String, String)>,
    /// Describing: each field read, in order, with its schema.
    described: Option<Vec<(String, Value)>>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(obj: &'a Map<String, Value>) -> Self {
        Fields { obj, errors: Vec::new(), described: None }
    }

    /// Fields that also record what they read (see the module's doc).
    pub(crate) fn describing(obj: &'a Map<String, Value>) -> Self {
        Fields { obj, errors: Vec::new(), described: Some(Vec::new()) }
    }

    /// What was read, in order, when describing.
    pub(crate) fn take_described(&mut self) -> Vec<(String, Value)> {
        self.described.take().unwrap_or_default()
    }

    /// Records `key`'s schema (the first time it is read), when describing.
    /// Lazy: loading (not describing) builds nothing.
    pub(crate) fn note(&mut self, key: &str, spec: impl FnOnce() -> Value) {
        if let Some(d) = self.described.as_mut() {
            if !d.iter().any(|(k, _)| k == key) {
                d.push((key.to_owned(), spec()));
            }
        }
    }

    /// Adds facts (a default, `one_of`) to `key`'s schema, when describing.
    pub(crate) fn note_more(&mut self, key: &str, more: impl FnOnce() -> Value) {
        let Some(d) = self.described.as_mut() else { return };
        if let (Some(Value::Object(spec)), Value::Object(more)) =
            (d.iter_mut().find(|(k, _)| k == key).map(|(_, s)| s), more())
        {
            spec.extend(more);
        }
    }

    pub(crate) fn err(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.errors.push((field.into(), msg.into()));
    }

    pub(crate) fn check_unknown(&mut self, allowed: &[&str]) {
        let unknown: Vec<String> = self.obj.keys().filter(|k| !allowed.contains(&k.as_str())).cloned().collect();
        for key in unknown {
            self.err(key, "unknown field");
        }
    }

    /// The value of `key`, treating JSON `null` as absent, as Kong does.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn str(&mut self, key: &str) -> Option<&'a str> {
        self.note(key, || json!({"type": "string"}));
        match self.get(key)? {
            Value::String(s) => Some(s),
            _ => {
                self.err(key, "expected a string");
                None
            }
        }
    }

    pub(crate) fn required_str(&mut self, key: &str) -> Option<&'a str> {
        self.note(key, || json!({"type": "string", "required": true}));
        if !self.has(key) {
            self.err(key, "required field missing");
            return None;
        }
        self.str(key)
    }

    pub(crate) fn bool(&mut self, key: &str) -> Option<bool> {
        self.note(key, || json!({"type": "boolean"}));
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => {
                self.err(key, "expected a boolean");
                None
            }
        }
    }

    /// A boolean, `default` when absent (or wrong, with its error).
    pub(crate) fn bool_or(&mut self, key: &str, default: bool) -> bool {
        self.note(key, || json!({"type": "boolean", "default": default}));
        self.bool(key).unwrap_or(default)
    }

    pub(crate) fn int(&mut self, key: &str, lo: i64, hi: i64) -> Option<i64> {
        self.note(key, || json!({"type": "integer", "between": [lo, hi]}));
        let v = self.get(key)?;
        match int_in(v, lo, hi) {
            Ok(n) => Some(n),
            Err(e) => {
                self.err(key, e);
                None
            }
        }
    }

    /// An integer within `lo..=hi`, `default` when absent (or wrong, with its error).
    pub(crate) fn int_or(&mut self, key: &str, lo: i64, hi: i64, default: i64) -> i64 {
        self.note(key, || json!({"type": "integer", "between": [lo, hi], "default": default}));
        self.int(key, lo, hi).unwrap_or(default)
    }

    /// An array of strings (Kong's `set` and `array` of strings).
    pub(crate) fn str_list(&mut self, key: &str) -> Option<Vec<&'a str>> {
        self.note(key, || json!({"type": "set", "elements": {"type": "string"}}));
        let Value::Array(items) = self.get(key)? else {
            self.err(key, "expected a set");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.as_str()),
                _ => self.err(format!("{key}[{}]", i + 1), "expected a string"),
            }
        }
        Some(out)
    }

    /// An array of records (`sources`, a certificate's `snis`).
    pub(crate) fn array(&mut self, key: &str) -> Option<&'a Vec<Value>> {
        self.note(key, || json!({"type": "array"}));
        self.nested(key)
    }

    /// Children nested in a declarative file (a service's routes): an array
    /// that is not a field of the entity itself, so not described.
    pub(crate) fn nested(&mut self, key: &str) -> Option<&'a Vec<Value>> {
        match self.get(key)? {
            Value::Array(items) => Some(items),
            _ => {
                self.err(key, "expected an array");
                None
            }
        }
    }

    /// `true` when the field is set to something other than null or an empty list.
    pub(crate) fn non_empty(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        }
    }
}

/// An integer within `lo..=hi`, with Kong's messages. Accepts `5.0`.
pub(crate) fn int_in(v: &Value, lo: i64, hi: i64) -> Result<i64, String> {
    let n = match v {
        Value::Number(n) => {
            n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
        }
        _ => None,
    };
    let n = n.ok_or_else(|| "expected an integer".to_owned())?;
    if n < lo || n > hi {
        return Err(format!("value should be between {lo} and {hi}"));
    }
    Ok(n)
}
