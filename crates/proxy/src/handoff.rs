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
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::Shared;
use crate::relay::{Parked, RelayEnd, Report, Side, relay_resumed};
use crate::rewind::Rewind;
pub use crate::stages::Carried;
use crate::stages::{self, Plugged};

/// What leaves this generation during an upgrade, in the order it goes.
#[derive(Debug)]
pub enum Handed {
    /// A TCP session (plain or passthrough), with its two sockets.
    Session(Moving),
    /// A UDP session, with its connected upstream socket.
    Flow(Flow),
    /// Every flow of the UDP listener with this key has been handed over:
    /// the next generation may start reading that listener's socket.
    FlowsDone(String),
}

/// A TCP session leaving this generation.
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
    /// What its plugins knew beyond the record.
    pub carried: Carried,
    /// Its place among this generation's open sessions, held until it is
    /// handed over or resumed here: a drain waits for it.
    pub(crate) alive: Option<mpsc::Sender<()>>,
    /// Its id in the sessions registry, kept across generations (0: none).
    pub id: u64,
}

/// A UDP session leaving this generation: its client is an address on the
/// listener's socket (which the next generation has already), its upstream
/// a connected socket of its own.
#[derive(Debug)]
pub struct Flow {
    pub upstream: OwnedFd,
    /// The record so far (duration up to the hand-off).
    pub record: SessionRecord,
    pub listener: String,
    /// The service's `read_timeout`, and what was left of it.
    pub idle: Duration,
    pub idle_left: Duration,
    /// Datagrams and bytes so far, from the client and to it.
    pub from_client: (u64, u64),
    pub to_client: (u64, u64),
    pub carried: Carried,
    pub(crate) alive: Option<mpsc::Sender<()>>,
    /// Its id in the sessions registry (0: none).
    pub id: u64,
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

/// The record and what plugins knew, for the wire.
fn describe_record(r: &SessionRecord, c: &Carried) -> serde_json::Map<String, Value> {
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
    let d = json!({
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
        "server": c.server.map(|a| a.to_string()),
        "alpn": c.alpn.iter().map(|a| b64(a)).collect::<Vec<_>>(),
        "fields": c.fields,
    });
    match d {
        Value::Object(m) => m,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

/// Reads a description's fields; every one is checked.
struct Fields<'a>(&'a Value);

impl Fields<'_> {
    fn bad(what: &str) -> MoveError {
        MoveError(format!("{what} is missing or invalid"))
    }
    fn s(&self, k: &str) -> Option<&str> {
        self.0.get(k).and_then(Value::as_str)
    }
    fn n(&self, k: &str) -> Result<u64, MoveError> {
        self.0.get(k).and_then(Value::as_u64).ok_or_else(|| Self::bad(k))
    }
    fn b(&self, k: &str) -> Result<bool, MoveError> {
        self.0.get(k).and_then(Value::as_bool).ok_or_else(|| Self::bad(k))
    }
    fn bytes(&self, k: &str) -> Result<Vec<u8>, MoveError> {
        let v = self.s(k).ok_or_else(|| Self::bad(k))?;
        base64::engine::general_purpose::STANDARD.decode(v).map_err(|_| Self::bad(k))
    }
}

fn addr(v: Option<&str>, k: &str) -> Result<SocketAddr, MoveError> {
    v.and_then(|a| a.parse::<SocketAddr>().ok()).ok_or_else(|| Fields::bad(k))
}

fn record_from(d: &Value) -> Result<(SessionRecord, Carried), MoveError> {
    let f = Fields(d);
    let bad = Fields::bad;
    let at = |us: u64| UNIX_EPOCH + Duration::from_micros(us);
    let protocol = f.s("protocol").and_then(Protocol::parse).ok_or_else(|| bad("protocol"))?;
    let mut record = SessionRecord::new(
        addr(f.s("client"), "client")?,
        f.s("listener_label").ok_or_else(|| bad("listener_label"))?.into(),
        protocol,
        CloseReason::ClientClosed,
    );
    record.started = at(f.n("started_us")?);
    record.duration = Duration::from_micros(f.n("duration_us")?);
    record.route = f.s("route").map(Into::into);
    record.service = f.s("service").map(Into::into);
    record.upstream = f.s("upstream").map(|a| addr(Some(a), "upstream")).transpose()?;
    record.sni = f.s("sni").map(str::to_owned);
    record.connected_after = d.get("connected_after_us").and_then(Value::as_u64).map(Duration::from_micros);
    record.moves = u16::try_from(f.n("moves")?).map_err(|_| bad("moves"))?;
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
    let server = f.s("server").map(|a| addr(Some(a), "server")).transpose()?;
    let mut alpn = Vec::new();
    for a in d.get("alpn").and_then(Value::as_array).into_iter().flatten() {
        let a = a.as_str().ok_or_else(|| bad("alpn"))?;
        alpn.push(base64::engine::general_purpose::STANDARD.decode(a).map_err(|_| bad("alpn"))?);
    }
    let fields = match d.get("fields") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad("fields")),
    };
    Ok((record, Carried { server, alpn, fields }))
}

