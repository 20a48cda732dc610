//! `file-log`, `tcp-log`, `udp-log` and `http-log`: each session's JSON
//! entry (see [`super::serialize`]) delivered to a sink.
//!
//! A session never waits for a sink: it formats its entry and hands it to a
//! bounded queue; a background task (a thread for files) delivers, and
//! reconnects after a failure. When the queue is full the entry is dropped
//! and counted, with a warning at most every few seconds. Optionally
//! (`interval`, Strait's own field) long sessions also log a `progress`
//! entry at that interval while they run.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::{Conf, ConfigureCx, Instance, Plugin, Session, serialize};

/// Entries waiting per sink, at most (Kong's queue `max_entries` default).
const QUEUE: usize = 10_000;

/// Where entries go, and how many were dropped.
struct Sink {
    tx: Tx,
    dropped: AtomicU64,
    name: &'static str,
}

enum Tx {
    Thread(std::sync::mpsc::SyncSender<Vec<u8>>),
    Task(mpsc::Sender<Vec<u8>>),
    /// No runtime to run a task on (offline checks): entries go nowhere.
    None,
}

impl Sink {
    fn send(&self, entry: Vec<u8>) {
        let full = match &self.tx {
            Tx::Thread(tx) => tx.try_send(entry).is_err(),
            Tx::Task(tx) => tx.try_send(entry).is_err(),
            Tx::None => false,
        };
        if full {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(plugin = self.name, dropped = n + 1, "log sink is behind or down: entries dropped");
            }
        }
    }
}

/// A sink kept across snapshots while its plugin's config stays the same,
/// so a configuration change does not reconnect every sink.
#[derive(Default)]
struct SinkSlot(Mutex<Option<(String, Arc<Sink>)>>);

fn sink_for(cx: &ConfigureCx<'_>, key: String, make: impl FnOnce() -> Sink) -> Arc<Sink> {
    let slot = cx.state::<SinkSlot>();
    let mut guard = slot.0.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((k, sink)) = guard.as_ref() {
        if *k == key {
            return sink.clone();
        }
    }
    let sink = Arc::new(make());
    *guard = Some((key, sink.clone()));
    sink
}

/// The instance every log plugin compiles to.
struct LogInstance {
    sink: Arc<Sink>,
    interval: Option<Duration>,
    /// Keeps the sink's slot (and so the sink) alive with the instance.
    _slot: Arc<SinkSlot>,
}

impl Instance for LogInstance {
    fn log(&self, s: &mut Session) {
        let mut entry = serialize(s);
        if self.interval.is_some() {
            entry["progress"] = json!(false);
        }
        self.sink.send(line(&entry));
    }

    fn progress_interval(&self) -> Option<Duration> {
        self.interval
    }

    fn progress(&self, s: &mut Session) {
        let mut entry = serialize(s);
        entry["progress"] = json!(true);
        entry["close_reason"] = Value::Null;
        self.sink.send(line(&entry));
    }
}

fn line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Fields every log plugin has: Kong's `custom_fields_by_lua` (only empty:
/// Strait runs no Lua) and Strait's `interval` (seconds; 0 = off).
fn common(conf: &mut Conf<'_>) -> Option<Duration> {
    conf.describe(
        "custom_fields_by_lua",
        json!({"type": "map", "keys": {"type": "string"}, "values": {"type": "string"}}),
    );
    match conf.raw("custom_fields_by_lua") {
        None => conf.fill("custom_fields_by_lua", Value::Null),
        Some(Value::Object(o)) if o.is_empty() => conf.fill("custom_fields_by_lua", json!({})),
        Some(_) => conf.error("custom_fields_by_lua", "not supported: Strait runs no Lua; use a plugin"),
    }
    // Strait's own field: written back only when set, so that exports of
    // configurations that do not use it still load into Kong.
    conf.describe("interval", json!({"type": "integer", "default": 0, "between": [0, 86_400]}));
    conf.raw("interval")?;
    let secs = conf.integer("interval", None, 0..=86_400)?;
    (secs > 0).then(|| Duration::from_secs(secs as u64))
}

