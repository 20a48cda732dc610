//! Reading a plugin's `config` record into typed values, with Kong's field
//! error messages, while building the same record with defaults filled in
//! (what the Admin API returns and the store keeps).
//!
//! Form bodies (`curl -d config.max_sessions=5 -d config.allow=10.0.0.1`)
//! carry every value as a string, once: as Kong coerces them by the schema,
//! numbers and booleans are read from strings and one string is a list of one.

use std::ops::RangeInclusive;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::Status;

/// A plugin's `config` being read. Each accessor marks its field as known,
/// checks it, records an error under the field's name if it is wrong, and
/// writes the value (or its default) to the filled-in record.
#[derive(Debug)]
pub struct Conf<'a> {
    input: &'a Map<String, Value>,
    known: Vec<&'static str>,
    out: Map<String, Value>,
    errors: Vec<(String, String)>,
    /// What each field read is, in Kong's schema terms (`/schemas/plugins/{name}`).
    fields: Vec<(&'static str, Value)>,
    /// Only describing the fields: a required field that is absent reads as
    /// a stand-in value and no error is kept, so that a plugin's `schema`
    /// goes on past its first `?` and every field gets described.
    describing: bool,
}

impl<'a> Conf<'a> {
    pub fn new(input: &'a Map<String, Value>) -> Conf<'a> {
        Conf { input, known: Vec::new(), out: Map::new(), errors: Vec::new(), fields: Vec::new(), describing: false }
    }

    /// A `Conf` for describing a plugin's fields (see `describing`).
    pub(crate) fn describing(input: &'a Map<String, Value>) -> Conf<'a> {
        Conf { describing: true, ..Conf::new(input) }
    }

    /// Describes a field in Kong's schema terms, for `/schemas/plugins/{name}`
    /// (the last description of a field wins). The typed accessors describe
    /// their fields; a field read with [`Conf::raw`] is described with this.
    pub fn describe(&mut self, key: &'static str, description: Value) {
        self.fields.retain(|(k, _)| *k != key);
        self.fields.push((key, description));
    }

    /// The fields read so far, as Kong's schema endpoint lists them.
    pub(crate) fn schema_fields(&self) -> Value {
        Value::Array(self.fields.iter().map(|(k, v)| json!({ *k: v })).collect())
    }

    /// Records an error on `field` (a path under `config`, e.g. `allow[2]`).
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        if !self.describing {
            self.errors.push((field.into(), message.into()));
        }
    }

    /// True while no error was recorded.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The raw value of a field; `None` when absent or `null`.
    pub fn raw(&mut self, key: &'static str) -> Option<&'a Value> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        self.input.get(key).filter(|v| !v.is_null())
    }

    /// A field accepted and kept as given, whatever it holds.
    pub fn accept(&mut self, key: &'static str) {
        self.describe(key, json!({"type": "any"}));
        let v = self.raw(key).cloned().unwrap_or(Value::Null);
        self.fill(key, v);
    }

    /// Sets the filled-in value of a field (for fields read with [`Conf::raw`]).
    pub fn fill(&mut self, key: &'static str, value: Value) {
        self.out.insert(key.to_owned(), value);
    }

    pub fn string(&mut self, key: &'static str, default: Option<&str>) -> Option<String> {
        self.describe(key, json!({"type": "string", "default": default}));
        let v = match self.raw(key) {
            None => default.map(str::to_owned),
            Some(Value::String(s)) if s.is_empty() => {
                self.error(key, "length must be at least 1");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.error(key, "expected a string");
                None
            }
        };
        self.fill(key, v.clone().map_or(Value::Null, Value::String));
        v
    }

    pub fn required_string(&mut self, key: &'static str) -> Option<String> {
        let v = self.string(key, None);
        self.describe(key, json!({"type": "string", "required": true}));
        if v.is_none() && self.raw(key).is_none() {
            self.error(key, "required field missing");
            if self.describing {
                return Some(String::new());
            }
        }
        v
    }

    pub fn integer(&mut self, key: &'static str, default: Option<i64>, range: RangeInclusive<i64>) -> Option<i64> {
        self.describe(key, json!({"type": "integer", "default": default, "between": [range.start(), range.end()]}));
        let v = match self.raw(key) {
            None => default.or(self.describing.then_some(*range.start())),
            Some(raw) => {
                let parsed = match raw {
                    Value::Number(n) => {
                        n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                    }
                    Value::String(t) => t.trim().parse::<i64>().ok(),
                    _ => None,
                };
                match parsed {
                    Some(i) if range.contains(&i) => Some(i),
                    Some(_) => {
                        self.error(key, format!("value should be between {} and {}", range.start(), range.end()));
                        None
                    }
                    None => {
                        self.error(key, "expected an integer");
                        None
                    }
                }
            }
        };
        self.fill(key, v.map_or(Value::Null, |i| json!(i)));
        v
    }

    pub fn required_integer(&mut self, key: &'static str, range: RangeInclusive<i64>) -> Option<i64> {
        let description = json!({"type": "integer", "required": true, "between": [range.start(), range.end()]});
        let v = if self.raw(key).is_none() {
            self.error(key, "required field missing");
            self.fill(key, Value::Null);
            self.describing.then_some(*range.start())
        } else {
            self.integer(key, None, range)
        };
        self.describe(key, description);
        v
    }

    /// A number greater than zero.
    pub fn positive_number(&mut self, key: &'static str, default: Option<f64>) -> Option<f64> {
        self.describe(key, json!({"type": "number", "default": default, "gt": 0, "required": default.is_none()}));
        let v = match self.raw(key) {
            None if default.is_none() => {
                self.error(key, "required field missing");
                self.describing.then_some(1.0)
            }
            None => default,
            Some(v @ (Value::Number(_) | Value::String(_))) => {
                match v.as_f64().or_else(|| v.as_str()?.trim().parse().ok()) {
                    Some(f) if f > 0.0 && f.is_finite() => Some(f),
                    _ => {
                        self.error(key, "value must be greater than 0");
                        None
                    }
                }
            }
            Some(_) => {
                self.error(key, "expected a number");
                None
            }
        };
        self.fill(key, v.map_or(Value::Null, |f| json!(f)));
        v
    }

    pub fn boolean(&mut self, key: &'static str, default: bool) -> bool {
        self.describe(key, json!({"type": "boolean", "default": default}));
        let v = match self.raw(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(t)) if t == "true" || t == "false" => t == "true",
            Some(_) => {
                self.error(key, "expected a boolean");
                default
            }
        };
        self.fill(key, Value::Bool(v));
        v
    }

