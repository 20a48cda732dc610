//! What is known of a session when it ends: the record the access log
//! writes, `log` plugins read and the serializer turns into Kong's JSON
//! entry. While a session relays it keeps a smaller [`OpenRecord`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strait_model::Protocol;
use strait_wire::proxy_protocol::Header;

use crate::Status;

/// Why a session ended, as written in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    UpstreamClosed,
    IdleTimeout,
    NoRoute,
    NoService,
    ConnectFailed,
    UpstreamTlsFailed,
    TlsHandshakeFailed,
    NotTls,
    BadClientHello,
    PrereadTimeout,
    ClientError,
    UpstreamError,
    Shutdown,
    /// A missing, malformed or untrusted PROXY protocol header.
    BadProxyHeader,
    /// A plugin refused the session.
    Rejected,
    /// A data-phase plugin closed the relaying session.
    PluginClosed,
    /// Data-phase plugins held more than `stream_max_pending` bytes.
    PendingLimit,
    /// A plugin failed while the session relayed (a panic, or its sandbox).
    PluginFailed,
    /// Closed through the Admin API (`DELETE /sessions`, a drain's timeout).
    ClosedByAdmin,
    /// Health checks marked its target down (`on_target_down: close`).
    TargetDown,
    /// Its target was deleted or set to weight 0 (`on_target_removed`).
    TargetRemoved,
}

impl CloseReason {
    /// Every reason, in declaration order (`ALL[r as usize] == r`).
    pub const ALL: [CloseReason; 22] = [
        CloseReason::ClientClosed,
        CloseReason::UpstreamClosed,
        CloseReason::IdleTimeout,
        CloseReason::NoRoute,
        CloseReason::NoService,
        CloseReason::ConnectFailed,
        CloseReason::UpstreamTlsFailed,
        CloseReason::TlsHandshakeFailed,
        CloseReason::NotTls,
        CloseReason::BadClientHello,
        CloseReason::PrereadTimeout,
        CloseReason::ClientError,
        CloseReason::UpstreamError,
        CloseReason::Shutdown,
        CloseReason::BadProxyHeader,
        CloseReason::Rejected,
        CloseReason::PluginClosed,
        CloseReason::PendingLimit,
        CloseReason::PluginFailed,
        CloseReason::ClosedByAdmin,
        CloseReason::TargetDown,
        CloseReason::TargetRemoved,
    ];

    #[inline]
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client closed",
            CloseReason::UpstreamClosed => "upstream closed",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::NoRoute => "no route",
            CloseReason::NoService => "no service",
            CloseReason::ConnectFailed => "connect failed",
            CloseReason::UpstreamTlsFailed => "upstream tls failed",
            CloseReason::TlsHandshakeFailed => "tls handshake failed",
            CloseReason::NotTls => "not tls",
            CloseReason::BadClientHello => "bad client hello",
            CloseReason::PrereadTimeout => "preread timeout",
            CloseReason::ClientError => "client error",
            CloseReason::UpstreamError => "upstream error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::BadProxyHeader => "bad proxy header",
            CloseReason::Rejected => "rejected by plugin",
            CloseReason::PluginClosed => "closed by plugin",
            CloseReason::PendingLimit => "stream_max_pending exceeded",
            CloseReason::PluginFailed => "plugin failed",
            CloseReason::ClosedByAdmin => "closed by admin",
            CloseReason::TargetDown => "target down",
            CloseReason::TargetRemoved => "target removed",
        }
    }
}

// `ALL` ends with the last variant (a new one goes there, and in `ALL`).
const _: () = assert!(CloseReason::TargetRemoved as usize + 1 == CloseReason::ALL.len());

/// One attempt to reach the upstream (Kong's `tries`).
#[derive(Debug, Clone)]
pub struct Try {
    pub addr: SocketAddr,
    /// When the attempt started.
    pub started: SystemTime,
    /// How long the attempt took (connect, and TLS when the service says `tls`).
    pub took: Duration,
    /// Why it failed; `None` for the attempt that connected.
    pub error: Option<String>,
}

/// A PROXY protocol header and the peer that sent it.
#[derive(Debug)]
pub struct Proxied {
    /// The load balancer.
    pub by: SocketAddr,
    /// What its header said, TLVs included.
    pub header: Header,
}

/// Everything known about a session when it closes.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The client: the peer, or the source a PROXY protocol header gave.
    pub client: SocketAddr,
    /// The PROXY protocol header the session started with, and who sent it.
    /// Shared and optional: most sessions have none, and every open session
    /// keeps its record.
    pub proxied: Option<Arc<Proxied>>,
    pub listener: Arc<str>,
    pub started: SystemTime,
    pub duration: Duration,
    /// How the session was served: `tcp`, `tls` (terminated),
    /// `tls_passthrough` or `udp`.
    pub protocol: Protocol,
    pub status: Status,
    /// Labels shared with the snapshot: no allocation per session.
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub sni: Option<String>,
    pub tries: Vec<Try>,
    /// From accept until the upstream was ready (Kong's `latencies.kong`).
    pub connected_after: Option<Duration>,
    /// Bytes sent to the client.
    pub bytes_sent: u64,
    /// Bytes received from the client.
    pub bytes_received: u64,
    /// UDP: datagrams from the client and to it.
    pub datagrams: Option<(u64, u64)>,
    pub reason: CloseReason,
    /// Extra detail for failures (an error message), never secret material.
    pub detail: Option<String>,
    /// How many binary upgrades the session crossed, handed from one
    /// generation to the next.
    pub moves: u16,
}

