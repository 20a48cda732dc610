//! The stages every session passes through before it relays, shared by TCP
//! (`session.rs`) and UDP (`udp.rs`) sessions: route, plugin session,
//! service, preread, and at the end the log phase. Each stage is a method
//! of one [`Setup`] value — the snapshot the session runs with, its record,
//! its plugins — and returns `Result<_, Fail>`: a [`Fail`] is how a session
//! ends before its relay, with a Kong stream status and a close reason.
//!
//! The stages only one kind of session has (PROXY header, classification,
//! TLS, connect; the QUIC server name, the UDP upstream socket) are further
//! `impl Setup` blocks in `session.rs` and `udp.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use strait_model::{Protocol, RouteIdx, ServiceIdx};
use strait_plugin::{Chain, CloseReason, Facts, PhaseOutcome, Session, SessionRecord, Status};
use strait_router::ConnKind;
use strait_wire::ClientHello;

use crate::Shared;
use crate::live::{Live, Registered};
use crate::snapshot::{CompiledRoute, Snapshot};

/// How a session failed before its relay started.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) status: Status,
    pub(crate) reason: CloseReason,
    pub(crate) detail: Option<String>,
}

impl Fail {
    pub(crate) fn new(status: Status, reason: CloseReason, detail: impl Into<Option<String>>) -> Fail {
        Fail { status, reason, detail: detail.into() }
    }
}

/// A plugin refused the session in its preread phase.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) fail: Fail,
    /// What to send the client before closing (Kong sends a plugin's
    /// message only with a status below 400).
    pub(crate) tell_client: Option<String>,
}

/// The plugins running for a session, with the session as they see it.
pub(crate) struct Plugged {
    pub(crate) chain: Arc<Chain>,
    pub(crate) s: Session,
}

/// A session being set up: what every stage reads and adds to.
pub(crate) struct Setup {
    /// One snapshot for the whole setup: later configuration changes do not
    /// touch this session.
    pub(crate) snap: Arc<Snapshot>,
    pub(crate) rec: SessionRecord,
    /// From routing on, when plugins apply. Boxed: a session without
    /// plugins keeps one word for them.
    pub(crate) plugged: Option<Box<Plugged>>,
    /// The address the client connected to (or the one its PROXY header named).
    pub(crate) local: SocketAddr,
    /// The route [`Setup::route`] found.
    pub(crate) route: Option<RouteIdx>,
}

impl Setup {
    /// A session starting now; `reason` is its close reason until a stage
    /// says otherwise.
    #[inline]
    pub(crate) fn new(
        snap: Arc<Snapshot>,
        client: SocketAddr,
        local: SocketAddr,
        listener: Arc<str>,
        protocol: Protocol,
        reason: CloseReason,
    ) -> Setup {
        Setup { snap, rec: SessionRecord::new(client, listener, protocol, reason), plugged: None, local, route: None }
    }

    /// Route: the route for the session's kind, addresses and server name.
    /// `miss` says why there is none when none matches. The session's
    /// protocol follows from the route; plugins see the session from here
    /// on, so its log phase runs them whatever happens next.
    #[inline]
    pub(crate) fn route(&mut self, kind: ConnKind, hello: Option<ClientHello>, miss: &str) -> Result<RouteIdx, Fail> {
        let (sni, alpn) = hello.map_or((None, Vec::new()), |h| (h.sni, h.alpn));
        self.rec.sni = sni;
        let facts = strait_router::Facts { src: self.rec.client, dst: self.local, sni: self.rec.sni.as_deref() };
        let snap = &self.snap;
        let Some(route) = snap.router.find(kind, &facts).and_then(|idx| snap.route(idx)) else {
            snap.metrics.router_miss();
            return Err(Fail::new(Status::InternalError, CloseReason::NoRoute, miss.to_owned()));
        };
        self.route = Some(route.idx);
        self.rec.route = Some(route.label.clone());
        self.rec.protocol = route.protocol_for(kind);
        if let Some(chain) = &route.chain {
            let s = Session::new(Facts {
                config: snap.config.clone(),
                client: self.rec.client,
                server: self.local,
                listener: self.rec.listener.clone(),
                protocol: self.rec.protocol,
                sni: self.rec.sni.clone(),
                alpn,
                route: Some(route.idx),
            });
            self.plugged = Some(Box::new(Plugged { chain: chain.clone(), s }));
        }
        Ok(route.idx)
    }

