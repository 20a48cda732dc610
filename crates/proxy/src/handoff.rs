//! Session hand-off: a plain or passthrough session that relays when an
//! upgrade starts stops reading ([`crate::relay::Parked`]) and leaves this
//! generation as a [`Moving`] — its two sockets, the bytes it held, its
//! counts and its record — which the next generation resumes
//! ([`Adopter`]) where this one stopped. Neither peer sees anything: the
//! sockets never close, and no byte is read twice or lost (what was read
//! and not written travels along and is written first).
//!
//! A moving session is not logged here: it is logged once, where it ends,
//! with its whole duration and byte counts and how many upgrades it
//! crossed.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use strait_model::Protocol;
use strait_plugin::{CloseReason, Proxied, SessionRecord, Try};
use strait_wire::proxy_protocol::{Header, Tlvs};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Shared;
use crate::relay::{Parked, RelayEnd, Side, relay_resumed};
use crate::rewind::Rewind;

/// A session leaving this generation.
#[derive(Debug)]
pub struct Moving {
    pub client: OwnedFd,
    pub upstream: OwnedFd,
    pub parked: Parked,
    /// The record so far: duration and byte counts up to the hand-off.
    pub record: SessionRecord,
    /// The service's idle timeout.
    pub idle: Duration,
    /// The key of the listener that accepted it.
    pub listener: String,
    /// Its place among this generation's open sessions, held until it is
    /// handed over or resumed here: a drain waits for it.
    pub(crate) alive: Option<mpsc::Sender<()>>,
}

/// Why a moving session's description was refused.
#[derive(Debug, thiserror::Error)]
#[error("a handed-over session: {0}")]
pub struct MoveError(String);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Moving {
    /// Its description, for the wire; the two sockets go beside it.
    pub fn describe(&self) -> Value {
        let r = &self.record;
        let p = &self.parked;
        let tries: Vec<Value> = r
            .tries
            .iter()
            .map(|t| json!({ "addr": t.addr.to_string(), "started_us": ms(t.started), "took_us": t.took.as_micros() as u64, "error": t.error }))
            .collect();
        let proxied = r.proxied.as_ref().map(|p| {
            json!({
                "by": p.by.to_string(),
                "version": p.header.version,
                "src": p.header.addrs.map(|a| a.0.to_string()),
                "dst": p.header.addrs.map(|a| a.1.to_string()),
                "authority": p.header.tlvs.authority,
                "alpn": p.header.tlvs.alpn.as_deref().map(b64),
            })
        });
        json!({
            "listener": self.listener,
            "listener_label": &*r.listener,
            "client": r.client.to_string(),
            "proxied": proxied,
            "started_us": ms(r.started),
            "duration_us": r.duration.as_micros() as u64,
            "protocol": r.protocol.to_string(),
            "route": r.route.as_deref(),
            "service": r.service.as_deref(),
            "upstream": r.upstream.map(|a| a.to_string()),
            "sni": r.sni,
            "tries": tries,
            "connected_after_us": r.connected_after.map(|d| d.as_micros() as u64),
            "moves": r.moves,
            "idle_ms": self.idle.as_millis() as u64,
            "idle_left_ms": p.idle_left.as_millis() as u64,
            "c2u": b64(&p.c2u),
            "u2c": b64(&p.u2c),
            "c2u_done": p.c2u_done,
            "u2c_done": p.u2c_done,
            "c2u_bytes": p.c2u_bytes,
            "u2c_bytes": p.u2c_bytes,
        })
    }

