//! The open sessions as an Admin API resource: `GET /sessions` (filtered,
//! sorted, paged as Kong's lists), `GET|DELETE /sessions/{id}`, a bulk
//! `DELETE /sessions?<filters>`, the live `GET /sessions/events` stream
//! (Server-Sent Events), and the route tester `GET /router/match`.
//!
//! Every query parameter is parsed before anything is read: an unknown one,
//! a malformed address or CIDR, a negative duration is a 400 naming it.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use ipnet::IpNet;
use serde_json::{Map, Value, json};
use strait_model::Protocol;
use strait_proxy::live::{Event, Filter, Registry, State, View, now_ms};
use strait_proxy::targets::{DrainView, Then};
use strait_proxy::{Probe, RouteTester};
use strait_upstream::SetHealthError;
use tokio::sync::{broadcast, mpsc};

use crate::api::Reply;
use crate::error::ApiError;

/// The filters every sessions endpoint takes.
const FILTERS: [&str; 10] =
    ["route", "service", "upstream", "target", "client", "sni", "protocol", "state", "older_than", "idle_for"];

/// Events queued for one slow reader of the stream before it is dropped.
const READER_QUEUE: usize = 1024;

/// A 400 naming the parameter and why, in Kong's schema-violation shape.
fn bad(param: &str, why: &str) -> ApiError {
    ApiError::schema(Map::from_iter([(param.to_owned(), json!(why))]))
}

/// Refuses parameters outside `allowed` (and the filters).
fn only_known(query: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    match query.iter().find(|(k, _)| !FILTERS.contains(&k.as_str()) && !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(bad(k, "unknown parameter")),
        None => Ok(()),
    }
}

fn seconds(param: &str, v: &str) -> Result<Duration, ApiError> {
    let s: f64 = v.parse().map_err(|_| bad(param, "expected a number of seconds"))?;
    if !s.is_finite() || s < 0.0 {
        return Err(bad(param, "expected a number of seconds, not negative"));
    }
    Duration::try_from_secs_f64(s).map_err(|_| bad(param, "too large"))
}

/// `ip:port` or `host:port` (a target as configured).
fn target(v: &str) -> Result<String, ApiError> {
    if v.parse::<SocketAddr>().is_ok() {
        return Ok(v.to_owned());
    }
    let why = "expected ip:port or host:port";
    let (host, port) = v.rsplit_once(':').ok_or_else(|| bad("target", why))?;
    port.parse::<u16>().map_err(|_| bad("target", why))?;
    let hostname = !host.is_empty()
        && host.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if hostname { Ok(v.to_ascii_lowercase()) } else { Err(bad("target", why)) }
}

/// The filters of a query (other parameters are the caller's to check).
pub(crate) fn filter(query: &[(String, String)]) -> Result<Filter, ApiError> {
    let mut f = Filter::default();
    for (k, v) in query {
        match k.as_str() {
            "route" => f.route = Some(v.clone()),
            "service" => f.service = Some(v.clone()),
            "upstream" => f.upstream = Some(v.clone()),
            "target" => f.target = Some(target(v)?),
            "client" => {
                let net = match v.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => v.parse::<IpNet>().map_err(|_| bad("client", "expected an IP address or a CIDR"))?,
                };
                f.client = Some(net);
            }
            "sni" => f.sni = Some(v.clone()),
            "protocol" => {
                f.protocol = Some(
                    Protocol::parse(v)
                        .filter(|p| p.is_stream())
                        .ok_or_else(|| bad("protocol", "expected one of: tcp, tls, tls_passthrough, udp"))?,
                )
            }
            "state" => {
                f.state =
                    Some(State::parse(v).ok_or_else(|| bad("state", "expected one of: setup, relaying, draining"))?)
            }
            "older_than" => f.older_than = Some(seconds("older_than", v)?),
            "idle_for" => f.idle_for = Some(seconds("idle_for", v)?),
            _ => {}
        }
    }
    Ok(f)
}