impl SessionRecord {
    /// A session starting now: status 200 and `reason` until something says otherwise.
    #[inline]
    pub fn new(client: SocketAddr, listener: Arc<str>, protocol: Protocol, reason: CloseReason) -> Self {
        SessionRecord {
            client,
            proxied: None,
            listener,
            started: SystemTime::now(),
            duration: Duration::ZERO,
            protocol,
            status: Status::Ok,
            route: None,
            service: None,
            upstream: None,
            sni: None,
            tries: Vec::new(),
            connected_after: None,
            bytes_sent: 0,
            bytes_received: 0,
            datagrams: None,
            reason,
            detail: None,
            moves: 0,
        }
    }
}

/// What an open TCP session keeps of its [`SessionRecord`] while the relay
/// runs: the fields its setup filled in. The others (duration, byte counts,
/// why it closed, an error) are only known when it ends, and every open
/// session keeps this, so it leaves them out, and keeps its times as
/// nanoseconds, half a `SystemTime` each (see `bench/README.md`, idle memory).
#[derive(Debug, Clone)]
pub struct OpenRecord {
    client: SocketAddr,
    proxied: Option<Arc<Proxied>>,
    listener: Arc<str>,
    /// Nanoseconds since the epoch.
    started: u64,
    protocol: Protocol,
    status: Status,
    route: Option<Arc<str>>,
    service: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    sni: Option<String>,
    tries: Vec<Try>,
    /// Nanoseconds, as `started`; `u64::MAX` for none.
    connected_after: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

/// How an open session ended: the fields an [`OpenRecord`] leaves out.
#[derive(Debug)]
pub struct Closing {
    pub duration: Duration,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub reason: CloseReason,
    pub detail: Option<String>,
}

impl OpenRecord {
    /// Keeps what the setup found. Every field is named, so a field added to
    /// the record must be decided on here.
    pub fn new(rec: SessionRecord) -> Self {
        let SessionRecord {
            client,
            proxied,
            listener,
            started,
            duration: _,
            protocol,
            status,
            route,
            service,
            upstream,
            sni,
            tries,
            connected_after,
            bytes_sent: _,
            bytes_received: _,
            datagrams: _,
            reason: _,
            detail: _,
            moves: _,
        } = rec;
        OpenRecord {
            client,
            proxied,
            listener,
            // Before the epoch (a clock set far back) counts as the epoch.
            started: nanos(started.duration_since(UNIX_EPOCH).unwrap_or_default()),
            protocol,
            status,
            route,
            service,
            upstream,
            sni,
            tries,
            connected_after: connected_after.map_or(u64::MAX, nanos),
        }
    }

    /// The upstream address the session connected to.
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.upstream
    }

    /// The whole record again, once the session has ended.
    pub fn close(self, end: Closing) -> SessionRecord {
        let OpenRecord {
            client,
            proxied,
            listener,
            started,
            protocol,
            status,
            route,
            service,
            upstream,
            sni,
            tries,
            connected_after,
        } = self;
        SessionRecord {
            client,
            proxied,
            listener,
            started: UNIX_EPOCH + Duration::from_nanos(started),
            duration: end.duration,
            protocol,
            status,
            route,
            service,
            upstream,
            sni,
            tries,
            connected_after: (connected_after != u64::MAX).then(|| Duration::from_nanos(connected_after)),
            bytes_sent: end.bytes_sent,
            bytes_received: end.bytes_received,
            datagrams: None,
            reason: end.reason,
            detail: end.detail,
            moves: 0,
        }
    }

    /// The record of the session so far, for a progress report.
    pub fn so_far(&self, end: Closing) -> SessionRecord {
        self.clone().close(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_is_listed_at_its_index() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.as_str());
        }
    }

    #[test]
    fn an_open_record_gives_back_what_the_setup_found() {
        let started = UNIX_EPOCH + Duration::new(1_795_705_472, 123_456_789);
        let client = "127.0.0.1:5000".parse().expect("address");
        let mut r = SessionRecord::new(client, "l".into(), Protocol::Tls, CloseReason::ClientClosed);
        r.started = started;
        r.status = Status::Forbidden;
        r.route = Some("r".into());
        r.service = Some("s".into());
        r.upstream = Some("127.0.0.1:6379".parse().expect("address"));
        r.sni = Some("a.test".into());
        r.tries =
            vec![Try { addr: "127.0.0.1:6379".parse().expect("address"), started, took: Duration::ZERO, error: None }];
        r.connected_after = Some(Duration::from_micros(1234));
        let open = OpenRecord::new(r);
        let end = |reason| Closing {
            duration: Duration::from_secs(3),
            bytes_sent: 7,
            bytes_received: 9,
            reason,
            detail: Some("x".into()),
        };
        let now = open.so_far(end(CloseReason::ClientClosed));
        let done = open.close(end(CloseReason::IdleTimeout));
        for r in [&now, &done] {
            assert_eq!(r.started, started, "to the nanosecond");
            assert_eq!((r.protocol, r.status, r.sni.as_deref()), (Protocol::Tls, Status::Forbidden, Some("a.test")));
            assert_eq!((r.route.as_deref(), r.service.as_deref()), (Some("r"), Some("s")));
            assert_eq!(r.upstream, Some("127.0.0.1:6379".parse().expect("address")));
            assert_eq!((r.tries.len(), r.connected_after), (1, Some(Duration::from_micros(1234))));
            assert_eq!((r.duration, r.bytes_sent, r.bytes_received), (Duration::from_secs(3), 7, 9));
            assert_eq!(r.detail.as_deref(), Some("x"));
        }
        assert_eq!(done.reason, CloseReason::IdleTimeout);
        let none =
            OpenRecord::new(SessionRecord::new(now.client, "l".into(), Protocol::Tcp, CloseReason::ClientClosed));
        assert_eq!(none.close(end(CloseReason::Shutdown)).connected_after, None);
    }
}