    /// One of `choices`, as Kong's `one_of`.
    pub fn one_of(&mut self, key: &'static str, default: &'static str, choices: &[&'static str]) -> &'static str {
        self.describe(key, json!({"type": "string", "default": default, "one_of": choices}));
        let v = match self.raw(key) {
            None => default,
            Some(Value::String(s)) => match choices.iter().find(|c| **c == s.as_str()) {
                Some(c) => c,
                None => {
                    self.error(key, format!("expected one of: {}", choices.join(", ")));
                    default
                }
            },
            Some(_) => {
                self.error(key, "expected a string");
                default
            }
        };
        self.fill(key, json!(v));
        v
    }

    /// An array of strings (absent: empty, written as `null`).
    pub fn string_list(&mut self, key: &'static str) -> Vec<String> {
        self.describe(key, json!({"type": "array", "elements": {"type": "string"}}));
        let list = match self.raw(key) {
            None => {
                self.fill(key, Value::Null);
                return Vec::new();
            }
            Some(Value::Array(a)) => a.clone(),
            Some(Value::String(one)) => vec![Value::String(one.clone())],
            Some(_) => {
                self.error(key, "expected an array");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => self.error(format!("{key}[{}]", i + 1), "expected a string"),
            }
        }
        self.fill(key, json!(out));
        out
    }

    /// IPs and CIDR ranges, v4 or v6 (Kong's `ip_or_cidr`).
    pub fn ip_list(&mut self, key: &'static str) -> Vec<IpNet> {
        let raw = self.string_list(key);
        self.describe(key, json!({"type": "array", "elements": {"type": "string", "match": "ip_or_cidr"}}));
        let mut nets = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            match parse_ip_or_cidr(s) {
                Some(n) => nets.push(n),
                None => self.error(format!("{key}[{}]", i + 1), format!("invalid ip or cidr range: '{s}'")),
            }
        }
        nets
    }

    /// A stream exit status (Kong's PDK accepts only these).
    pub fn status(&mut self, key: &'static str, default: Status) -> Status {
        let code = self.integer(key, None, 100..=599);
        self.describe(key, json!({"type": "integer", "one_of": [200, 400, 403, 500, 502, 503]}));
        match code {
            None => {
                self.fill(key, Value::Null);
                default
            }
            Some(c) => match u16::try_from(c).ok().and_then(Status::from_code) {
                Some(s) => s,
                None => {
                    self.error(key, Status::CHOICES);
                    default
                }
            },
        }
    }

    /// A nested record (absent: read as empty, so its defaults fill in).
    pub fn record<T>(&mut self, key: &'static str, read: impl FnOnce(&mut Conf<'_>) -> T) -> T {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let input = match self.raw(key) {
            None => EMPTY.get_or_init(Map::new),
            Some(Value::Object(o)) => o,
            Some(_) => {
                self.error(key, "expected a record");
                EMPTY.get_or_init(Map::new)
            }
        };
        let mut sub = Conf { describing: self.describing, ..Conf::new(input) };
        let out = read(&mut sub);
        self.describe(key, json!({"type": "record", "fields": sub.schema_fields()}));
        match sub.finish() {
            Ok(filled) => self.fill(key, Value::Object(filled)),
            Err(errors) => {
                for (f, m) in errors {
                    self.error(format!("{key}.{f}"), m);
                }
            }
        }
        out
    }