impl Moving {
    /// Its description, for the wire; the two sockets go beside it.
    pub fn describe(&self) -> Value {
        let p = &self.parked;
        let mut d = describe_record(&self.record, &self.carried);
        let own = json!({
            "listener": self.listener,
            "idle_ms": self.idle.as_millis() as u64,
            "idle_left_ms": p.idle_left.as_millis() as u64,
            "c2u": b64(&p.c2u),
            "u2c": b64(&p.u2c),
            "c2u_done": p.c2u_done,
            "u2c_done": p.u2c_done,
            "c2u_bytes": p.c2u_bytes,
            "u2c_bytes": p.u2c_bytes,
            "session_id": self.id,
        });
        if let Value::Object(own) = own {
            d.extend(own);
        }
        Value::Object(d)
    }

    /// A session from its description and its two sockets (client, then
    /// upstream). Every field is checked: a bad one refuses the session.
    pub fn from_description(d: &Value, fds: Vec<OwnedFd>) -> Result<Moving, MoveError> {
        let [client, upstream]: [OwnedFd; 2] =
            fds.try_into().map_err(|f: Vec<OwnedFd>| MoveError(format!("{} sockets, not 2", f.len())))?;
        let (record, carried) = record_from(d)?;
        let f = Fields(d);
        let parked = Parked {
            c2u: f.bytes("c2u")?,
            u2c: f.bytes("u2c")?,
            c2u_done: f.b("c2u_done")?,
            u2c_done: f.b("u2c_done")?,
            c2u_bytes: f.n("c2u_bytes")?,
            u2c_bytes: f.n("u2c_bytes")?,
            idle_left: Duration::from_millis(f.n("idle_left_ms")?),
        };
        let idle = Duration::from_millis(f.n("idle_ms")?);
        let listener = f.s("listener").ok_or_else(|| Fields::bad("listener"))?.to_owned();
        // An earlier generation without session ids sends none: a new one is given.
        let id = d.get("session_id").and_then(Value::as_u64).unwrap_or(0);
        Ok(Moving { client, upstream, parked, record, idle, listener, carried, alive: None, id })
    }
}

impl Flow {
    /// Its description, for the wire; the upstream socket goes beside it.
    pub fn describe(&self) -> Value {
        let mut d = describe_record(&self.record, &self.carried);
        let own = json!({
            "listener": self.listener,
            "idle_ms": self.idle.as_millis() as u64,
            "idle_left_ms": self.idle_left.as_millis() as u64,
            "from_client": [self.from_client.0, self.from_client.1],
            "to_client": [self.to_client.0, self.to_client.1],
            "session_id": self.id,
        });
        if let Value::Object(own) = own {
            d.extend(own);
        }
        Value::Object(d)
    }