    /// Tells the sessions registry what the setup knows so far: the
    /// client and server (a PROXY header's), the protocol, the server name,
    /// the route, the service and its upstream, the attempts.
    pub(crate) fn publish(&self, live: &Live) {
        let route = self.chosen_route();
        let service = route.and_then(|r| r.service).and_then(|s| self.snap.service(s));
        live.learn(|f| record_facts(f, &self.rec, self.local, route, service));
    }

    /// The route found by [`Setup::route`].
    pub(crate) fn chosen_route(&self) -> Option<&CompiledRoute> {
        self.route.and_then(|r| self.snap.route(r))
    }

    /// Service: the route's, which must serve this kind of session (a
    /// stream service; `udp` exactly for UDP sessions).
    #[inline]
    pub(crate) fn service(&mut self) -> Result<ServiceIdx, Fail> {
        let Some(si) = self.chosen_route().and_then(|r| r.service) else {
            return Err(Fail::new(
                Status::Unavailable,
                CloseReason::NoService,
                "no Service found with those values".to_owned(),
            ));
        };
        let Some(svc) = self.snap.service(si) else {
            return Err(Fail::new(
                Status::Unavailable,
                CloseReason::NoService,
                "the route's service is gone".to_owned(),
            ));
        };
        self.rec.service = Some(svc.label.clone());
        let udp = self.rec.protocol == Protocol::Udp;
        if !svc.protocol.is_stream() || (svc.protocol == Protocol::Udp) != udp {
            return Err(Fail::new(
                Status::Unavailable,
                CloseReason::NoService,
                format!(
                    "service with protocol '{}' cannot be used with a {} session",
                    svc.protocol,
                    if udp { "UDP" } else { "TCP" }
                ),
            ));
        }
        Ok(si)
    }

    /// The preread phase: after routing (and TLS termination), before the
    /// upstream is chosen. Plugins may refuse the session, delay it, or
    /// choose its target (what the phase gives). `None`: no plugins, so no
    /// phase to run (and no future to make).
    pub(crate) fn preread(&mut self) -> Option<impl Future<Output = Result<Option<SocketAddr>, Refusal>> + '_> {
        let p = self.plugged.as_mut()?;
        let metrics = &self.snap.metrics;
        Some(async move {
            match p.chain.preread(&mut p.s).await {
                PhaseOutcome::Continue => Ok(p.s.target()),
                PhaseOutcome::Reject { status, message, plugin } => {
                    metrics.plugin_rejected();
                    let tell_client = message.clone().filter(|_| status.code() < 400);
                    Err(Refusal { fail: rejected(status, plugin, message), tell_client })
                }
            }
        })
    }

    /// The end of the setup, however it went: the record so far, and the
    /// plugins whose log phase runs when the session ends — the route's, or
    /// the global ones for a session that never reached a route (decided
    /// now, so that the relay keeps nothing for it).
    #[inline]
    pub(crate) fn finish(self) -> (SessionRecord, Option<Box<Plugged>>) {
        let Setup { snap, rec, plugged, local, .. } = self;
        let plugged = plugged.or_else(|| {
            let chain = snap.chains.global()?.clone();
            let s = Session::new(Facts {
                config: snap.config.clone(),
                client: rec.client,
                server: local,
                listener: rec.listener.clone(),
                protocol: rec.protocol,
                sni: None,
                alpn: Vec::new(),
                route: None,
            });
            Some(Box::new(Plugged { chain, s }))
        });
        (rec, plugged)
    }
}

/// What plugins knew of a session a binary upgrade moves, beyond its
/// record: the server it reached, its ALPN list and the log fields they added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Carried {
    pub server: Option<SocketAddr>,
    pub alpn: Vec<Vec<u8>>,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Carried {
    /// What a leaving session's plugins knew (nothing, without plugins).
    pub(crate) fn from(plugged: Option<&Plugged>) -> Carried {
        plugged.map_or_else(Carried::default, |p| Carried {
            server: Some(p.s.server()),
            alpn: p.s.alpn().to_vec(),
            fields: p.s.log_fields().clone(),
        })
    }
}