    /// A session from its description and its two sockets (client, then
    /// upstream). Every field is checked: a bad one refuses the session.
    pub fn from_description(d: &Value, fds: Vec<OwnedFd>) -> Result<Moving, MoveError> {
        let bad = |what: &str| MoveError(format!("{what} is missing or invalid"));
        let [client, upstream]: [OwnedFd; 2] =
            fds.try_into().map_err(|f: Vec<OwnedFd>| MoveError(format!("{} sockets, not 2", f.len())))?;
        let s = |k: &str| d.get(k).and_then(Value::as_str);
        let n = |k: &str| d.get(k).and_then(Value::as_u64).ok_or_else(|| bad(k));
        let b = |k: &str| d.get(k).and_then(Value::as_bool).ok_or_else(|| bad(k));
        let addr = |v: Option<&str>, k: &str| v.and_then(|a| a.parse::<SocketAddr>().ok()).ok_or_else(|| bad(k));
        let bytes =
            |k: &str| base64::engine::general_purpose::STANDARD.decode(s(k).ok_or_else(|| bad(k))?).map_err(|_| bad(k));
        let at = |us: u64| UNIX_EPOCH + Duration::from_micros(us);
        let protocol = s("protocol").and_then(Protocol::parse).ok_or_else(|| bad("protocol"))?;
        let mut record = SessionRecord::new(
            addr(s("client"), "client")?,
            s("listener_label").ok_or_else(|| bad("listener_label"))?.into(),
            protocol,
            CloseReason::ClientClosed,
        );
        record.started = at(n("started_us")?);
        record.duration = Duration::from_micros(n("duration_us")?);
        record.route = s("route").map(Into::into);
        record.service = s("service").map(Into::into);
        record.upstream = s("upstream").map(|a| addr(Some(a), "upstream")).transpose()?;
        record.sni = s("sni").map(str::to_owned);
        record.connected_after = d.get("connected_after_us").and_then(Value::as_u64).map(Duration::from_micros);
        record.moves = u16::try_from(n("moves")?).map_err(|_| bad("moves"))?;
        for t in d.get("tries").and_then(Value::as_array).into_iter().flatten() {
            let g = |k: &str| t.get(k).and_then(Value::as_u64).ok_or_else(|| bad("tries"));
            record.tries.push(Try {
                addr: addr(t.get("addr").and_then(Value::as_str), "tries")?,
                started: at(g("started_us")?),
                took: Duration::from_micros(g("took_us")?),
                error: t.get("error").and_then(Value::as_str).map(str::to_owned),
            });
        }
        if let Some(p) = d.get("proxied").filter(|p| !p.is_null()) {
            let ps = |k: &str| p.get(k).and_then(Value::as_str);
            let addrs = match (ps("src"), ps("dst")) {
                (Some(a), Some(b)) => Some((addr(Some(a), "proxied")?, addr(Some(b), "proxied")?)),
                _ => None,
            };
            let alpn = ps("alpn")
                .map(|a| base64::engine::general_purpose::STANDARD.decode(a).map_err(|_| bad("proxied")))
                .transpose()?;
            let tlvs = Tlvs { alpn, authority: ps("authority").map(str::to_owned), ..Tlvs::default() };
            let version = p.get("version").and_then(Value::as_u64).unwrap_or(2) as u8;
            record.proxied =
                Some(Arc::new(Proxied { by: addr(ps("by"), "proxied")?, header: Header { version, addrs, tlvs } }));
        }
        let parked = Parked {
            c2u: bytes("c2u")?,
            u2c: bytes("u2c")?,
            c2u_done: b("c2u_done")?,
            u2c_done: b("u2c_done")?,
            c2u_bytes: n("c2u_bytes")?,
            u2c_bytes: n("u2c_bytes")?,
            idle_left: Duration::from_millis(n("idle_left_ms")?),
        };
        let idle = Duration::from_millis(n("idle_ms")?);
        let listener = s("listener").ok_or_else(|| bad("listener"))?.to_owned();
        Ok(Moving { client, upstream, parked, record, idle, listener, alive: None })
    }
}

/// A listener of this generation that sessions handed over can join.
#[derive(Debug, Clone)]
pub(crate) struct Joinable {
    pub(crate) key: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) alive: mpsc::WeakSender<()>,
}

