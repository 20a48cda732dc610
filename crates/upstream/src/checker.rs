//! The one background task per upstream: re-resolves target names when their
//! TTL runs out and runs the active health probes (`tcp`, `tls`, `http`,
//! `https`) at the configured intervals, `concurrency` at a time.
//!
//! It sleeps until the next DNS expiry or probe, and wakes early when the
//! configuration or a health state changes. It ends when its upstream is
//! removed from the configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls_pki_types::ServerName;
use strait_model::CheckType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::balanced::Balanced;
use crate::dns::{Dns, Failure};
use crate::health::Event;
use crate::shared::{Endpoint, Shared, TargetState};

/// Longest sleep when nothing is due (the task still wakes on changes).
const IDLE: Duration = Duration::from_secs(3600);

pub(crate) async fn run(shared: Arc<Shared>, dns: Arc<arc_swap::ArcSwap<Dns>>) {
    // When each address was last probed, keyed by the address's allocation.
    let mut last_probe: HashMap<usize, Instant> = HashMap::new();
    loop {
        if shared.retired.load(Ordering::Acquire) {
            return;
        }
        let Some(b) = shared.current.load_full() else {
            return;
        };
        let mut wake_at = Instant::now() + IDLE;

        // DNS: each due name in its own task, so a slow name server delays
        // neither the probes nor the other names. A finished refresh wakes us.
        for t in &b.targets {
            if t.state.literal {
                continue;
            }
            let refresh_at = t.state.dns.lock().map(|d| d.refresh_at).unwrap_or_default();
            match refresh_at {
                Some(at) if Instant::from_std(at) > Instant::now() => wake_at = wake_at.min(Instant::from_std(at)),
                _ => {
                    if !t.state.refreshing.swap(true, Ordering::AcqRel) {
                        let (shared, state, dns) = (shared.clone(), t.state.clone(), dns.load_full());
                        tokio::spawn(async move {
                            refresh(&shared, &state, &dns).await;
                            state.refreshing.store(false, Ordering::Release);
                            shared.wake.notify_one();
                        });
                    }
                }
            }
        }

        // Active probes: every healthy address each `healthy.interval`, every
        // unhealthy one each `unhealthy.interval`, counted from its last probe,
        // so an address that changes state moves to the other timer at once.
        if b.hc.active_enabled() {
            let now = Instant::now();
            let mut batch = Vec::new();
            let mut live = Vec::new();
            for t in b.targets.iter().filter(|t| t.weight > 0) {
                for ep in t.state.endpoints.load().iter() {
                    let key = Arc::as_ptr(ep) as usize;
                    live.push(key);
                    let a = &b.hc.active;
                    let interval = if ep.health.is_healthy() { a.healthy.interval } else { a.unhealthy.interval };
                    if interval <= 0.0 {
                        continue;
                    }
                    let next = last_probe.get(&key).map_or(now, |l| *l + Duration::from_secs_f64(interval));
                    if next <= now {
                        batch.push(ep.clone());
                        last_probe.insert(key, now);
                        wake_at = wake_at.min(now + Duration::from_secs_f64(interval));
                    } else {
                        wake_at = wake_at.min(next);
                    }
                }
            }
            last_probe.retain(|k, _| live.contains(k));
            probe_all(&b, batch).await;
        }

        // Tables for the sessions, off the session path. Large rings take a
        // while: build them on the blocking pool.
        let plan_of = b.clone();
        let _ = tokio::task::spawn_blocking(move || plan_of.refresh_plan()).await;
        drop(b);
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = shared.wake.notified() => {}
        }
    }
}

