//! Plugins: the kit a plugin is written with, and the runtime that runs the
//! phases of the plugins that apply to a session.
//!
//! A plugin is a type implementing [`Plugin`]: it parses its `config` into a
//! typed value (with Kong-style field errors, through [`Conf`]) and compiles
//! it, once per configuration snapshot, into an [`Instance`] whose phases
//! run for each session: `certificate` (TLS termination, global plugins),
//! `preread` (after routing and TLS termination, before the upstream is
//! chosen; may reject, annotate or pick a target) and `log` (once, when the
//! session ends, whatever ended it). `docs/PLUGINS.md` is the guide.
//!
//! A session whose route has no plugins and with no global plugins pays
//! nothing: no [`Session`] is made and no phase runs.

mod conf;
mod ctx;
pub mod example;
mod ip_restriction;
mod limits;
mod logs;
mod mtls;
pub mod prometheus;
mod registry;
mod runtime;
mod serialize;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use strait_model::{Config, Protocol, Route, RouteIdx, Service, ServiceIdx};

pub use conf::Conf;
pub use ctx::Ctx;
pub use registry::{ConfigureCx, Plugins, Registry};
pub(crate) use runtime::{Chain, Chains, PhaseOutcome};
pub use serialize::serialize;

use crate::access_log::SessionRecord;
use crate::snapshot::Snapshot;

/// The statuses a stream session may end with, as Kong's
/// `kong.response.exit` accepts them in stream mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    Forbidden,
    InternalError,
    BadGateway,
    Unavailable,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::InternalError => 500,
            Status::BadGateway => 502,
            Status::Unavailable => 503,
        }
    }

    pub fn from_code(code: u16) -> Option<Status> {
        Some(match code {
            200 => Status::Ok,
            400 => Status::BadRequest,
            403 => Status::Forbidden,
            500 => Status::InternalError,
            502 => Status::BadGateway,
            503 => Status::Unavailable,
            _ => return None,
        })
    }

    /// Kong's message for any other code.
    pub const CHOICES: &'static str = "unacceptable code, only 200, 400, 403, 500, 502 and 503 are accepted";
}

/// What a phase decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the next plugin.
    Continue,
    /// End the session now with `status`. The message is sent to the client
    /// only when the status is below 400 (as Kong); it is always logged.
    Reject { status: Status, message: Option<String> },
    /// Wait this long, then go on (the session holds no buffer meanwhile).
    Delay(Duration),
}

impl Verdict {
    pub fn reject(status: Status, message: impl Into<Option<String>>) -> Verdict {
        Verdict::Reject { status, message: message.into() }
    }
}

/// TLS facts of a session whose TLS Strait terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// IANA name of the cipher suite.
    pub cipher: String,
    /// Kong's `client_verify`: `NONE` or `SUCCESS` (a failed verification
    /// fails the handshake).
    pub client_verify: &'static str,
    /// The client certificate's subject, when one was verified.
    pub client_subject: Option<String>,
}

