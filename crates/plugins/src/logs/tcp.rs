//! `tcp-log`: entries written over one TCP (or TLS) connection, kept open
//! for `keepalive` and made again after a failure, with a backoff while the
//! sink is down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use strait_plugin::{Conf, ConfigureCx, ConfigureError, Instance, Plugin};

use super::{Backoff, Conn, QUEUE, common, connect_tcp, host_port, instance, millis, next_entry, task_sink};

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

    fn configure(&self, c: TcpConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::orphaned;

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
}
