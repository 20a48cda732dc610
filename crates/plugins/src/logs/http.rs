//! `http-log`: entries POSTed (or PUT, PATCHed) to an HTTP endpoint in
//! batches, over a kept-alive HTTP/1.1 connection (hyper's client
//! connection, no pool), retried with backoff for `queue.max_retry_time`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::mpsc;

use strait_plugin::{Conf, ConfigureCx, ConfigureError, Instance, Plugin};

use super::{Conn, common, connect_tcp, instance, millis, next_entry, task_sink};

#[derive(Debug)]
pub struct HttpLog;

#[derive(Debug, Clone)]
pub struct HttpConfig {
    endpoint: Endpoint,
    method: &'static str,
    content_type: &'static str,
    timeout: Duration,
    keepalive: Duration,
    headers: Vec<(String, String)>,
    batch: usize,
    coalesce: Duration,
    /// Entries waiting, at most (`queue.max_entries`).
    max_entries: usize,
    max_retry: Duration,
    interval: Option<Duration>,
}

/// An `http://` or `https://` URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query.
    target: String,
    /// `user:password` from the URL, sent as basic authorization.
    userinfo: Option<String>,
}

fn parse_endpoint(url: &str) -> Result<Endpoint, &'static str> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err("missing the http or https scheme");
    };
    // The authority ends at the path, the query or the fragment (RFC 3986
    // section 3.2): `http://h?x` is host `h` and target `/?x`.
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    // A fragment is the client's own: never sent.
    let tail = tail.split_once('#').map_or(tail, |(t, _)| t);
    let target = if tail.starts_with('/') { tail.to_owned() } else { format!("/{tail}") };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_owned()), h),
        None => (None, authority),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("an unclosed '[' in the host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| "an invalid port")?,
            None if after.is_empty() => default_port,
            None => return Err("an invalid host"),
        };
        (h.to_owned(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| "an invalid port")?),
            None => (hostport.to_owned(), default_port),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("missing the host");
    }
    if target.parse::<hyper::Uri>().is_err() {
        return Err("an invalid path");
    }
    Ok(Endpoint { tls, host, port, target, userinfo })
}

/// The `Authorization` value for the endpoint's `user:password`.
fn basic_auth(userinfo: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(userinfo))
}

impl Plugin for HttpLog {
    type Config = HttpConfig;

    fn name(&self) -> &'static str {
        "http-log"
    }

    fn priority(&self) -> i32 {
        12
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<HttpConfig> {
        let url = conf.required_string("http_endpoint");
        let endpoint = url.as_deref().and_then(|u| match parse_endpoint(u) {
            Ok(e) => Some(e),
            Err(why) => {
                conf.error("http_endpoint", format!("invalid URL: {why}"));
                None
            }
        });
        let method = conf.one_of("method", "POST", &["POST", "PUT", "PATCH"]);
        let content_type =
            conf.one_of("content_type", "application/json", &["application/json", "application/json; charset=utf-8"]);
        let timeout = millis(conf, "timeout", 10_000);
        let keepalive = millis(conf, "keepalive", 60_000);
        let headers = conf.string_map("headers");
        for (name, value) in &headers {
            if ["host", "content-type", "content-length"].contains(&name.to_ascii_lowercase().as_str()) {
                conf.error(format!("headers.{name}"), "cannot contain 'Host', 'Content-Length' or 'Content-Type'");
            } else if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                conf.error(format!("headers.{name}"), "not a valid header name");
            } else if hyper::header::HeaderValue::from_str(value).is_err() {
                conf.error(format!("headers.{name}"), "not a valid header value");
            }
        }
        // Kong's older batching fields: accepted (as Kong 3 does, with a
        // deprecation) and left to the queue record.
        for old in ["queue_size", "flush_timeout", "retry_count"] {
            conf.integer(old, None, 0..=i64::from(u32::MAX));
        }
        let (batch, coalesce, max_retry, max_entries) = conf.record("queue", |q| {
            let batch = q.integer("max_batch_size", Some(1), 1..=1_000_000).unwrap_or(1) as usize;
            let coalesce = q.positive_number("max_coalescing_delay", Some(1.0)).unwrap_or(1.0);
            let max_entries = q.integer("max_entries", Some(10_000), 1..=1_000_000).unwrap_or(10_000) as usize;
            q.integer("max_bytes", None, 1..=i64::MAX);
            let retry = q.positive_number("max_retry_time", Some(60.0)).unwrap_or(60.0);
            q.positive_number("initial_retry_delay", Some(0.01));
            q.positive_number("max_retry_delay", Some(60.0));
            if let Some(n) = q.integer("concurrency_limit", Some(1), -1..=1) {
                if n == 0 {
                    q.error("concurrency_limit", "expected one of: -1, 1");
                }
            }
            (
                batch,
                Duration::from_secs_f64(coalesce.min(3600.0)),
                Duration::from_secs_f64(retry.min(86_400.0)),
                max_entries,
            )
        });
        let interval = common(conf);
        let endpoint = endpoint?;
        conf.is_ok().then_some(HttpConfig {
            endpoint,
            method,
            content_type,
            timeout,
            keepalive,
            headers,
            batch,
            coalesce,
            max_entries,
            max_retry,
            interval,
        })
    }

    fn configure(&self, c: HttpConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
        let key = format!("{:?}", c);
        let tls = if c.endpoint.tls {
            Some(strait_tls::client_config(&strait_tls::UpstreamTlsOptions::default()).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let (interval, queue) = (c.interval, c.max_entries);
        Ok(instance(cx, key, interval, || task_sink("http-log", queue, move |rx| http_task(c, tls, rx))))
    }
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>;

async fn http_connect(c: &HttpConfig, tls: Option<&Arc<rustls::ClientConfig>>) -> std::io::Result<Sender> {
    let conn = connect_tcp(&c.endpoint.host, c.endpoint.port, c.timeout, tls, None).await?;
    let handshake = |e: hyper::Error| std::io::Error::other(e.to_string());
    let sender = match conn {
        Conn::Plain(s) => {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await.map_err(handshake)?;
            tokio::spawn(conn);
            sender
        }
        Conn::Tls(s) => {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(*s)).await.map_err(handshake)?;
            tokio::spawn(conn);
            sender
        }
    };
    Ok(sender)
}

/// One request; the connection is kept for the next one when it can be.
async fn http_send(
    c: &HttpConfig,
    tls: Option<&Arc<rustls::ClientConfig>>,
    sender: &mut Option<Sender>,
    body: &Bytes,
) -> Result<(), String> {
    use http_body_util::BodyExt;
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(http_connect(c, tls).await.map_err(|e| e.to_string())?);
    }
    let Some(s) = sender.as_mut() else { return Err("no connection".into()) };
    let name = if c.endpoint.host.contains(':') { format!("[{}]", c.endpoint.host) } else { c.endpoint.host.clone() };
    let host = if c.endpoint.port == if c.endpoint.tls { 443 } else { 80 } {
        name
    } else {
        format!("{name}:{}", c.endpoint.port)
    };
    let mut req = hyper::Request::builder()
        .method(c.method)
        .uri(&c.endpoint.target)
        .header("host", host)
        .header("content-type", c.content_type);
    if let Some(u) = &c.endpoint.userinfo {
        req = req.header("authorization", basic_auth(u));
    }
    for (k, v) in &c.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(http_body_util::Full::new(body.clone())).map_err(|e| e.to_string())?;
    let exchange = async {
        s.ready().await.map_err(|e| e.to_string())?;
        let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read the body so the connection can carry the next request.
        let _ = resp.into_body().collect().await;
        if status.is_success() { Ok(()) } else { Err(format!("the endpoint answered {status}")) }
    };
    let out = tokio::time::timeout(c.timeout, exchange).await.unwrap_or_else(|_| Err("timed out".into()));
    if out.is_err() {
        *sender = None;
    }
    out
}

