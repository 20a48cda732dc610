//! Strait's plugin kit: what a plugin is written with, and the runtime that
//! runs the phases of the plugins that apply to a session. This is the crate
//! a plugin author depends on; `docs/PLUGINS.md` is the guide.
//!
//! A plugin is a type implementing [`Plugin`]: it parses its `config` into a
//! typed value (with Kong-style field errors, through [`Conf`]) and compiles
//! it, once per configuration, into an [`Instance`] whose phases run for
//! each session: `certificate` (TLS termination, global plugins), `preread`
//! (after routing and TLS termination, before the upstream is chosen; may
//! reject, annotate or pick a target) and `log` (once, when the session
//! ends, whatever ended it). Plugins see a session through [`Session`]: its
//! facts, the configuration it runs with, a per-session context and, at the
//! end, its [`SessionRecord`]. Process-wide counters and the Prometheus
//! exposition are in [`metrics`].
//!
//! A session whose route has no plugins and with no global plugins pays
//! nothing: no [`Session`] is made and no phase runs. The kit knows nothing
//! of sockets or of the compiled snapshot; the proxy (the host) builds the
//! sessions and calls the phases.

mod conf;
mod ctx;
pub mod data;
pub mod metrics;
pub mod record;
mod registry;
mod runtime;
mod serialize;
mod session;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use strait_model::Protocol;

pub use conf::{Conf, parse_ip_or_cidr};
pub use ctx::Ctx;
pub use data::{Data, DataVerdict, Direction, Resume, StreamControl};
pub use metrics::{Metrics, SessionCounts};
pub use record::{CloseReason, Closing, OpenRecord, Proxied, SessionRecord, Try};
pub use registry::{Carry, ConfigureCx, Filters, Plugins, Registry};
pub use runtime::{Chain, ChainError, Chains, PhaseOutcome};
pub use serialize::serialize;
pub use session::{Facts, Session};
pub use stream::{Closed, Stream};

/// The statuses a stream session may end with, as Kong's
/// `kong.response.exit` accepts them in stream mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    BadRequest,
    Forbidden,
    InternalError,
    BadGateway,
    Unavailable,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Ok,
        Status::BadRequest,
        Status::Forbidden,
        Status::InternalError,
        Status::BadGateway,
        Status::Unavailable,
    ];

    #[inline]
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
    /// Wait until another task calls [`Resume::resume`] (a plugin's timer,
    /// say), then go on; a session still held after a minute is refused
    /// with 503.
    Wait(Resume),
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
    /// entities of the configuration (`cx.config()`), which can fail: say
    /// which field ([`ConfigureError::field`]) when one is to blame, so the
    /// Admin API reports it as Kong reports a schema violation.
    fn configure(&self, config: Self::Config, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError>;
}

/// Why a plugin could not be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigureError {
    /// A field of `config` (a path below it, as `ca_certificates[1]`) refers
    /// to something the configuration does not have.
    #[error("config.{field}: {message}")]
    Field { field: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl ConfigureError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ConfigureError {
        ConfigureError::Field { field: field.into(), message: message.into() }
    }
}

impl From<String> for ConfigureError {
    fn from(reason: String) -> Self {
        ConfigureError::Other(reason)
    }
}

impl From<&str> for ConfigureError {
    fn from(reason: &str) -> Self {
        ConfigureError::Other(reason.to_owned())
    }
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

    /// A session a binary upgrade moved into this generation: the previous
    /// one ran its preread (and gave back what it held there when it left),
    /// so take again what the session holds while it is open (a
    /// connection-limit place), without refusing it: it is already open.
    fn adopt(&self, _s: &mut Session) {}

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

    /// Whether this instance has a data phase (the methods below). Sessions
    /// it applies to relay through it, copying rather than splicing; all
    /// others pay nothing for it. Say `true` when you implement any of them.
    fn data_phase(&self) -> bool {
        false
    }

    /// Data phase: the upstream is connected and no byte has flowed yet. May
    /// refuse the session (it closes at once) or hold it.
    fn on_connect(&self, _s: &mut Session) -> Verdict {
        Verdict::Continue
    }

    /// Data phase: bytes from the client, on their way to the upstream.
    fn on_downstream_data(&self, _s: &mut Session, _data: &mut Data<'_>) -> DataVerdict {
        DataVerdict::Continue
    }

    /// Data phase: bytes from the upstream, on their way to the client.
    fn on_upstream_data(&self, _s: &mut Session, _data: &mut Data<'_>) -> DataVerdict {
        DataVerdict::Continue
    }

    /// Data phase: the client will send no more (it closed its side, or the
    /// session is ending).
    fn on_downstream_close(&self, _s: &mut Session) {}

    /// Data phase: the upstream will send no more.
    fn on_upstream_close(&self, _s: &mut Session) {}
}