    /// A flow from its description and its upstream socket.
    pub fn from_description(d: &Value, fds: Vec<OwnedFd>) -> Result<Flow, MoveError> {
        let [upstream]: [OwnedFd; 1] =
            fds.try_into().map_err(|f: Vec<OwnedFd>| MoveError(format!("{} sockets, not 1", f.len())))?;
        let (record, carried) = record_from(d)?;
        let f = Fields(d);
        let pair = |k: &str| -> Result<(u64, u64), MoveError> {
            match d.get(k).and_then(Value::as_array).map(Vec::as_slice) {
                Some([a, b]) => {
                    Ok((a.as_u64().ok_or_else(|| Fields::bad(k))?, b.as_u64().ok_or_else(|| Fields::bad(k))?))
                }
                _ => Err(Fields::bad(k)),
            }
        };
        Ok(Flow {
            upstream,
            record,
            listener: f.s("listener").ok_or_else(|| Fields::bad("listener"))?.to_owned(),
            idle: Duration::from_millis(f.n("idle_ms")?),
            idle_left: Duration::from_millis(f.n("idle_left_ms")?),
            from_client: pair("from_client")?,
            to_client: pair("to_client")?,
            carried,
            alive: None,
            id: d.get("session_id").and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

/// A listener of this generation that sessions handed over can join.
#[derive(Debug, Clone)]
pub(crate) struct Joinable {
    pub(crate) key: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) alive: mpsc::WeakSender<()>,
    /// UDP: where flows go (the listener's task takes them into its table),
    /// and the gate its task waits on before it reads its socket.
    pub(crate) flows: Option<mpsc::UnboundedSender<Flow>>,
    pub(crate) gate: Option<Arc<watch::Sender<bool>>>,
}

/// Resumes sessions an earlier generation hands over, on this one's runtime.
#[derive(Debug, Clone)]
pub struct Adopter {
    pub(crate) listeners: Vec<Joinable>,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Sessions resumed through it stay in this generation (they could not
    /// leave it) instead of parking again for the upgrade under way.
    pub(crate) stay: bool,
}

impl Adopter {
    /// The adopter for sessions that could not leave: they go on here.
    pub fn staying(mut self) -> Adopter {
        self.stay = true;
        self
    }

    /// Resumes `m` under the listener with its key (or, when the new
    /// settings dropped that listener, under the first one, so that it
    /// still drains and is logged). Callable from any thread.
    pub fn adopt(&self, m: Moving) -> Result<(), MoveError> {
        self.prepare(m).map(Adoption::start).map_err(|(_, e)| e)
    }

    /// Everything [`Adopter::adopt`] checks, without starting the session
    /// yet: the caller may first tell the previous generation it took it.
    /// A refused session is given back.
    pub fn prepare(&self, m: Moving) -> Result<Adoption, (Box<Moving>, MoveError)> {
        let Some(joined) = self
            .listeners
            .iter()
            .find(|l| l.key == m.listener && l.flows.is_none())
            .or_else(|| self.listeners.iter().find(|l| l.flows.is_none()))
        else {
            return Err((Box::new(m), MoveError("this generation has no TCP listener to take it".into())));
        };
        let mut m = m;
        // A session that could not leave keeps the place it had here.
        let alive = match m.alive.take() {
            Some(a) => a,
            None => match joined.alive.upgrade() {
                Some(a) => a,
                None => return Err((Box::new(m), MoveError("this generation is stopping".into()))),
            },
        };
        Ok(Adoption { m, shared: joined.shared.clone(), alive, runtime: self.runtime.clone(), stay: self.stay })
    }

    /// Takes `f` into the table of the UDP listener with its key.
    pub fn adopt_flow(&self, f: Flow) -> Result<(), MoveError> {
        let joined = self
            .listeners
            .iter()
            .find(|l| l.key == f.listener && l.flows.is_some())
            .ok_or_else(|| MoveError(format!("this generation has no UDP listener {}", f.listener)))?;
        let tx = joined.flows.as_ref().ok_or_else(|| MoveError("not a UDP listener".into()))?;
        tx.send(f).map_err(|_| MoveError("the UDP listener is stopping".into()))
    }

    /// Every flow of the UDP listener `key` is here: it may read its socket.
    pub fn flows_done(&self, key: &str) {
        for l in self.listeners.iter().filter(|l| l.key == key) {
            if let Some(g) = &l.gate {
                let _ = g.send(true);
            }
        }
    }

    /// No more flows will come (the previous generation is gone): every UDP
    /// listener reads its socket.
    pub fn all_flows_done(&self) {
        for g in self.listeners.iter().filter_map(|l| l.gate.as_ref()) {
            let _ = g.send(true);
        }
    }
}

/// A session [`Adopter::prepare`] accepted, to be started.
#[derive(Debug)]
pub struct Adoption {
    m: Moving,
    shared: Arc<Shared>,
    alive: mpsc::Sender<()>,
    runtime: tokio::runtime::Handle,
    stay: bool,
}

impl Adoption {
    /// The session relays again, on this generation's runtime.
    pub fn start(self) {
        self.runtime.spawn(resume(self.m, self.shared, self.alive, self.stay));
    }
}

/// A handed-over session, relaying again until it ends (or moves on).
async fn resume(m: Moving, shared: Arc<Shared>, alive: mpsc::Sender<()>, stay: bool) {
    let Moving { client, upstream, parked, mut record, idle, listener, carried, alive: _, id } = m;
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
    if !stay {
        record.moves = record.moves.saturating_add(1);
    }
    let before = record.duration;
    let local = client.local_addr().unwrap_or(record.client);
    // Its plugins in this generation: they take their places again and see its end.
    let server = carried.server.unwrap_or(local);
    let live = stages::register_moved(&shared, &record, server, id);
    live.progress(parked.c2u_bytes, parked.u2c_bytes, Instant::now());
    live.relaying();
    let mut plugged = stages::replug(&shared, &record, carried, local, before);
    let mut c = Rewind::new(parked.c2u.clone(), client);
    let mut u = Rewind::new(parked.u2c.clone(), upstream);
    let out = {
        let report = progress(&mut plugged, &record, before, t0);
        relay_resumed(&mut c, &mut u, &parked, idle, &live, report, stay).await
    };
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
                    carried: Carried::from(plugged.as_deref()),
                    record,
                    idle,
                    listener,
                    alive: Some(alive),
                    id: live.id(),
                };
                let _ = tx.send(Handed::Session(m));
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
        RelayEnd::Killed => (live.kill_reason(), None),
        RelayEnd::Error { side: Side::Client, error } => (CloseReason::ClientError, Some(error.to_string())),
        RelayEnd::Error { side: Side::Upstream, error } => (CloseReason::UpstreamError, Some(error.to_string())),
        RelayEnd::Shutdown | RelayEnd::HandOff(_) | RelayEnd::Stopped(_) => (CloseReason::Shutdown, None),
    };
    record.duration = before + t0.elapsed();
    record.bytes_received = out.client_to_upstream;
    record.bytes_sent = out.upstream_to_client;
    record.reason = reason;
    record.detail = detail;
    stages::log(&shared, plugged, record, &live);
}

/// Progress reports for a moved session's log plugins, from where the
/// previous generation left them (`before` into the session's life).
pub(crate) fn progress<'a>(
    plugged: &'a mut Option<Box<Plugged>>,
    record: &'a SessionRecord,
    before: Duration,
    t0: Instant,
) -> Option<Report<'a>> {
    let every = plugged.as_ref().and_then(|p| p.chain.progress_every())?;
    let call = Box::new(move |up: u64, down: u64| {
        if let Some(p) = plugged.as_mut() {
            let mut now = record.clone();
            now.duration = before + t0.elapsed();
            now.bytes_received = up;
            now.bytes_sent = down;
            p.chain.progress(&mut p.s, now, before + t0.elapsed());
        }
    });
    Some(Report { every, call })
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
            carried: Carried {
                server: Some("127.0.0.1:9000".parse().unwrap()),
                alpn: vec![b"h2".to_vec()],
                fields: [("tag".to_owned(), json!({ "a": 1 }))].into_iter().collect(),
            },
            alive: None,
            id: 7,
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
        assert_eq!(back.carried, m.carried, "what plugins knew survives the trip");
    }

    #[test]
    fn a_flow_round_trips_and_bad_ones_are_refused() {
        let (a, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut record = SessionRecord::new(
            "10.0.0.1:4000".parse().unwrap(),
            "127.0.0.1:9001".into(),
            Protocol::Udp,
            CloseReason::IdleTimeout,
        );
        record.upstream = Some("127.0.0.1:53".parse().unwrap());
        let f = Flow {
            upstream: a.into(),
            record,
            listener: "udp/127.0.0.1:9001".into(),
            idle: Duration::from_secs(10),
            idle_left: Duration::from_millis(9_500),
            from_client: (3, 300),
            to_client: (2, 200),
            carried: Carried::default(),
            alive: None,
            id: 8,
        };
        let d = f.describe();
        let (x, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let back = Flow::from_description(&d, vec![x.into()]).unwrap();
        assert_eq!(back.describe(), d);
        assert_eq!((back.from_client, back.to_client), ((3, 300), (2, 200)));
        let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Flow::from_description(&d, vec![x.into(), y.into()]).is_err(), "one socket, not two");
        let mut broken = d.clone();
        broken["to_client"] = json!([1]);
        let (x, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = Flow::from_description(&broken, vec![x.into()]).unwrap_err();
        assert!(e.to_string().contains("to_client"), "{e}");
    }
}
