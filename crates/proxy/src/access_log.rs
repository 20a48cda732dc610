//! The per-session access log: one line per session, written at close.
//!
//! The line starts with Kong's `basic` stream format (client, time, protocol,
//! status, bytes sent to and received from the client, session time in
//! seconds) and goes on with `key=value` fields. Lines are formatted on the
//! session's task and handed to one writer thread, so a slow disk never blocks
//! the runtime; the writer flushes whenever it has caught up.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strait_config::AccessLog;

/// Why a session ended, as written in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    UpstreamClosed,
    IdleTimeout,
    NoRoute,
    NoService,
    ConnectFailed,
    UpstreamTlsFailed,
    TlsHandshakeFailed,
    NotTls,
    BadClientHello,
    PrereadTimeout,
    ClientError,
    UpstreamError,
    Shutdown,
    /// A missing, malformed or untrusted PROXY protocol header.
    BadProxyHeader,
    /// A plugin refused the session.
    Rejected,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client closed",
            CloseReason::UpstreamClosed => "upstream closed",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::NoRoute => "no route",
            CloseReason::NoService => "no service",
            CloseReason::ConnectFailed => "connect failed",
            CloseReason::UpstreamTlsFailed => "upstream tls failed",
            CloseReason::TlsHandshakeFailed => "tls handshake failed",
            CloseReason::NotTls => "not tls",
            CloseReason::BadClientHello => "bad client hello",
            CloseReason::PrereadTimeout => "preread timeout",
            CloseReason::ClientError => "client error",
            CloseReason::UpstreamError => "upstream error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::BadProxyHeader => "bad proxy header",
            CloseReason::Rejected => "rejected by plugin",
        }
    }
}

/// One attempt to reach the upstream (Kong's `tries`).
#[derive(Debug, Clone)]
pub struct Try {
    pub addr: SocketAddr,
    /// When the attempt started.
    pub started: SystemTime,
    /// How long the attempt took (connect, and TLS when the service says `tls`).
    pub took: Duration,
    /// Why it failed; `None` for the attempt that connected.
    pub error: Option<String>,
}

/// A PROXY protocol header and the peer that sent it.
#[derive(Debug)]
pub struct Proxied {
    /// The load balancer.
    pub by: SocketAddr,
    /// What its header said, TLVs included.
    pub header: crate::proxy_protocol::Header,
}

/// Everything known about a session when it closes.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The client: the peer, or the source a PROXY protocol header gave.
    pub client: SocketAddr,
    /// The PROXY protocol header the session started with, and who sent it.
    /// Shared and optional: most sessions have none, and every open session
    /// keeps its record.
    pub proxied: Option<std::sync::Arc<Proxied>>,
    pub listener: std::sync::Arc<str>,
    pub started: SystemTime,
    pub duration: Duration,
    pub protocol: &'static str,
    pub status: u16,
    /// Labels shared with the snapshot: no allocation per session.
    pub route: Option<std::sync::Arc<str>>,
    pub service: Option<std::sync::Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub sni: Option<String>,
    pub tries: Vec<Try>,
    /// From accept until the upstream was ready (Kong's `latencies.kong`).
    pub connected_after: Option<Duration>,
    /// Bytes sent to the client.
    pub bytes_sent: u64,
    /// Bytes received from the client.
    pub bytes_received: u64,
    /// UDP: datagrams from the client and to it.
    pub datagrams: Option<(u64, u64)>,
    pub reason: CloseReason,
    /// Extra detail for failures (an error message), never secret material.
    pub detail: Option<String>,
}

impl SessionRecord {
    /// A session starting now: status 200 and `reason` until something says otherwise.
    pub fn new(client: SocketAddr, listener: std::sync::Arc<str>, protocol: &'static str, reason: CloseReason) -> Self {
        SessionRecord {
            client,
            proxied: None,
            listener,
            started: SystemTime::now(),
            duration: Duration::ZERO,
            protocol,
            status: 200,
            route: None,
            service: None,
            upstream: None,
            sni: None,
            tries: Vec::new(),
            connected_after: None,
            bytes_sent: 0,
            bytes_received: 0,
            datagrams: None,
            reason,
            detail: None,
        }
    }