/// Gathers entries into batches (`queue.max_batch_size`, waiting at most
/// `queue.max_coalescing_delay` to fill one) and sends them, retrying with
/// backoff for up to `queue.max_retry_time`.
async fn http_task(c: HttpConfig, tls: Option<Arc<rustls::ClientConfig>>, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut sender: Option<Sender> = None;
    loop {
        let Some(first) = next_entry(&mut rx, sender.is_some(), c.keepalive, || sender = None).await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + c.coalesce;
        while batch.len() < c.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        let body = if c.batch == 1 {
            let mut one = batch.pop().unwrap_or_default();
            one.pop();
            Bytes::from(one)
        } else {
            let mut out = Vec::with_capacity(batch.iter().map(Vec::len).sum::<usize>() + 2);
            out.push(b'[');
            for (i, mut e) in batch.into_iter().enumerate() {
                e.pop();
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&e);
            }
            out.push(b']');
            Bytes::from(out)
        };
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(10);
        loop {
            match http_send(&c, tls.as_ref(), &mut sender, &body).await {
                Ok(()) => break,
                // A removed plugin's sink does not keep retrying.
                Err(e) if started.elapsed() + delay > c.max_retry || rx.is_closed() => {
                    tracing::warn!(endpoint = %c.endpoint.host, error = %e, "http-log: giving up on a batch");
                    break;
                }
                Err(e) => {
                    tracing::debug!(endpoint = %c.endpoint.host, error = %e, "http-log: retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = parse_endpoint("http://127.0.0.1:8080/logs?x=1").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port, e.target.as_str()), (false, "127.0.0.1", 8080, "/logs?x=1"));
        let e = parse_endpoint("https://user:pw@logs.example.com").unwrap();
        assert_eq!((e.tls, e.port, e.target.as_str(), e.userinfo.as_deref()), (true, 443, "/", Some("user:pw")));
        let e = parse_endpoint("http://[::1]:9/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9));
        let e = parse_endpoint("http://h?x=1").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.target.as_str()), ("h", 80, "/?x=1"));
        let e = parse_endpoint("http://u@h:81#frag").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.target.as_str(), e.userinfo.as_deref()), ("h", 81, "/", Some("u")));
        let e = parse_endpoint("http://h/p?q#f").unwrap();
        assert_eq!(e.target, "/p?q");
        assert!(parse_endpoint("ftp://x").is_err());
        assert!(parse_endpoint("http://:80/").is_err());
        assert!(parse_endpoint("http://h:x/").is_err());
        assert!(parse_endpoint("http://h/a b").is_err());
    }

    #[test]
    fn userinfo_becomes_basic_authorization() {
        assert_eq!(basic_auth("user:pw"), "Basic dXNlcjpwdw==");
        assert_eq!(basic_auth("a:"), "Basic YTo=");
    }
}