    /// A record of string values (e.g. HTTP headers).
    pub fn string_map(&mut self, key: &'static str) -> Vec<(String, String)> {
        self.describe(key, json!({"type": "map", "keys": {"type": "string"}, "values": {"type": "string"}}));
        let mut out = Vec::new();
        match self.raw(key) {
            None => self.fill(key, Value::Null),
            Some(Value::Object(o)) => {
                for (k, v) in o {
                    match v.as_str() {
                        Some(s) => out.push((k.clone(), s.to_owned())),
                        None => self.error(format!("{key}.{k}"), "expected a string"),
                    }
                }
                self.fill(key, Value::Object(o.clone()));
            }
            Some(_) => self.error(key, "expected a map"),
        }
        out
    }

    /// Finishes reading: unknown fields are errors. Returns the filled-in record.
    pub(crate) fn finish(mut self) -> Result<Map<String, Value>, Vec<(String, String)>> {
        let mut unknown: Vec<&String> = self.input.keys().filter(|k| !self.known.contains(&k.as_str())).collect();
        unknown.sort();
        for k in unknown {
            self.errors.push((k.clone(), "unknown field".to_owned()));
        }
        if self.errors.is_empty() { Ok(self.out) } else { Err(self.errors) }
    }
}

/// `10.0.0.1`, `10.0.0.0/8`, `::1`, `2001:db8::/32`; a host address is a /32 or /128.
pub fn parse_ip_or_cidr(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net);
    }
    s.parse::<std::net::IpAddr>().ok().map(IpNet::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn defaults_are_filled_and_errors_name_the_field() {
        let input = map(json!({"allow": ["10.0.0.0/8", "nope", "::1"], "status": 418, "extra": 1}));
        let mut c = Conf::new(&input);
        let allow = c.ip_list("allow");
        let deny = c.ip_list("deny");
        let status = c.status("status", Status::Forbidden);
        let message = c.string("message", None);
        assert_eq!(allow.len(), 2);
        assert!(deny.is_empty());
        assert_eq!(status, Status::Forbidden);
        assert_eq!(message, None);
        let errors = c.finish().unwrap_err();
        assert_eq!(
            errors,
            vec![
                ("allow[2]".to_owned(), "invalid ip or cidr range: 'nope'".to_owned()),
                ("status".to_owned(), Status::CHOICES.to_owned()),
                ("extra".to_owned(), "unknown field".to_owned()),
            ]
        );
    }

    #[test]
    fn a_valid_record_comes_back_complete() {
        let input = map(json!({"max_sessions": 3}));
        let mut c = Conf::new(&input);
        assert_eq!(c.required_integer("max_sessions", 1..=i64::from(u32::MAX)), Some(3));
        assert_eq!(c.one_of("limit_by", "ip", &["ip", "route"]), "ip");
        assert!(!c.boolean("flag", false));
        let out = c.finish().unwrap();
        assert_eq!(Value::Object(out), json!({"max_sessions": 3, "limit_by": "ip", "flag": false}));
    }

    #[test]
    fn form_strings_are_coerced() {
        let input = map(json!({"n": "5", "r": "2.5", "b": "true", "l": "10.0.0.1"}));
        let mut c = Conf::new(&input);
        assert_eq!(c.integer("n", None, 1..=9), Some(5));
        assert_eq!(c.positive_number("r", None), Some(2.5));
        assert!(c.boolean("b", false));
        assert_eq!(c.ip_list("l").len(), 1);
        let out = c.finish().unwrap();
        assert_eq!(Value::Object(out), json!({"n": 5, "r": 2.5, "b": true, "l": ["10.0.0.1"]}));
    }

    #[test]
    fn wrong_types_and_ranges() {
        let input = map(json!({"n": "x", "m": 0, "r": -1, "s": 5, "l": 7, "o": "z"}));
        let mut c = Conf::new(&input);
        c.integer("n", None, 1..=5);
        c.integer("m", None, 1..=5);
        c.positive_number("r", None);
        c.string("s", None);
        c.string_list("l");
        c.one_of("o", "a", &["a", "b"]);
        c.required_string("missing");
        let errors = c.finish().unwrap_err();
        let msgs: Vec<String> = errors.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        assert_eq!(
            msgs,
            [
                "n: expected an integer",
                "m: value should be between 1 and 5",
                "r: value must be greater than 0",
                "s: expected a string",
                "l: expected an array",
                "o: expected one of: a, b",
                "missing: required field missing",
            ]
        );
    }
}