fn instance(
    cx: &ConfigureCx<'_>,
    key: String,
    interval: Option<Duration>,
    make: impl FnOnce() -> Sink,
) -> Arc<dyn Instance> {
    let slot = cx.state::<SinkSlot>();
    let sink = sink_for(cx, key, make);
    Arc::new(LogInstance { sink, interval, _slot: slot })
}

fn task_sink<F>(name: &'static str, queue: usize, run: impl FnOnce(mpsc::Receiver<Vec<u8>>) -> F) -> Sink
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let tx = match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let (tx, rx) = mpsc::channel(queue.max(1));
            handle.spawn(run(rx));
            Tx::Task(tx)
        }
        Err(_) => Tx::None,
    };
    Sink { tx, dropped: AtomicU64::new(0), name }
}

// ---- file-log ----

#[derive(Debug)]
pub struct FileLog;

#[derive(Debug)]
pub struct FileConfig {
    path: PathBuf,
    reopen: bool,
    interval: Option<Duration>,
}

impl Plugin for FileLog {
    type Config = FileConfig;

    fn name(&self) -> &'static str {
        "file-log"
    }

    fn priority(&self) -> i32 {
        9
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<FileConfig> {
        let path = conf.required_string("path");
        let reopen = conf.boolean("reopen", false);
        let interval = common(conf);
        // Kong's rule for the file name; a relative path is taken from the
        // working directory.
        if let Some(p) = &path {
            if p.contains(['*', '&', '%', '\\', '`', '\0']) {
                conf.error("path", "not a valid filename");
            }
        }
        let path = PathBuf::from(path?);
        conf.is_ok().then_some(FileConfig { path, reopen, interval })
    }

    fn configure(&self, c: FileConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, String> {
        let key = format!("{}|{}", c.path.display(), c.reopen);
        Ok(instance(cx, key, c.interval, || {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
            let (path, reopen) = (c.path.clone(), c.reopen);
            let spawned =
                std::thread::Builder::new().name("file-log".into()).spawn(move || write_file(&path, reopen, &rx));
            match spawned {
                Ok(_) => Sink { tx: Tx::Thread(tx), dropped: AtomicU64::new(0), name: "file-log" },
                Err(e) => {
                    tracing::error!(error = %e, "file-log: cannot start its writer thread");
                    Sink { tx: Tx::None, dropped: AtomicU64::new(0), name: "file-log" }
                }
            }
        }))
    }
}

/// Appends entries to `path`, opening it again after an error (or for every
/// entry with `reopen`, so that log rotation by renaming just works).
fn write_file(path: &std::path::Path, reopen: bool, rx: &std::sync::mpsc::Receiver<Vec<u8>>) {
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(path);
    let mut file: Option<std::fs::File> = None;
    let mut failing = false;
    while let Ok(entry) = rx.recv() {
        if file.is_none() || reopen {
            file = match open() {
                Ok(f) => Some(f),
                Err(e) => {
                    if !failing {
                        tracing::warn!(path = %path.display(), error = %e, "file-log: cannot open the file");
                    }
                    failing = true;
                    continue;
                }
            };
        }
        // One write per entry: with O_APPEND, entries never interleave.
        if let Some(f) = file.as_mut() {
            if let Err(e) = f.write_all(&entry) {
                if !failing {
                    tracing::warn!(path = %path.display(), error = %e, "file-log: write failed");
                }
                failing = true;
                file = None;
            } else {
                failing = false;
            }
        }
    }
}

// ---- tcp-log ----

#[derive(Debug)]
pub struct TcpLog;

#[derive(Debug, Clone)]
pub struct TcpConfig {
    host: String,
    port: u16,
    timeout: Duration,
    keepalive: Duration,
    tls: bool,
    tls_sni: Option<String>,
    interval: Option<Duration>,
}

fn host_port(conf: &mut Conf<'_>) -> (Option<String>, Option<u16>) {
    let host = conf.required_string("host");
    let port = conf.required_integer("port", 0..=65_535).and_then(|p| u16::try_from(p).ok());
    (host, port)
}

/// A duration in milliseconds, at least 1.
fn millis(conf: &mut Conf<'_>, key: &'static str, default: i64) -> Duration {
    Duration::from_millis(conf.integer(key, Some(default), 1..=i64::from(u32::MAX)).unwrap_or(default) as u64)
}

impl Plugin for TcpLog {
    type Config = TcpConfig;

    fn name(&self) -> &'static str {
        "tcp-log"
    }

    fn priority(&self) -> i32 {
        7
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<TcpConfig> {
        let (host, port) = host_port(conf);
        let timeout = millis(conf, "timeout", 10_000);
        let keepalive = millis(conf, "keepalive", 60_000);
        let tls = conf.boolean("tls", false);
        let tls_sni = conf.string("tls_sni", None);
        let interval = common(conf);
        let (host, port) = (host?, port?);
        conf.is_ok().then_some(TcpConfig { host, port, timeout, keepalive, tls, tls_sni, interval })
    }

    fn configure(&self, c: TcpConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, String> {
        let key = format!("{:?}", c);
        let tls = if c.tls {
            Some(strait_tls::client_config(&strait_tls::UpstreamTlsOptions::default()).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let interval = c.interval;
        Ok(instance(cx, key, interval, || task_sink("tcp-log", QUEUE, move |rx| tcp_task(c, tls, rx))))
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data).await,
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }
}

async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))
}