/// Resumes sessions an earlier generation hands over, on this one's runtime.
#[derive(Debug, Clone)]
pub struct Adopter {
    pub(crate) listeners: Vec<Joinable>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Adopter {
    /// Resumes `m` under the listener with its key (or, when the new
    /// settings dropped that listener, under the first one, so that it
    /// still drains and is logged). Callable from any thread.
    pub fn adopt(&self, m: Moving) -> Result<(), MoveError> {
        let joined = self
            .listeners
            .iter()
            .find(|l| l.key == m.listener)
            .or_else(|| self.listeners.first())
            .ok_or_else(|| MoveError("this generation has no listener to take it".into()))?;
        let mut m = m;
        // A session that could not leave keeps the place it had here.
        let alive = match m.alive.take() {
            Some(a) => a,
            None => joined.alive.upgrade().ok_or_else(|| MoveError("this generation is stopping".into()))?,
        };
        let shared = joined.shared.clone();
        self.runtime.spawn(resume(m, shared, alive));
        Ok(())
    }
}

/// A handed-over session, relaying again until it ends (or moves on).
async fn resume(m: Moving, shared: Arc<Shared>, alive: mpsc::Sender<()>) {
    let Moving { client, upstream, parked, mut record, idle, listener, alive: _ } = m;
    let t0 = Instant::now();
    let open = |fd: OwnedFd| {
        let s = std::net::TcpStream::from(fd);
        s.set_nonblocking(true)?;
        TcpStream::from_std(s)
    };
    let (client, upstream) = match (open(client), open(upstream)) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "a handed-over session could not be resumed");
            return;
        }
    };
    record.moves = record.moves.saturating_add(1);
    let mut c = Rewind::new(parked.c2u.clone(), client);
    let mut u = Rewind::new(parked.u2c.clone(), upstream);
    let out = relay_resumed(&mut c, &mut u, &parked, idle, &shared.force_close).await;
    let before = record.duration;
    if let RelayEnd::HandOff(next) = out.end {
        // Another upgrade: on to the next generation.
        if let Some(tx) = shared.handoff.get() {
            let (client, c_rest) = c.into_parts();
            let (upstream, u_rest) = u.into_parts();
            if let (Ok(client), Ok(upstream)) = (client.into_std(), upstream.into_std()) {
                let mut next = *next;
                next.c2u.extend(c_rest);
                next.u2c.extend(u_rest);
                record.duration = before + t0.elapsed();
                let m = Moving {
                    client: client.into(),
                    upstream: upstream.into(),
                    parked: next,
                    record,
                    idle,
                    listener,
                    alive: Some(alive),
                };
                let _ = tx.send(m);
            }
        }
        return;
    }
    drop((c, u));
    let _alive = alive;
    let (reason, detail) = match out.end {
        RelayEnd::Closed { first: Side::Client } => (CloseReason::ClientClosed, None),
        RelayEnd::Closed { first: Side::Upstream } => (CloseReason::UpstreamClosed, None),
        RelayEnd::IdleTimeout => (CloseReason::IdleTimeout, None),
        RelayEnd::Error { side: Side::Client, error } => (CloseReason::ClientError, Some(error.to_string())),
        RelayEnd::Error { side: Side::Upstream, error } => (CloseReason::UpstreamError, Some(error.to_string())),
        RelayEnd::Shutdown | RelayEnd::HandOff(_) | RelayEnd::Stopped(_) => (CloseReason::Shutdown, None),
    };
    record.duration = before + t0.elapsed();
    record.bytes_received = out.client_to_upstream;
    record.bytes_sent = out.upstream_to_client;
    record.reason = reason;
    record.detail = detail;
    crate::stages::log(&shared, None, record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_round_trips_and_bad_ones_are_refused() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut record = SessionRecord::new(
            "10.0.0.1:4000".parse().unwrap(),
            "127.0.0.1:9000".into(),
            Protocol::TlsPassthrough,
            CloseReason::ClientClosed,
        );
        record.route = Some("r".into());
        record.upstream = Some("127.0.0.1:6379".parse().unwrap());
        record.sni = Some("a.test".into());
        record.moves = 2;
        record.tries.push(Try {
            addr: "127.0.0.1:6380".parse().unwrap(),
            started: UNIX_EPOCH + Duration::from_secs(5),
            took: Duration::from_micros(7),
            error: Some("refused".into()),
        });
        record.proxied = Some(Arc::new(Proxied {
            by: "127.0.0.2:1".parse().unwrap(),
            header: Header {
                version: 2,
                addrs: Some(("1.2.3.4:5".parse().unwrap(), "5.6.7.8:9".parse().unwrap())),
                tlvs: Tlvs { authority: Some("x.test".into()), ..Tlvs::default() },
            },
        }));
        let parked = Parked {
            c2u: b"held\x00".to_vec(),
            u2c: vec![],
            c2u_done: false,
            u2c_done: true,
            c2u_bytes: 10,
            u2c_bytes: 20,
            idle_left: Duration::from_millis(1500),
        };
        let m = Moving {
            client: a.into(),
            upstream: b.into(),
            parked: parked.clone(),
            record,
            idle: Duration::from_secs(60),
            listener: "127.0.0.1:9000".into(),
            alive: None,
        };
        let d = m.describe();
        let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        let back = Moving::from_description(&d, vec![x.into(), y.into()]).unwrap();
        assert_eq!(back.parked, parked);
        assert_eq!(back.describe(), d, "everything described survives the trip");
        let r = &back.record;
        assert_eq!((r.moves, r.protocol, r.sni.as_deref()), (2, Protocol::TlsPassthrough, Some("a.test")));
        assert_eq!(r.proxied.as_ref().unwrap().header.addrs.unwrap().0, "1.2.3.4:5".parse().unwrap());
        // Missing sockets, a bad field: refused with what is wrong.
        let (x, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Moving::from_description(&d, vec![x.into()]).is_err());
        let mut broken = d.clone();
        broken["c2u"] = json!("not base64!");
        let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = Moving::from_description(&broken, vec![x.into(), y.into()]).unwrap_err();
        assert!(e.to_string().contains("c2u"), "{e}");
    }
}