/// Resolves one target and installs its addresses.
async fn refresh(shared: &Shared, t: &TargetState, dns: &Dns) {
    let result = dns.resolve(&t.host, t.port).await;
    let now = std::time::Instant::now();
    let changed = {
        let mut state = t.dns.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(answer) => {
                state.refresh_at = Some(now + answer.ttl);
                state.stale_until = Some(now + answer.ttl + dns.settings().stale_ttl);
                state.source = answer.source;
                if state.error.take().is_some() {
                    tracing::info!(target = %t.host, "target resolves again");
                }
                t.set_endpoints(&answer.addrs)
            }
            Err(failure) => {
                state.refresh_at = Some(now + dns.retry_after(&failure));
                let stale_ok = state.stale_until.is_some_and(|s| s > now);
                if state.error.as_deref() != Some(failure.message()) {
                    let kind = if matches!(failure, Failure::NotFound(_)) { "unresolvable" } else { "DNS error" };
                    tracing::warn!(target = %t.host, error = failure.message(), keeps_last_addresses = stale_ok, "target {kind}");
                }
                state.error = Some(failure.message().to_owned());
                if stale_ok { false } else { t.set_endpoints(&[]) }
            }
        }
    };
    t.resolved.send_replace(true);
    if changed {
        shared.bump();
    }
}

async fn probe_all(b: &Arc<Balanced>, batch: Vec<Arc<Endpoint>>) {
    if batch.is_empty() {
        return;
    }
    let limit = b.hc.active.concurrency.max(1) as usize;
    let mut set = JoinSet::new();
    let mut queue = batch.into_iter();
    loop {
        while set.len() < limit {
            let Some(ep) = queue.next() else {
                break;
            };
            let b = b.clone();
            set.spawn(async move {
                let result = probe(&b, &ep).await;
                (ep, result)
            });
        }
        let Some(done) = set.join_next().await else {
            return;
        };
        if let Ok((ep, Some((event, detail)))) = done {
            b.probed(&ep, event, &detail);
        }
    }
}

/// One probe; `None` when the result counts neither way (an HTTP status in
/// neither list).
async fn probe(b: &Balanced, ep: &Endpoint) -> Option<(Event, String)> {
    let a = &b.hc.active;
    let timeout = Duration::from_secs_f64(a.timeout);
    let result = tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(ep.addr).await.map_err(|e| (Event::TcpFailure, format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match a.kind {
            CheckType::Tcp | CheckType::Grpc | CheckType::Grpcs => Ok(None),
            CheckType::Http => http(b, ep, tcp).await.map(Some),
            CheckType::Tls | CheckType::Https => {
                let config = b.probe_tls.clone().ok_or((Event::TcpFailure, "no TLS configuration".to_owned()))?;
                let name = a
                    .https_sni
                    .as_deref()
                    .or(ep.hostname.as_deref())
                    .and_then(|n| ServerName::try_from(n.to_owned()).ok())
                    .unwrap_or_else(|| ServerName::IpAddress(ep.addr.ip().into()));
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| (Event::TcpFailure, format!("TLS handshake: {e}")))?;
                let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
                if let Some(leaf) = leaf {
                    strait_model::pem::check_validity(&leaf).map_err(|e| (Event::TcpFailure, e))?;
                }
                if a.kind == CheckType::Https { http(b, ep, tls).await.map(Some) } else { Ok(None) }
            }
        }
    })
    .await;
    match result {
        Err(_) => Some((Event::Timeout, format!("probe timed out after {} s", a.timeout))),
        Ok(Err((event, detail))) => Some((event, detail)),
        Ok(Ok(None)) => Some((Event::Success, "probe succeeded".to_owned())),
        Ok(Ok(Some(status))) => {
            if a.healthy.http_statuses.contains(&status) {
                Some((Event::Success, format!("HTTP {status}")))
            } else if a.unhealthy.http_statuses.contains(&status) {
                Some((Event::HttpFailure, format!("HTTP {status}")))
            } else {
                None
            }
        }
    }
}

/// `GET http_path` over HTTP/1.0; returns the status code.
async fn http<S>(b: &Balanced, ep: &Endpoint, mut s: S) -> Result<u16, (Event, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let a = &b.hc.active;
    let host =
        a.https_sni.as_deref().or(ep.hostname.as_deref()).map_or_else(|| ep.addr.ip().to_string(), str::to_owned);
    let mut req = format!("GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: strait-healthcheck\r\n", a.http_path);
    for (name, values) in &a.headers {
        for v in values.as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
            req.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| (Event::TcpFailure, format!("send: {e}")))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        let n = s.read(&mut chunk).await.map_err(|e| (Event::TcpFailure, format!("receive: {e}")))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let status = line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or((Event::HttpFailure, "no HTTP status line in the response".to_owned()))?;
    Ok(status)
}