    /// Formats the access-log line (without the newline).
    pub fn line(&self) -> String {
        let mut s = String::with_capacity(256);
        let proto = if self.protocol == "udp" { "UDP" } else { "TCP" };
        let _ = write!(
            s,
            "{} [{}] {} {} {} {} {:.3}",
            self.client,
            clf_time(self.started),
            proto,
            self.status,
            self.bytes_sent,
            self.bytes_received,
            self.duration.as_secs_f64()
        );
        let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let label = |o: &Option<std::sync::Arc<str>>| o.as_deref().unwrap_or("-").to_owned();
        let _ = write!(
            s,
            " listener={} protocol={} route={} service={} upstream={} sni={} tries={} reason=\"{}\"",
            self.listener,
            self.protocol,
            label(&self.route),
            label(&self.service),
            self.upstream.map_or_else(|| "-".into(), |a| a.to_string()),
            dash(&self.sni),
            self.tries.len(),
            self.reason.as_str()
        );
        let failed: Vec<String> = self
            .tries
            .iter()
            .filter_map(|t| {
                let e = t.error.as_deref()?;
                // When the try started, from the session's start, and how long it took.
                let at = t.started.duration_since(self.started).unwrap_or_default();
                Some(format!(
                    "{} {} at +{:.1}ms after {:.1}ms",
                    t.addr,
                    e.replace('"', "'"),
                    at.as_secs_f64() * 1000.0,
                    t.took.as_secs_f64() * 1000.0
                ))
            })
            .collect();
        if !failed.is_empty() {
            let _ = write!(s, " failed_tries=\"{}\"", failed.join("; "));
        }
        if let Some((from, to)) = self.datagrams {
            let _ = write!(s, " datagrams={from}/{to}");
        }
        if let Some(p) = &self.proxied {
            let _ = write!(s, " proxied_by={}", p.by);
        }
        if let Some(d) = &self.detail {
            let _ = write!(s, " detail=\"{}\"", d.replace('"', "'"));
        }
        s
    }
}

/// What an open TCP session keeps of its [`SessionRecord`] while the relay
/// runs: the fields its setup filled in. The others (duration, byte counts,
/// why it closed, an error) are only known when it ends, and every open
/// session keeps this, so it leaves them out: 80 bytes, and 16 more with its
/// times as nanoseconds (see `bench/README.md`, idle memory).
#[derive(Debug, Clone)]
pub(crate) struct OpenRecord {
    client: SocketAddr,
    proxied: Option<std::sync::Arc<Proxied>>,
    listener: std::sync::Arc<str>,
    /// Nanoseconds since the epoch: half a `SystemTime`.
    started: u64,
    protocol: &'static str,
    status: u16,
    route: Option<std::sync::Arc<str>>,
    service: Option<std::sync::Arc<str>>,
    upstream: Option<SocketAddr>,
    sni: Option<String>,
    tries: Vec<Try>,
    /// Nanoseconds, as `started`; `u64::MAX` for none.
    connected_after: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

/// How an open session ended: the fields an [`OpenRecord`] leaves out.
#[derive(Debug)]
pub(crate) struct Closing {
    pub(crate) duration: Duration,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
    pub(crate) reason: CloseReason,
    pub(crate) detail: Option<String>,
}

impl OpenRecord {
    /// Keeps what the setup found. Every field is named, so a field added to
    /// the record must be decided on here.
    pub(crate) fn new(rec: SessionRecord) -> Self {
        let SessionRecord {
            client,
            proxied,
            listener,
            started,
            duration: _,
            protocol,
            status,
            route,
            service,
            upstream,
            sni,
            tries,
            connected_after,
            bytes_sent: _,
            bytes_received: _,
            datagrams: _,
            reason: _,
            detail: _,
        } = rec;
        OpenRecord {
            client,
            proxied,
            listener,
            // Before the epoch (a clock set far back) counts as the epoch.
            started: nanos(started.duration_since(UNIX_EPOCH).unwrap_or_default()),
            protocol,
            status,
            route,
            service,
            upstream,
            sni,
            tries,
            connected_after: connected_after.map_or(u64::MAX, nanos),
        }
    }

    /// The whole record again, once the session has ended.
    pub(crate) fn close(self, end: Closing) -> SessionRecord {
        let OpenRecord {
            client,
            proxied,
            listener,
            started,
            protocol,
            status,
            route,
            service,
            upstream,
            sni,
            tries,
            connected_after,
        } = self;
        SessionRecord {
            client,
            proxied,
            listener,
            started: UNIX_EPOCH + Duration::from_nanos(started),
            duration: end.duration,
            protocol,
            status,
            route,
            service,
            upstream,
            sni,
            tries,
            connected_after: (connected_after != u64::MAX).then(|| Duration::from_nanos(connected_after)),
            bytes_sent: end.bytes_sent,
            bytes_received: end.bytes_received,
            datagrams: None,
            reason: end.reason,
            detail: end.detail,
        }
    }

    /// The record of the session so far, for a progress report.
    pub(crate) fn so_far(&self, end: Closing) -> SessionRecord {
        self.clone().close(end)
    }
}

/// `26/Nov/2026:15:04:32 +0000`, nginx's `$time_local` in UTC.
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Sends log lines to the writer thread.
#[derive(Debug, Clone)]
pub struct AccessLogger {
    tx: Option<mpsc::Sender<String>>,
}

/// Owns the writer thread; dropping every [`AccessLogger`] and then calling
/// [`AccessLogWriter::finish`] flushes everything.
#[derive(Debug)]
pub struct AccessLogWriter {
    thread: Option<JoinHandle<()>>,
}

impl AccessLogger {
    /// A logger that discards everything (`proxy_stream_access_log = off`).
    pub fn off() -> (AccessLogger, AccessLogWriter) {
        (AccessLogger { tx: None }, AccessLogWriter { thread: None })
    }

