//! Form bodies — `application/x-www-form-urlencoded` (`curl -d name=x`) and
//! `multipart/form-data` (`curl -F cert=@cert.pem`), as Kong's docs use
//! them — turned into the JSON the validator reads.
//!
//! `a=1&a=2` and `a[]=1` make arrays, `a[1].b=x` arrays of records, `a.b=x`
//! records. Values stay strings except for fields Kong types as numbers or
//! booleans, which are converted when they parse as such.

use serde_json::{Map, Value, json};

const NUMBERS: &[&str] = &[
    "port",
    "retries",
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "tls_verify_depth",
    "weight",
    "slots",
    "regex_priority",
    "https_redirect_status_code",
    "created_at",
    "updated_at",
];
const BOOLEANS: &[&str] = &[
    "enabled",
    "tls_verify",
    "preserve_host",
    "strip_path",
    "request_buffering",
    "response_buffering",
    "use_srv_name",
];
/// Fields that are lists even when given once.
const LISTS: &[&str] =
    &["protocols", "tags", "snis", "sources", "destinations", "ca_certificates", "hosts", "paths", "methods"];

/// Largest list position a form key may name (`a[1000]`); larger ones are dropped.
const MAX_INDEX: usize = 1000;

fn coerce(field: &str, v: &str) -> Value {
    if NUMBERS.contains(&field) {
        if let Ok(n) = v.parse::<i64>() {
            return json!(n);
        }
    }
    if BOOLEANS.contains(&field) {
        match v {
            "true" => return json!(true),
            "false" => return json!(false),
            _ => {}
        }
    }
    json!(v)
}

/// Converts a form body into a JSON object.
pub(crate) fn to_json(body: &[u8]) -> Map<String, Value> {
    from_pairs(form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())))
}

