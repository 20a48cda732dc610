//! One session as plugins see it. The host (the proxy) makes it from the
//! [`Facts`] it knows once the session is routed, tells it what it learns
//! later through the runtime (TLS, the record), and reads back what plugins
//! decided (a target). A phase can read the facts but never change them.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Map, Value};
use strait_model::{Config, Protocol, Route, RouteIdx, Service, ServiceIdx};

use crate::record::SessionRecord;
use crate::{Ctx, StreamControl, TlsInfo};

/// What the host knows of a session when plugins first see it.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The configuration the session runs with (it keeps it to its end).
    pub config: Arc<Config>,
    /// The client: the peer, or the source its PROXY protocol header named.
    pub client: SocketAddr,
    /// The address the client connected to.
    pub server: SocketAddr,
    /// The listener, as written in `stream_listen`.
    pub listener: Arc<str>,
    /// How the session is served: `tcp`, `tls`, `tls_passthrough` or `udp`.
    pub protocol: Protocol,
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    /// `None` for a session no route matched (only global plugins see it).
    pub route: Option<RouteIdx>,
}

/// One session as plugins see it: its facts, a shared per-session context,
/// the fields plugins add to its log entry, and (in `log`) its record.
#[derive(Debug)]
pub struct Session {
    facts: Facts,
    tls: Option<TlsInfo>,
    target: Option<SocketAddr>,
    record: Option<SessionRecord>,
    /// How many progress reports each chain entry has made.
    pub(crate) progress_marks: Vec<u64>,
    /// Set while the session relays through a data phase.
    stream: Option<StreamControl>,
    /// The upstream address, once connected (data phase).
    connected: Option<SocketAddr>,
    ctx: Ctx,
    fields: Map<String, Value>,
}

impl Session {
    /// A session plugins see from now on (made by the host, or by a
    /// plugin's own tests).
    pub fn new(facts: Facts) -> Session {
        Session {
            facts,
            tls: None,
            target: None,
            record: None,
            progress_marks: Vec::new(),
            stream: None,
            connected: None,
            ctx: Ctx::default(),
            fields: Map::new(),
        }
    }

    /// The client: the peer, or the source its PROXY protocol header named.
    pub fn client(&self) -> SocketAddr {
        self.facts.client
    }

    /// The address the client connected to (Kong's server address and port).
    pub fn server(&self) -> SocketAddr {
        self.facts.server
    }

    /// The listener, as written in `stream_listen`.
    pub fn listener(&self) -> &str {
        &self.facts.listener
    }

    /// `tcp`, `tls`, `tls_passthrough` or `udp`: how the session is served.
    pub fn protocol(&self) -> Protocol {
        self.facts.protocol
    }

    /// The server name of the ClientHello (or QUIC Initial), if any.
    pub fn sni(&self) -> Option<&str> {
        self.facts.sni.as_deref()
    }

    /// ALPN protocols the client offered.
    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.facts.alpn
    }

    /// Set once Strait terminated the session's TLS.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The whole configuration this session runs with.
    pub fn config(&self) -> &Config {
        &self.facts.config
    }

    pub fn route(&self) -> Option<&Route> {
        self.facts.route.and_then(|r| self.facts.config.routes.get(r.0))
    }

    pub fn route_index(&self) -> Option<RouteIdx> {
        self.facts.route
    }

    pub fn service(&self) -> Option<&Service> {
        self.service_index().and_then(|s| self.facts.config.services.get(s.0))
    }

    pub fn service_index(&self) -> Option<ServiceIdx> {
        self.route().and_then(|r| r.service)
    }

    /// Sends the session to this address instead of balancing (preread).
    pub fn set_target(&mut self, addr: SocketAddr) {
        self.target = Some(addr);
    }

    /// The address a plugin chose with [`Session::set_target`], for the host.
    pub fn target(&self) -> Option<SocketAddr> {
        self.target
    }

    /// The upstream address the session reached: in the data phase and in
    /// `log`.
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.connected.or_else(|| self.record.as_ref().and_then(|r| r.upstream))
    }

    /// Everything known when the session ended; `None` before `log` (and,
    /// during progress reports, the record so far).
    pub fn record(&self) -> Option<&SessionRecord> {
        self.record.as_ref()
    }

    /// Per-session values shared by all plugins of the session.
    pub fn ctx(&mut self) -> &mut Ctx {
        &mut self.ctx
    }

    /// Adds a top-level field to the session's JSON log entry (Kong's
    /// `kong.log.set_serialize_value`); a later value replaces an earlier one.
    pub fn add_log_field(&mut self, key: impl Into<String>, value: Value) {
        self.fields.insert(key.into(), value);
    }

    /// The fields plugins added so far.
    pub fn log_fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// For the host: the fields plugins added to a session in the
    /// generation it came from (a binary upgrade moved it).
    pub fn carry_log_fields(&mut self, fields: Map<String, Value>) {
        self.fields = fields;
    }

    /// While the session relays through a data phase: a handle to pass on
    /// held bytes or close the session from another task (a timer).
    ///
    /// The handle is the calling plugin's: taken during one of its
    /// data-phase calls, its `resume` passes on what that plugin holds.
    pub fn stream_control(&self) -> Option<&StreamControl> {
        self.stream.as_ref()
    }

    /// The data-phase stage being called: its handle becomes the one
    /// [`Session::stream_control`] gives.
    pub(crate) fn set_stage(&mut self, stage: usize) {
        if let Some(c) = &mut self.stream
            && c.stage() != stage.min(31)
        {
            *c = c.for_stage(stage);
        }
    }

    pub(crate) fn set_stream_control(&mut self, control: StreamControl, upstream: Option<SocketAddr>) {
        self.stream = Some(control);
        self.connected = upstream;
    }

    /// The host terminated the session's TLS (through
    /// [`Chain::tls_terminated`](crate::Chain::tls_terminated), so that no
    /// phase can claim a verified client certificate).
    pub(crate) fn set_tls(&mut self, tls: TlsInfo) {
        self.tls = Some(tls);
    }

    /// For the runtime: the record the `log` and progress calls see.
    pub(crate) fn set_record(&mut self, record: Option<SessionRecord>) -> Option<SessionRecord> {
        std::mem::replace(&mut self.record, record)
    }
}
