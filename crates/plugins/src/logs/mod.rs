//! `file-log`, `tcp-log`, `udp-log` and `http-log`: each session's JSON
//! entry (see [`strait_plugin::serialize`]) delivered to a sink, one file
//! per sink; this module holds what they share.
//!
//! A session never waits for a sink: it formats its entry and hands it to a
//! bounded queue; a background task (a thread for files) delivers, and
//! reconnects after a failure. When the queue is full the entry is dropped
//! and counted, with a warning at most every few seconds. Optionally
//! (`interval`, Strait's own field) long sessions also log a `progress`
//! entry at that interval while they run.

mod file;
mod http;
mod tcp;
mod udp;

pub use file::FileLog;
pub use http::HttpLog;
pub use tcp::TcpLog;
pub use udp::UdpLog;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use strait_plugin::{Conf, ConfigureCx, Instance, Session, serialize};

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

fn host_port(conf: &mut Conf<'_>) -> (Option<String>, Option<u16>) {
    let host = conf.required_string("host");
    let port = conf.required_integer("port", 0..=65_535).and_then(|p| u16::try_from(p).ok());
    (host, port)
}

/// A duration in milliseconds, at least 1.
fn millis(conf: &mut Conf<'_>, key: &'static str, default: i64) -> Duration {
    Duration::from_millis(conf.integer(key, Some(default), 1..=i64::from(u32::MAX)).unwrap_or(default) as u64)
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

#[cfg(test)]
/// Entries queued by sessions of a plugin that was since replaced or
/// removed (every sender gone), with no connection open yet.
fn orphaned(entries: &[&str]) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(8);
    for e in entries {
        tx.try_send(format!("{e}\n").into_bytes()).expect("room in the queue");
    }
    rx
}