async fn connect_tcp(
    host: &str,
    port: u16,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
    sni: Option<&str>,
) -> std::io::Result<Conn> {
    let fut = async {
        let addr = resolve(host, port).await?;
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        match tls {
            None => Ok(Conn::Plain(stream)),
            Some(cfg) => {
                let name = rustls_pki_types::ServerName::try_from(sni.unwrap_or(host).to_owned())
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, stream).await?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| std::io::Error::other("connect timed out"))?
}

/// Delivers entries over one connection, reconnecting on failure and
/// closing it after `keepalive` without entries.
async fn tcp_task(c: TcpConfig, tls: Option<Arc<rustls::ClientConfig>>, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut conn: Option<Conn> = None;
    let mut down = Backoff::default();
    loop {
        let Some(entry) = next_entry(&mut rx, conn.is_some(), c.keepalive, || conn = None).await else {
            return;
        };
        // A replaced or removed plugin's sink still delivers the entries of
        // the sessions that began under it (connecting once if it must),
        // but gives up on them rather than wait out a sink that is down.
        if conn.is_none() && rx.is_closed() && down.waiting() {
            return;
        }
        // While the sink is down, entries are dropped until the next retry:
        // a dead sink costs one connect attempt per backoff period.
        for _ in 0..2 {
            if conn.is_none() {
                if down.waiting() {
                    break;
                }
                match connect_tcp(&c.host, c.port, c.timeout, tls.as_ref(), c.tls_sni.as_deref()).await {
                    Ok(k) => {
                        conn = Some(k);
                        down.reset();
                    }
                    Err(e) => {
                        down.failed("tcp-log", &c.host, &e.to_string());
                        break;
                    }
                }
            }
            let Some(k) = conn.as_mut() else { break };
            match tokio::time::timeout(c.timeout, k.write(&entry)).await {
                Ok(Ok(())) => break,
                _ => conn = None,
            }
        }
    }
}

/// Reconnection backoff for a sink that is down: 1 s doubling to 30 s, with
/// one warning per outage.
#[derive(Debug, Default)]
struct Backoff {
    until: Option<tokio::time::Instant>,
    delay: Duration,
}

impl Backoff {
    fn waiting(&self) -> bool {
        self.until.is_some_and(|t| tokio::time::Instant::now() < t)
    }

    fn failed(&mut self, plugin: &str, host: &str, error: &str) {
        if self.until.is_none() {
            tracing::warn!(plugin, host, error, "log sink unreachable: entries are dropped until it answers");
        }
        self.delay = (self.delay * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        self.until = Some(tokio::time::Instant::now() + self.delay);
    }

    fn reset(&mut self) {
        if self.until.take().is_some() {
            tracing::info!("log sink reachable again");
        }
        self.delay = Duration::ZERO;
    }
}

/// The next entry; while a connection is open, waits at most `keepalive`
/// and then calls `close` before waiting on. `None` once every sender is gone.
async fn next_entry(
    rx: &mut mpsc::Receiver<Vec<u8>>,
    open: bool,
    keepalive: Duration,
    close: impl FnOnce(),
) -> Option<Vec<u8>> {
    if open {
        match tokio::time::timeout(keepalive, rx.recv()).await {
            Ok(e) => return e,
            Err(_) => close(),
        }
    }
    rx.recv().await
}

// ---- udp-log ----

#[derive(Debug)]
pub struct UdpLog;

#[derive(Debug, Clone)]
pub struct UdpConfig {
    host: String,
    port: u16,
    timeout: Duration,
    interval: Option<Duration>,
}

impl Plugin for UdpLog {
    type Config = UdpConfig;

    fn name(&self) -> &'static str {
        "udp-log"
    }

    fn priority(&self) -> i32 {
        8
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<UdpConfig> {
        let (host, port) = host_port(conf);
        let timeout = millis(conf, "timeout", 10_000);
        let interval = common(conf);
        let (host, port) = (host?, port?);
        conf.is_ok().then_some(UdpConfig { host, port, timeout, interval })
    }

    fn configure(&self, c: UdpConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, String> {
        let key = format!("{:?}", c);
        let interval = c.interval;
        Ok(instance(cx, key, interval, || task_sink("udp-log", QUEUE, move |rx| udp_task(c, rx))))
    }
}

/// One datagram per entry (without the newline).
async fn udp_task(c: UdpConfig, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut sock: Option<UdpSocket> = None;
    let mut down = Backoff::default();
    while let Some(mut entry) = rx.recv().await {
        entry.pop();
        if sock.is_none() {
            // Even for a replaced or removed plugin: its last sessions'
            // entries still go out (making a UDP socket waits on no peer).
            if down.waiting() {
                continue;
            }
            let made = async {
                let addr = resolve(&c.host, c.port).await?;
                let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
                let s = UdpSocket::bind(bind).await?;
                s.connect(addr).await?;
                Ok::<_, std::io::Error>(s)
            };
            match tokio::time::timeout(c.timeout, made).await {
                Ok(Ok(s)) => {
                    sock = Some(s);
                    down.reset();
                }
                Ok(Err(e)) => {
                    down.failed("udp-log", &c.host, &e.to_string());
                    continue;
                }
                Err(_) => {
                    down.failed("udp-log", &c.host, "timed out");
                    continue;
                }
            }
        }
        if let Some(s) = &sock {
            if tokio::time::timeout(c.timeout, s.send(&entry)).await.map_or(true, |r| r.is_err()) {
                sock = None;
            }
        }
    }
}

// ---- http-log ----

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

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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

    fn configure(&self, c: HttpConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, String> {
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
        req = req.header("authorization", format!("Basic {}", base64(u.as_bytes())));
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

    /// Entries queued by sessions of a plugin that was since replaced or
    /// removed (every sender gone), with no connection open yet.
    fn orphaned(entries: &[&str]) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(8);
        for e in entries {
            tx.try_send(format!("{e}\n").into_bytes()).expect("room in the queue");
        }
        rx
    }

    #[tokio::test]
    async fn a_tcp_sink_whose_plugin_is_gone_still_delivers_what_was_queued() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let c = TcpConfig {
            host: "127.0.0.1".into(),
            port,
            timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(5),
            tls: false,
            tls_sni: None,
            interval: None,
        };
        let task = tokio::spawn(tcp_task(c, None, orphaned(&["one", "two"])));
        let (mut s, _) =
            tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.expect("in time").expect("accept");
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the task ends").expect("no panic");
        let mut got = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut got).await.expect("read");
        assert_eq!(got, "one\ntwo\n");
    }

    #[tokio::test]
    async fn a_udp_sink_whose_plugin_is_gone_still_delivers_what_was_queued() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let port = sock.local_addr().expect("address").port();
        let c = UdpConfig { host: "127.0.0.1".into(), port, timeout: Duration::from_secs(5), interval: None };
        tokio::time::timeout(Duration::from_secs(5), udp_task(c, orphaned(&["one", "two"])))
            .await
            .expect("the task ends");
        let mut buf = [0u8; 64];
        for want in ["one", "two"] {
            let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
                .await
                .expect("in time")
                .expect("recv");
            assert_eq!(&buf[..n], want.as_bytes());
        }
    }

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
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