/// The sort order: a field, ascending, or descending with a leading `-`.
#[derive(Debug, Clone, Copy)]
struct Sort {
    key: fn(&View) -> u64,
    descending: bool,
}

fn sort(v: Option<&str>) -> Result<Sort, ApiError> {
    let v = v.unwrap_or("started_at");
    let (descending, field) = match v.strip_prefix('-') {
        Some(f) => (true, f),
        None => (false, v),
    };
    let key: fn(&View) -> u64 = match field {
        "started_at" => |v| v.started_at,
        "last_activity_at" => |v| v.last_activity_at,
        "bytes" => |v| v.bytes_from_client + v.bytes_to_client,
        _ => return Err(bad("sort", "expected started_at, last_activity_at or bytes, with - for descending")),
    };
    Ok(Sort { key, descending })
}

/// The matching sessions, now.
fn matching(registry: &Registry, f: &Filter) -> Vec<(View, Arc<strait_proxy::live::Live>)> {
    let now = now_ms();
    registry.all().into_iter().map(|l| (l.view(), l)).filter(|(v, _)| f.matches(v, now)).collect()
}

/// `GET /sessions`.
pub(crate) fn list(registry: &Registry, query: &[(String, String)]) -> Reply {
    only_known(query, &["sort", "size", "offset"])?;
    let f = filter(query)?;
    let q = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let order = sort(q("sort"))?;
    let size = crate::api::page_size(q("size"))?;
    // The offset is where the previous page ended: its last (key, id).
    let after = match q("offset") {
        None => None,
        Some(o) => {
            let parse = || {
                let (k, id) = o.split_once('.')?;
                Some((u64::from_str_radix(k, 16).ok()?, u64::from_str_radix(id, 16).ok()?))
            };
            Some(parse().ok_or_else(|| ApiError::invalid_offset(o))?)
        }
    };
    let place = |v: &View| ((order.key)(v), v.id);
    let mut views: Vec<View> = matching(registry, &f).into_iter().map(|(v, _)| v).collect();
    views.sort_by(|a, b| {
        let o = place(a).cmp(&place(b));
        if order.descending { o.reverse() } else { o }
    });
    let mut rest =
        views.iter().filter(|v| after.is_none_or(|a| if order.descending { place(v) < a } else { place(v) > a }));
    let page: Vec<&View> = rest.by_ref().take(size).collect();
    let more = rest.next().is_some();
    let mut body = json!({ "data": page.iter().map(|v| v.json()).collect::<Vec<_>>(), "next": null });
    if more && let Some(last) = page.last() {
        let (k, id) = place(last);
        let offset = format!("{k:x}.{id:x}");
        let mut next = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query.iter().filter(|(k, _)| k != "offset" && k != "size") {
            next.append_pair(k, v);
        }
        next.append_pair("offset", &offset).append_pair("size", &size.to_string());
        body["offset"] = json!(offset);
        body["next"] = json!(format!("/sessions?{}", next.finish()));
    }
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

fn id(segment: &str) -> Result<u64, ApiError> {
    segment.parse().map_err(|_| ApiError::not_found())
}

/// `GET /sessions/{id}`.
pub(crate) fn get(registry: &Registry, segment: &str) -> Reply {
    let live = registry.get(id(segment)?).ok_or_else(ApiError::not_found)?;
    Ok((StatusCode::OK, axum::Json(live.view().json())).into_response())
}

/// `DELETE /sessions/{id}`: both sides close at once.
pub(crate) fn kill(registry: &Registry, segment: &str) -> Reply {
    let live = registry.get(id(segment)?).ok_or_else(ApiError::not_found)?;
    live.kill();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /sessions?<filters>`: every matching session, or only a count
/// with `dry_run=true`. No filter at all needs `all=true`.
pub(crate) fn kill_matching(registry: &Registry, query: &[(String, String)]) -> Reply {
    only_known(query, &["dry_run", "all"])?;
    let flag = |k: &str| -> Result<bool, ApiError> {
        match query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str()) {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(_) => Err(bad(k, "expected true or false")),
        }
    };
    let (dry_run, all) = (flag("dry_run")?, flag("all")?);
    let f = filter(query)?;
    if f.is_empty() && !all {
        return Err(ApiError::message(
            StatusCode::BAD_REQUEST,
            "a bulk kill needs at least one filter; all=true closes every session",
        ));
    }
    let found = matching(registry, &f);
    let count = if dry_run { found.len() } else { found.iter().filter(|(_, l)| l.kill()).count() };
    Ok((StatusCode::OK, axum::Json(json!({ "count": count, "dry_run": dry_run }))).into_response())
}

/// `GET /sessions/events`: an `open` event for each session once it is
/// routed and a `close` event with its record, as Server-Sent Events. A
/// reader that falls `READER_QUEUE` events behind is dropped; sessions
/// never wait for it.
pub(crate) fn events(registry: &Arc<Registry>, query: &[(String, String)]) -> Reply {
    only_known(query, &[])?;
    let f = filter(query)?;
    let mut watch = registry.watch();
    let (tx, rx) = mpsc::channel::<Bytes>(READER_QUEUE);
    // A comment first, so the client sees the stream open at once.
    let _ = tx.try_send(Bytes::from_static(b": sessions\n\n"));
    tokio::spawn(async move { forward(&mut watch.rx, tx, f).await });
    let body = Body::from_stream(Events(rx));
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response())
}

/// Moves the events `f` matches from the registry's stream into one
/// reader's queue, until the reader is gone or falls behind (its queue is
/// full, or it is behind the registry's backlog): then it is dropped.
async fn forward(rx: &mut broadcast::Receiver<Arc<Event>>, tx: mpsc::Sender<Bytes>, f: Filter) {
    loop {
        let event: Arc<Event> = tokio::select! {
            e = rx.recv() => match e {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
            },
            () = tx.closed() => return,
            // A comment now and then finds readers that went away.
            () = tokio::time::sleep(Duration::from_secs(15)) => {
                if tx.try_send(Bytes::from_static(b": keep-alive\n\n")).is_err() { return; }
                continue;
            }
        };
        if !f.matches(&event.view, now_ms()) {
            continue;
        }
        let line = format!("event: {}\nid: {}\ndata: {}\n\n", event.kind, event.view.id, event.json());
        if tx.try_send(Bytes::from(line)).is_err() {
            // Full (a reader that stopped reading) or gone.
            return;
        }
    }
}

/// The queued events of one reader, as a body stream.
struct Events(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Events {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|b| b.map(Ok))
    }
}

/// `GET /router/match?protocol=&source=&destination=&sni=`.
pub(crate) fn router_match(tester: &RouteTester, query: &[(String, String)]) -> Reply {
    let allowed = ["protocol", "source", "destination", "sni"];
    if let Some((k, _)) = query.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(bad(k, "unknown parameter"));
    }
    let q = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let protocol = q("protocol").ok_or_else(|| bad("protocol", "required"))?;
    let protocol = Protocol::parse(protocol)
        .filter(|p| p.is_stream())
        .ok_or_else(|| bad("protocol", "expected one of: tcp, tls, tls_passthrough, udp"))?;
    let addr = |k: &str| -> Result<SocketAddr, ApiError> {
        q(k).ok_or_else(|| bad(k, "required"))?.parse().map_err(|_| bad(k, "expected ip:port"))
    };
    let (source, destination) = (addr("source")?, addr("destination")?);
    let sni = match (q("sni"), protocol) {
        (None, _) => None,
        (Some(s), Protocol::Tls | Protocol::TlsPassthrough) if !s.is_empty() => Some(s.to_owned()),
        (Some(_), Protocol::Tls | Protocol::TlsPassthrough) => return Err(bad("sni", "empty")),
        (Some(_), _) => return Err(bad("sni", "only for tls and tls_passthrough")),
    };
    let answer = tester.probe(&Probe { protocol, source, destination, sni });
    Ok((StatusCode::OK, axum::Json(answer)).into_response())
}

/// A drain's `timeout` (seconds) and `then` (`close`, the default, or
/// `keep`), from the body or the query.
pub(crate) fn drain_request(
    body: &Map<String, Value>,
    query: &[(String, String)],
) -> Result<(Option<Duration>, Then), ApiError> {
    let mut given: Vec<(String, Value)> = body.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    given.extend(query.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))));
    let (mut timeout, mut then) = (None, Then::Close);
    for (k, v) in &given {
        match (k.as_str(), v) {
            ("timeout", Value::Null) => {}
            ("timeout", Value::Number(n)) => timeout = Some(seconds("timeout", &n.to_string())?),
            ("timeout", Value::String(s)) => timeout = Some(seconds("timeout", s)?),
            ("timeout", _) => return Err(bad("timeout", "expected a number of seconds")),
            ("then", Value::String(s)) => {
                then = Then::parse(s).ok_or_else(|| bad("then", "expected one of: close, keep"))?;
            }
            ("then", Value::Null) => {}
            ("then", _) => return Err(bad("then", "expected one of: close, keep")),
            (other, _) => return Err(bad(other, "unknown field")),
        }
    }
    Ok((timeout, then))
}

/// A drain's state as the Admin API answers it.
pub(crate) fn drain_reply(view: Result<DrainView, SetHealthError>, status: StatusCode) -> Reply {
    let v = view.map_err(|_| ApiError::not_found())?;
    let body = json!({
        "target": v.target,
        "draining": v.draining,
        "sessions": v.sessions,
        "started_at": v.started_at,
        "timeout": v.timeout.map(|t| t.as_secs_f64()),
        "then": v.then.map(Then::as_str),
        "closed_at_timeout": v.closed,
    });
    Ok((status, axum::Json(body)).into_response())
}

/// The `/metrics` lines about open sessions: by protocol and state, and
/// those closed by the admin.
pub fn metrics(registry: &Registry) -> String {
    use std::fmt::Write;
    let protocols = [Protocol::Tcp, Protocol::Tls, Protocol::TlsPassthrough, Protocol::Udp];
    let states = [State::Setup, State::Relaying, State::Draining];
    let mut counts = [[0u64; 3]; 4];
    let mut listeners: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for l in registry.all() {
        *listeners.entry(l.listener().to_string()).or_default() += 1;
        let (protocol, state) = l.protocol_and_state();
        if let (Some(p), Some(s)) =
            (protocols.iter().position(|p| *p == protocol), states.iter().position(|s| *s == state))
        {
            counts[p][s] += 1;
        }
    }
    let mut out = String::new();
    out.push_str("# HELP strait_sessions_open Sessions open now, by protocol and state.\n");
    out.push_str("# TYPE strait_sessions_open gauge\n");
    for (p, row) in protocols.iter().zip(counts) {
        for (s, n) in states.iter().zip(row) {
            let _ = writeln!(out, "strait_sessions_open{{protocol=\"{}\",state=\"{}\"}} {n}", p.as_str(), s.as_str());
        }
    }
    out.push_str("# HELP strait_sessions_closed_by_admin_total Sessions closed through the Admin API.\n");
    out.push_str("# TYPE strait_sessions_closed_by_admin_total counter\n");
    let _ = writeln!(out, "strait_sessions_closed_by_admin_total {}", registry.closed_by_admin());
    out.push_str("# HELP strait_sessions_open_by_listener Sessions open now, by the listener that accepted them.\n");
    out.push_str("# TYPE strait_sessions_open_by_listener gauge\n");
    for (listener, n) in listeners {
        let _ = writeln!(out, "strait_sessions_open_by_listener{{listener=\"{listener}\"}} {n}");
    }
    out.push_str("# HELP strait_sessions_closed_total Sessions ended, by close reason.\n");
    out.push_str("# TYPE strait_sessions_closed_total counter\n");
    for (reason, n) in registry.closes() {
        let _ = writeln!(out, "strait_sessions_closed_total{{reason=\"{}\"}} {n}", reason.as_str());
    }
    let (received, sent) = registry.bytes();
    out.push_str(
        "# HELP strait_session_bytes_total Bytes from clients (received) and to them (sent), open sessions included.\n",
    );
    out.push_str("# TYPE strait_session_bytes_total counter\n");
    let _ = writeln!(out, "strait_session_bytes_total{{direction=\"received\"}} {received}");
    let _ = writeln!(out, "strait_session_bytes_total{{direction=\"sent\"}} {sent}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn field(e: &ApiError) -> String {
        e.body["fields"].as_object().and_then(|m| m.keys().next().cloned()).unwrap_or_default()
    }

    fn event(id: u64) -> Arc<Event> {
        let a: SocketAddr = ([127, 0, 0, 1], 1).into();
        let facts = strait_proxy::live::accepted(a, "l".into(), a, Protocol::Tcp);
        let view = View {
            id,
            state: State::Relaying,
            facts,
            started_at: 0,
            last_activity_at: 0,
            bytes_from_client: 0,
            bytes_to_client: 0,
            datagrams: None,
        };
        Arc::new(Event { kind: "open", view, record: None })
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_is_dropped_and_never_holds_the_sender() {
        let (events, mut rx) = broadcast::channel(16);
        let (tx, mut queue) = mpsc::channel(4);
        let task = tokio::spawn(async move { forward(&mut rx, tx, Filter::default()).await });
        // Nobody reads the queue: the fifth event finds it full.
        for id in 1..=5 {
            events.send(event(id)).expect("a subscriber");
        }
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("dropped in time").expect("task");
        // What was queued is still delivered, then the stream ends.
        for id in 1..=4 {
            let line = queue.recv().await.expect("queued");
            assert!(String::from_utf8_lossy(&line).contains(&format!("id: {id}\n")));
        }
        assert!(queue.recv().await.is_none(), "the stream ends");
        // The sender never waited: with the reader gone it has no subscriber.
        assert!(events.send(event(6)).is_err());
    }

    #[tokio::test]
    async fn a_reader_behind_the_backlog_is_dropped_and_filters_apply() {
        let (events, mut rx) = broadcast::channel(2);
        let (tx, mut queue) = mpsc::channel(64);
        for id in 1..=3 {
            events.send(event(id)).expect("a subscriber");
        }
        // Three events into a backlog of two: it lagged.
        tokio::time::timeout(Duration::from_secs(5), forward(&mut rx, tx, Filter::default())).await.expect("in time");
        assert!(queue.recv().await.is_none());
        let (events, mut rx) = broadcast::channel(8);
        let (tx, mut queue) = mpsc::channel(8);
        let only_udp = Filter { protocol: Some(Protocol::Udp), ..Filter::default() };
        let task = tokio::spawn(async move { forward(&mut rx, tx, only_udp).await });
        events.send(event(1)).expect("a subscriber");
        drop(events);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends with its source").expect("task");
        assert!(queue.recv().await.is_none(), "a tcp event does not pass a udp filter");
    }

    #[test]
    fn bad_parameters_are_named() {
        for (k, v) in [
            ("client", "10.0.0.0/33"),
            ("client", "nope"),
            ("target", "10.0.0.1"),
            ("target", "10.0.0.300:5"),
            ("target", "db:99999"),
            ("older_than", "-1"),
            ("idle_for", "NaN"),
            ("protocol", "http"),
            ("state", "open"),
        ] {
            let e = filter(&q(&[(k, v)])).expect_err(v);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(field(&e), k, "{k}={v}: {}", e.body);
        }
        let e = only_known(&q(&[("colour", "red")]), &[]).expect_err("unknown");
        assert_eq!(field(&e), "colour");
        let f = filter(&q(&[("client", "10.1.2.3"), ("target", "DB.internal:5432"), ("older_than", "1.5")]))
            .expect("valid");
        assert_eq!(f.client, "10.1.2.3/32".parse().ok());
        assert_eq!(f.target.as_deref(), Some("db.internal:5432"));
        assert_eq!(f.older_than, Some(Duration::from_millis(1500)));
        assert!(sort(Some("size")).is_err());
        assert!(sort(Some("-bytes")).is_ok_and(|s| s.descending));
    }
}