fn from_pairs(pairs: impl Iterator<Item = (String, String)>) -> Map<String, Value> {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        set(&mut root, &key, &value);
    }
    match root {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The boundary of a `multipart/form-data` content type, if it is one.
pub(crate) fn multipart_boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

/// Converts a complete `multipart/form-data` body into a JSON object.
/// Each part's `name` is a form key and its content (a file or a value) the
/// value; malformed parts are skipped, never trusted.
pub(crate) fn multipart_to_json(body: &[u8], boundary: &str) -> Result<Map<String, Value>, &'static str> {
    let delimiter = format!("--{boundary}");
    let delim = delimiter.as_bytes();
    let start = find(body, delim).ok_or("multipart body without its boundary")?;
    let mut rest = &body[start + delim.len()..];
    let mut pairs = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            break; // closing delimiter
        }
        let Some(after_crlf) = rest.strip_prefix(b"\r\n") else {
            return Err("malformed multipart delimiter");
        };
        let next = find(after_crlf, delim).ok_or("multipart body without its closing boundary")?;
        // The part is everything up to the CRLF before the next delimiter.
        let part = after_crlf[..next].strip_suffix(b"\r\n").unwrap_or(&after_crlf[..next]);
        if let Some(split) = find(part, b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&part[..split]);
            if let Some(name) = part_name(&headers) {
                pairs.push((name, String::from_utf8_lossy(&part[split + 4..]).into_owned()));
            }
        }
        rest = &after_crlf[next + delim.len()..];
    }
    Ok(from_pairs(pairs.into_iter()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `name` from `Content-Disposition: form-data; name="cert"; filename="x.pem"`.
fn part_name(headers: &str) -> Option<String> {
    let line = headers.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
    line.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == "name").then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn set(root: &mut Value, key: &str, value: &str) {
    // Split `a[1].b` / `a[]` / `a.b` into steps.
    let mut steps: Vec<(String, Option<Option<usize>>)> = Vec::new();
    for part in key.split('.') {
        match part.split_once('[') {
            Some((name, rest)) => {
                let idx = rest.trim_end_matches(']');
                steps.push((name.to_owned(), Some(idx.parse::<usize>().ok())));
            }
            None => steps.push((part.to_owned(), None)),
        }
    }
    let mut cursor = root;
    let n = steps.len();
    for (i, (name, index)) in steps.into_iter().enumerate() {
        let last = i + 1 == n;
        let Some(obj) = cursor.as_object_mut() else { return };
        match index {
            None if last => {
                let v = coerce(&name, value);
                match obj.get_mut(&name) {
                    Some(Value::Array(a)) => a.push(v),
                    Some(existing) => {
                        let prev = existing.take();
                        *existing = json!([prev, v]);
                    }
                    None if LISTS.contains(&name.as_str()) => {
                        obj.insert(name, json!([v]));
                    }
                    None => {
                        obj.insert(name, v);
                    }
                }
                return;
            }
            None => {
                let next = obj.entry(name).or_insert_with(|| json!({}));
                if !next.is_object() {
                    *next = json!({});
                }
                cursor = next;
            }
            Some(idx) => {
                let list = obj.entry(name.clone()).or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                let Some(a) = list.as_array_mut() else { return };
                let pos = match idx {
                    Some(k) => k.saturating_sub(1),
                    None => a.len(),
                };
                // Indexes are positions in a short list, not sizes to allocate.
                if pos >= MAX_INDEX {
                    return;
                }
                if a.len() <= pos {
                    a.resize(pos + 1, Value::Null);
                }
                if last {
                    a[pos] = coerce(&name, value);
                    return;
                }
                if !a[pos].is_object() {
                    a[pos] = json!({});
                }
                cursor = &mut a[pos];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_as_curl_sends_it() {
        let ct = "multipart/form-data; boundary=------------------------abc123";
        let b = multipart_boundary(ct).unwrap();
        let body = "--------------------------abc123\r\n\
Content-Disposition: form-data; name=\"cert\"; filename=\"c.pem\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\
-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\r\n\
--------------------------abc123\r\n\
Content-Disposition: form-data; name=\"snis[]\"\r\n\r\n\
a.test\r\n\
--------------------------abc123--\r\n";
        let v = multipart_to_json(body.as_bytes(), &b).unwrap();
        assert_eq!(v["cert"], "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert_eq!(v["snis"], json!(["a.test"]));
        // Truncated or garbled bodies are errors, not panics.
        for n in 0..body.len() {
            let _ = multipart_to_json(&body.as_bytes()[..n], &b);
        }
        assert!(multipart_to_json(b"garbage", &b).is_err());
        assert_eq!(multipart_boundary("application/json"), None);
    }

    #[test]
    fn huge_indexes_are_dropped_not_allocated() {
        let v = to_json(b"tags[4000000000]=x&tags[18446744073709551615]=y&name=n");
        assert_eq!(Value::Object(v), json!({"tags": [], "name": "n"}));
    }

    #[test]
    fn kong_doc_forms() {
        let v = to_json(b"name=redis&url=tcp%3A%2F%2F127.0.0.1%3A6379&retries=3&enabled=false");
        assert_eq!(
            Value::Object(v),
            json!({"name": "redis", "url": "tcp://127.0.0.1:6379", "retries": 3, "enabled": false})
        );
        let v = to_json(
            b"protocols=tcp&protocols=tls&destinations[1].port=9000&destinations[1].ip=127.0.0.1&snis[]=a.test",
        );
        assert_eq!(
            Value::Object(v),
            json!({"protocols": ["tcp", "tls"], "destinations": [{"port": 9000, "ip": "127.0.0.1"}], "snis": ["a.test"]})
        );
        let v = to_json(b"name=ip-restriction&config.allow=10.0.0.0/8&config.allow=::1&protocols=tcp");
        assert_eq!(
            Value::Object(v),
            json!({"name": "ip-restriction", "config": {"allow": ["10.0.0.0/8", "::1"]}, "protocols": ["tcp"]})
        );
    }
}
