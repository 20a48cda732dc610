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
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use strait_config::AccessLog;
use strait_model::Protocol;
use strait_plugin::SessionRecord;

/// Formats the access-log line of `rec` (without the newline).
pub fn line(rec: &SessionRecord) -> String {
    let mut s = String::with_capacity(256);
    let proto = if rec.protocol == Protocol::Udp { "UDP" } else { "TCP" };
    let _ = write!(
        s,
        "{} [{}] {} {} {} {} {:.3}",
        rec.client,
        clf_time(rec.started),
        proto,
        rec.status.code(),
        rec.bytes_sent,
        rec.bytes_received,
        rec.duration.as_secs_f64()
    );
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let label = |o: &Option<std::sync::Arc<str>>| o.as_deref().unwrap_or("-").to_owned();
    let _ = write!(
        s,
        " listener={} protocol={} route={} service={} upstream={} sni={} tries={} reason=\"{}\"",
        rec.listener,
        rec.protocol,
        label(&rec.route),
        label(&rec.service),
        rec.upstream.map_or_else(|| "-".into(), |a| a.to_string()),
        dash(&rec.sni),
        rec.tries.len(),
        rec.reason.as_str()
    );
    let failed: Vec<String> = rec
        .tries
        .iter()
        .filter_map(|t| {
            let e = t.error.as_deref()?;
            // When the try started, from the session's start, and how long it took.
            let at = t.started.duration_since(rec.started).unwrap_or_default();
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
    if let Some((from, to)) = rec.datagrams {
        let _ = write!(s, " datagrams={from}/{to}");
    }
    if let Some(p) = &rec.proxied {
        let _ = write!(s, " proxied_by={}", p.by);
    }
    if let Some(d) = &rec.detail {
        let _ = write!(s, " detail=\"{}\"", d.replace('"', "'"));
    }
    s
}

/// `26/Nov/2026:15:04:32 +0000`: nginx's `$time_local`, in UTC.
fn clf_time(t: SystemTime) -> String {
    const CLF: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
    time::OffsetDateTime::from(t).format(CLF).unwrap_or_default()
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
            let _ = tx.send(line(record));
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
    use std::time::{Duration, UNIX_EPOCH};

    use strait_plugin::{CloseReason, Status, Try};

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
            protocol: Protocol::Tls,
            status: Status::Ok,
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
            line(&r),
            "127.0.0.1:5000 [01/Jan/1970:00:00:00 +0000] TCP 200 10 20 1.500 listener=127.0.0.1:9000 \
             protocol=tls route=r1 service=- upstream=127.0.0.1:6379 sni=a.test tries=2 reason=\"client closed\" \
             failed_tries=\"127.0.0.1:6380 Connection refused (os error 111) at +0.0ms after 0.2ms\""
        );
    }
}
