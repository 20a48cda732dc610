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
    if rec.moves > 0 {
        // Handed from one generation to the next by this many upgrades.
        let _ = write!(s, " moved={}", rec.moves);
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

/// What the writer thread is sent.
enum Msg {
    Line(String),
    /// Write to this destination from now on: the same path reopened
    /// (after a log rotation moved the file away), or a reload's new one.
    Reopen(AccessLog, mpsc::Sender<io::Result<()>>),
}

/// Sends log lines to the writer thread.
#[derive(Debug, Clone)]
pub struct AccessLogger {
    tx: mpsc::Sender<Msg>,
    /// Off: lines are not even formatted. Shared by every clone, so a
    /// reload turns the log on or off for every session at once.
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Line(_) => "Line",
            Msg::Reopen(..) => "Reopen",
        })
    }
}

/// Owns the writer thread; dropping every [`AccessLogger`] and then calling
/// [`AccessLogWriter::finish`] flushes everything.
#[derive(Debug)]
pub struct AccessLogWriter {
    thread: Option<JoinHandle<()>>,
}

/// Where lines go: nowhere, or a writer.
fn destination(target: &AccessLog) -> io::Result<Option<Box<dyn Write + Send>>> {
    Ok(match target {
        AccessLog::Off => None,
        AccessLog::Stdout => Some(Box::new(io::stdout())),
        AccessLog::File(path) => Some(Box::new(open_append(path)?)),
    })
}

impl AccessLogger {
    /// A logger that discards everything (`proxy_stream_access_log = off`).
    pub fn off() -> (AccessLogger, AccessLogWriter) {
        AccessLogger::open(&AccessLog::Off).unwrap_or_else(|_| {
            // Spawning the thread failed: a logger whose lines go nowhere.
            let (tx, _) = mpsc::channel();
            (AccessLogger { tx, on: Default::default() }, AccessLogWriter { thread: None })
        })
    }

    /// Opens the destination now, so a bad path fails at start, not later.
    pub fn open(target: &AccessLog) -> io::Result<(AccessLogger, AccessLogWriter)> {
        let out = destination(target)?;
        let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(out.is_some()));
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new().name("strait-access-log".into()).spawn(move || write_loop(rx, out))?;
        Ok((AccessLogger { tx, on }, AccessLogWriter { thread: Some(thread) }))
    }

    pub fn log(&self, record: &SessionRecord) {
        if self.on.load(std::sync::atomic::Ordering::Relaxed) {
            // The writer only goes away at exit; a lost line then is harmless.
            let _ = self.tx.send(Msg::Line(line(record)));
        }
    }

    /// Writes to `target` from now on (reopened even when it is the same
    /// path, as after a rotation), once every line sent before is written
    /// to the old one. Waits for the writer to open it (5 s at most, not on
    /// a runtime thread: call it from a blocking context).
    pub fn reopen(&self, target: &AccessLog) -> io::Result<()> {
        let (done, result) = mpsc::channel();
        self.tx
            .send(Msg::Reopen(target.clone(), done))
            .map_err(|_| io::Error::other("the access log writer has stopped"))?;
        let opened = result
            .recv_timeout(std::time::Duration::from_secs(5))
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the access log writer did not answer"))?;
        if opened.is_ok() {
            self.on.store(*target != AccessLog::Off, std::sync::atomic::Ordering::Relaxed);
        }
        opened
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

fn write_loop(rx: mpsc::Receiver<Msg>, out: Option<Box<dyn Write + Send>>) {
    let mut out = out.map(BufWriter::new);
    let flush = |out: &mut Option<BufWriter<Box<dyn Write + Send>>>| {
        if let Some(o) = out.as_mut()
            && let Err(e) = o.flush()
        {
            tracing::error!(error = %e, "cannot flush the access log");
        }
    };
    while let Ok(msg) = rx.recv() {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(l) => {
                    if let Some(o) = out.as_mut()
                        && let Err(e) = writeln!(o, "{l}")
                    {
                        tracing::error!(error = %e, "cannot write the access log");
                    }
                }
                Msg::Reopen(target, done) => {
                    flush(&mut out);
                    // A destination that cannot be opened keeps the old one.
                    let _ = done.send(destination(&target).map(|o| out = o.map(BufWriter::new)));
                }
            }
            next = rx.try_recv().ok();
        }
        flush(&mut out);
    }
    flush(&mut out);
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
            moves: 0,
        };
        assert_eq!(
            line(&r),
            "127.0.0.1:5000 [01/Jan/1970:00:00:00 +0000] TCP 200 10 20 1.500 listener=127.0.0.1:9000 \
             protocol=tls route=r1 service=- upstream=127.0.0.1:6379 sni=a.test tries=2 reason=\"client closed\" \
             failed_tries=\"127.0.0.1:6380 Connection refused (os error 111) at +0.0ms after 0.2ms\""
        );
    }

    #[test]
    fn reopen_writes_to_a_new_file_after_a_rotation_and_can_turn_the_log_off() {
        let dir = std::env::temp_dir().join(format!("strait-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("access.log");
        let (log, writer) = AccessLogger::open(&AccessLog::File(path.clone())).unwrap();
        let rec = |client: &str| {
            SessionRecord::new(client.parse().unwrap(), "l".into(), Protocol::Tcp, CloseReason::ClientClosed)
        };
        log.log(&rec("10.0.0.1:1"));
        // logrotate: the file moves away, then the writer is told to reopen.
        let rotated = dir.join("access.log.1");
        log.reopen(&AccessLog::File(path.clone())).unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen(&AccessLog::File(path.clone())).unwrap();
        log.log(&rec("10.0.0.2:2"));
        log.reopen(&AccessLog::Off).unwrap();
        log.log(&rec("10.0.0.3:3"));
        // A path that cannot be opened is an error and keeps what was.
        assert!(log.reopen(&AccessLog::File(dir.join("access.log.1").join("x"))).is_err());
        drop(log);
        writer.finish();
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.starts_with("10.0.0.1:1 ") && old.lines().count() == 1, "{old}");
        assert!(new.starts_with("10.0.0.2:2 ") && new.lines().count() == 1, "after the rotation, off after: {new}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