/// A plugin: a name, a priority, the protocols it serves, and how its
/// configuration becomes an [`Instance`].
pub trait Plugin: Send + Sync + 'static {
    /// The typed configuration [`Plugin::schema`] produces.
    type Config: Send + Sync + 'static;

    /// The name used in `plugins` entities (Kong's when Kong has the plugin).
    fn name(&self) -> &'static str;

    /// Higher runs first (Kong's `PRIORITY`).
    fn priority(&self) -> i32;

    /// The stream protocols it runs on, unless an instance narrows them.
    fn protocols(&self) -> &'static [Protocol] {
        &[Protocol::Tcp, Protocol::Tls, Protocol::TlsPassthrough, Protocol::Udp]
    }

    /// Reads the configuration. Every field read through `conf` is checked
    /// and, when absent, filled with its default; unknown fields are errors.
    /// Returns `None` when `conf` recorded an error. No side effects: this
    /// runs for every check of a configuration.
    fn schema(&self, conf: &mut Conf<'_>) -> Option<Self::Config>;

    /// Compiles a valid configuration for one snapshot. May refer to other
    /// entities of the configuration (`cx.config()`), which can fail.
    fn configure(&self, config: Self::Config, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, String>;
}

/// A configured plugin: its phases, each a no-op unless overridden.
pub trait Instance: Send + Sync + 'static {
    /// TLS termination, before the handshake (global instances only).
    fn certificate(&self, _s: &mut Session) -> Verdict {
        Verdict::Continue
    }

    /// After routing (and TLS termination), before the upstream is chosen.
    fn preread(&self, _s: &mut Session) -> Verdict {
        Verdict::Continue
    }

    /// Once, when the session has ended: [`Session::record`] is set.
    fn log(&self, _s: &mut Session) {}

    /// Requires and verifies client certificates on the route's TLS
    /// handshakes (mtls-auth): a verifier, and what it accepts (see
    /// [`strait_tls::ClientAuth::new`]).
    fn client_auth(&self) -> Option<strait_tls::ClientAuth> {
        None
    }

    /// Asks for [`Instance::progress`] at this interval while the session is
    /// open (periodic log entries for long sessions).
    fn progress_interval(&self) -> Option<Duration> {
        None
    }

    /// Called every [`Instance::progress_interval`] during the relay, with
    /// the record's byte counts up to date.
    fn progress(&self, _s: &mut Session) {}
}

/// One session as plugins see it: its facts, a shared per-session context,
/// the fields plugins add to its log entry, and (in `log`) its record.
#[derive(Debug)]
pub struct Session {
    pub(crate) snap: Arc<Snapshot>,
    pub(crate) client: SocketAddr,
    pub(crate) server: SocketAddr,
    pub(crate) listener: Arc<str>,
    pub(crate) protocol: Protocol,
    pub(crate) sni: Option<String>,
    pub(crate) alpn: Vec<Vec<u8>>,
    pub(crate) tls: Option<TlsInfo>,
    pub(crate) route: Option<RouteIdx>,
    pub(crate) target: Option<SocketAddr>,
    pub(crate) record: Option<SessionRecord>,
    /// How many progress reports each chain entry has made.
    pub(crate) progress_marks: Vec<u64>,
    ctx: Ctx,
    fields: Map<String, Value>,
}

impl Session {
    pub(crate) fn new(snap: Arc<Snapshot>, client: SocketAddr, server: SocketAddr, listener: Arc<str>) -> Session {
        Session {
            snap,
            client,
            server,
            listener,
            protocol: Protocol::Tcp,
            sni: None,
            alpn: Vec::new(),
            tls: None,
            route: None,
            target: None,
            record: None,
            progress_marks: Vec::new(),
            ctx: Ctx::default(),
            fields: Map::new(),
        }
    }

    /// The client: the peer, or the source its PROXY protocol header named.
    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// The address the client connected to (Kong's server address and port).
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The listener, as written in `stream_listen`.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// `tcp`, `tls`, `tls_passthrough` or `udp`: how the session is served.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The server name of the ClientHello (or QUIC Initial), if any.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// ALPN protocols the client offered.
    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.alpn
    }

    /// Set once Strait terminated the session's TLS.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The whole configuration this session runs with.
    pub fn config(&self) -> &Config {
        &self.snap.config
    }

    pub fn route(&self) -> Option<&Route> {
        self.route.map(|r| &self.snap.config.routes[r.0])
    }

    pub fn route_index(&self) -> Option<RouteIdx> {
        self.route
    }

    pub fn service(&self) -> Option<&Service> {
        self.service_index().map(|s| &self.snap.config.services[s.0])
    }

    pub fn service_index(&self) -> Option<ServiceIdx> {
        self.route().and_then(|r| r.service)
    }

    /// Sends the session to this address instead of balancing (preread).
    pub fn set_target(&mut self, addr: SocketAddr) {
        self.target = Some(addr);
    }

    /// The upstream address the session reached (log).
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.record.as_ref().and_then(|r| r.upstream)
    }

    /// Everything known when the session ended; `None` before `log`.
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
}