/// The plugins of a session a binary upgrade moved into this generation,
/// `elapsed` into its life: its route's chain in this generation's
/// snapshot (found by the label its record names), or the global chain when
/// the route is gone. They take back what the session holds
/// ([`Chain::adopt`]) and will see its end in their log phase.
pub(crate) fn replug(
    shared: &Shared,
    rec: &SessionRecord,
    carried: Carried,
    local: SocketAddr,
    elapsed: std::time::Duration,
) -> Option<Box<Plugged>> {
    let snap = shared.snapshot.load();
    let route = rec.route.as_deref().and_then(|l| snap.route_labelled(l));
    let chain = match route {
        Some(r) => r.chain.clone(),
        None => snap.chains.global().cloned(),
    }?;
    let server =
        carried.server.or_else(|| rec.proxied.as_ref().and_then(|p| p.header.addrs.map(|a| a.1))).unwrap_or(local);
    let mut s = Session::new(Facts {
        config: snap.config.clone(),
        client: rec.client,
        server,
        listener: rec.listener.clone(),
        protocol: rec.protocol,
        sni: rec.sni.clone(),
        alpn: carried.alpn,
        route: route.map(|r| r.idx),
    });
    s.carry_log_fields(carried.fields);
    chain.adopt(&mut s, elapsed);
    Some(Box::new(Plugged { chain, s }))
}

/// The registry entry of a session an earlier generation handed over: its
/// id kept (a new one when it had none), what its record says, and the
/// route and service of this generation's snapshot that have its labels.
pub(crate) fn register_moved(shared: &Shared, rec: &SessionRecord, server: SocketAddr, id: u64) -> Registered {
    let mut facts = crate::live::accepted(rec.client, rec.listener.clone(), server, rec.protocol);
    let snap = shared.snapshot.load();
    let route = rec.route.as_deref().and_then(|l| snap.route_labelled(l));
    let service = route.and_then(|r| r.service).and_then(|s| snap.service(s));
    record_facts(&mut facts, rec, server, route, service);
    shared.sessions.register(facts, shared.force_close.clone(), Some((id, rec.started)))
}

/// Writes into `f` what the record, its route and service say.
fn record_facts(
    f: &mut crate::live::Facts,
    rec: &SessionRecord,
    server: SocketAddr,
    route: Option<&CompiledRoute>,
    service: Option<&crate::CompiledService>,
) {
    f.client = rec.client;
    if let Some(p) = &rec.proxied {
        f.more().proxied_by = Some(p.by);
    }
    f.server = server;
    f.protocol = rec.protocol;
    if rec.sni.is_some() && f.sni() != rec.sni.as_deref() {
        f.more().sni.clone_from(&rec.sni);
    }
    // Shared with every session of the route: touched only when it changes.
    fn set<T>(slot: &mut Option<Arc<T>>, new: Option<&Arc<T>>) {
        if slot.as_ref().map(Arc::as_ptr) != new.map(Arc::as_ptr) {
            *slot = new.cloned();
        }
    }
    set(&mut f.route, route.map(|r| &r.named));
    set(&mut f.service, service.map(|s| &s.named));
    set(&mut f.upstream, service.and_then(|s| s.upstream.as_ref()));
    f.address = rec.upstream;
    f.tries = rec.tries.len() as u32;
}

/// A plugin's refusal, as the log tells it.
pub(crate) fn rejected(status: Status, plugin: &str, message: Option<String>) -> Fail {
    let detail = match message {
        Some(m) => format!("{plugin}: {m}"),
        None => plugin.to_owned(),
    };
    Fail::new(status, CloseReason::Rejected, detail)
}

/// The log phase, for every session however it ended: the plugins' `log`
/// phase, then the access log line. Inlined: the record is large, and a call
/// would copy it.
#[inline]
pub(crate) fn log(shared: &Shared, plugged: Option<Box<Plugged>>, rec: SessionRecord, live: &Live) {
    live.leave();
    if rec.status.code() >= 400 {
        tracing::debug!(client = %rec.client, status = rec.status.code(), reason = rec.reason.as_str(), detail = ?rec.detail, "session refused");
    }
    let rec = match plugged {
        Some(mut p) => p.chain.log(&mut p.s, rec),
        None => rec,
    };
    shared.log.log(&rec);
    live.closed(&rec);
    shared.stats.session_ended();
}
