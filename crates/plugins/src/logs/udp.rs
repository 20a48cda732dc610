//! `udp-log`: one datagram per entry, sent from one socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use strait_plugin::{Conf, ConfigureCx, ConfigureError, Instance, Plugin};

use super::{Backoff, QUEUE, common, host_port, instance, millis, resolve, task_sink};

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

    fn configure(&self, c: UdpConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::orphaned;

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
}