    /// Opens the destination now, so a bad path fails at start, not later.
    pub fn open(target: &AccessLog) -> io::Result<(AccessLogger, AccessLogWriter)> {
        let out: Box<dyn Write + Send> = match target {
            AccessLog::Off => return Ok(AccessLogger::off()),
            AccessLog::Stdout => Box::new(io::stdout()),
            AccessLog::File(path) => Box::new(open_append(path)?),
        };
        let (tx, rx) = mpsc::channel::<String>();
        let thread = std::thread::Builder::new().name("strait-access-log".into()).spawn(move || write_loop(rx, out))?;
        Ok((AccessLogger { tx: Some(tx) }, AccessLogWriter { thread: Some(thread) }))
    }

    pub fn log(&self, record: &SessionRecord) {
        if let Some(tx) = &self.tx {
            // The writer only goes away at exit; a lost line then is harmless.
            let _ = tx.send(record.line());
        }
    }
}

impl AccessLogWriter {
    /// Waits until every line sent so far is written (all loggers must be dropped).
    pub fn finish(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(rx: mpsc::Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let mut write = |l: &str| {
            if let Err(e) = writeln!(out, "{l}") {
                tracing::error!(error = %e, "cannot write the access log");
            }
        };
        write(&line);
        while let Ok(more) = rx.try_recv() {
            write(&more);
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "cannot flush the access log");
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_time_formats_known_instants() {
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_705_472); // 2026-11-26T15:04:32Z
        assert_eq!(clf_time(t), "26/Nov/2026:15:04:32 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(clf_time(leap), "29/Feb/2000:00:00:00 +0000");
    }

    #[test]
    fn line_has_basic_prefix_and_fields() {
        let r = SessionRecord {
            client: "127.0.0.1:5000".parse().unwrap(),
            proxied: None,
            listener: "127.0.0.1:9000".into(),
            started: UNIX_EPOCH,
            duration: Duration::from_millis(1500),
            protocol: "tls",
            status: 200,
            route: Some("r1".into()),
            service: None,
            upstream: Some("127.0.0.1:6379".parse().unwrap()),
            sni: Some("a.test".into()),
            tries: vec![
                Try {
                    addr: "127.0.0.1:6380".parse().unwrap(),
                    started: UNIX_EPOCH,
                    took: Duration::from_micros(250),
                    error: Some("Connection refused (os error 111)".into()),
                },
                Try { addr: "127.0.0.1:6379".parse().unwrap(), started: UNIX_EPOCH, took: Duration::ZERO, error: None },
            ],
            connected_after: None,
            bytes_sent: 10,
            bytes_received: 20,
            datagrams: None,
            reason: CloseReason::ClientClosed,
            detail: None,
        };
        assert_eq!(
            r.line(),
            "127.0.0.1:5000 [01/Jan/1970:00:00:00 +0000] TCP 200 10 20 1.500 listener=127.0.0.1:9000 \
             protocol=tls route=r1 service=- upstream=127.0.0.1:6379 sni=a.test tries=2 reason=\"client closed\" \
             failed_tries=\"127.0.0.1:6380 Connection refused (os error 111) at +0.0ms after 0.2ms\""
        );
    }

    #[test]
    fn an_open_record_gives_back_what_the_setup_found() {
        let started = UNIX_EPOCH + Duration::new(1_795_705_472, 123_456_789);
        let mut r = SessionRecord::new("127.0.0.1:5000".parse().unwrap(), "l".into(), "tls", CloseReason::ClientClosed);
        r.started = started;
        r.status = 201;
        r.route = Some("r".into());
        r.service = Some("s".into());
        r.upstream = Some("127.0.0.1:6379".parse().unwrap());
        r.sni = Some("a.test".into());
        r.tries = vec![Try { addr: "127.0.0.1:6379".parse().unwrap(), started, took: Duration::ZERO, error: None }];
        r.connected_after = Some(Duration::from_micros(1234));
        let open = OpenRecord::new(r);
        let end = |reason| Closing {
            duration: Duration::from_secs(3),
            bytes_sent: 7,
            bytes_received: 9,
            reason,
            detail: Some("x".into()),
        };
        let now = open.so_far(end(CloseReason::ClientClosed));
        let done = open.close(end(CloseReason::IdleTimeout));
        for r in [&now, &done] {
            assert_eq!(r.started, started, "to the nanosecond");
            assert_eq!((r.protocol, r.status, r.sni.as_deref()), ("tls", 201, Some("a.test")));
            assert_eq!((r.route.as_deref(), r.service.as_deref()), (Some("r"), Some("s")));
            assert_eq!(r.upstream, Some("127.0.0.1:6379".parse().unwrap()));
            assert_eq!((r.tries.len(), r.connected_after), (1, Some(Duration::from_micros(1234))));
            assert_eq!((r.duration, r.bytes_sent, r.bytes_received), (Duration::from_secs(3), 7, 9));
            assert_eq!(r.detail.as_deref(), Some("x"));
        }
        assert_eq!(done.reason, CloseReason::IdleTimeout);
        let none = OpenRecord::new(SessionRecord::new(now.client, "l".into(), "tcp", CloseReason::ClientClosed));
        assert_eq!(none.close(end(CloseReason::Shutdown)).connected_after, None);
    }
}
