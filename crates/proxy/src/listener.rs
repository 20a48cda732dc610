//! Stream listeners: binding sockets as `stream_listen` says, and the accept
//! loop that hands each connection to its own session task.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use strait_config::{Keepalive, ListenEntry, ListenHost};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::{Shared, session};

/// nginx's default listen backlog on Linux.
const DEFAULT_BACKLOG: i32 = 511;

/// What a session needs to know about the listener that accepted it.
#[derive(Debug)]
pub struct ListenerInfo {
    /// `host:port` as configured, for the access log.
    pub label: Arc<str>,
    /// What matches this listener to a settings entry ([`listen_key`]).
    pub key: String,
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    pub ssl: bool,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    pub udp: bool,
    keepalive: Option<Keepalive>,
}

/// A bound, listening socket, not yet accepting.
#[derive(Debug)]
pub struct BoundListener {
    pub(crate) socket: BoundSocket,
    pub info: ListenerInfo,
    /// The socket came from elsewhere (an earlier generation, systemd).
    pub(crate) inherited: bool,
}

/// A bound socket: a listening TCP socket, or a UDP socket (`udp` entries).
#[derive(Debug)]
pub(crate) enum BoundSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl BoundSocket {
    /// Another descriptor for the same socket.
    pub(crate) fn duplicate(&self) -> io::Result<OwnedFd> {
        match self {
            BoundSocket::Tcp(l) => l.as_fd().try_clone_to_owned(),
            BoundSocket::Udp(s) => s.as_fd().try_clone_to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {entry}: {source}")]
pub struct BindError {
    pub entry: String,
    pub source: io::Error,
}

/// Binds every entry now, so that a busy port fails the start.
pub fn bind_all(entries: &[ListenEntry]) -> Result<Vec<BoundListener>, BindError> {
    entries.iter().map(|e| bind(e, None)).collect()
}

/// A socket an earlier generation listened on, handed over by an upgrade
/// (or by systemd), and what it listened for: the key of its entry.
#[derive(Debug)]
pub struct Inherited {
    pub key: String,
    pub fd: OwnedFd,
}

/// The key matching an entry to an inherited socket: its address as
/// configured, and whether it is UDP.
pub fn listen_key(entry: &ListenEntry) -> String {
    format!("{}{}", entry.addr_label(), if entry.udp { "/udp" } else { "" })
}

/// Binds every entry, taking the socket of an inherited entry instead of
/// binding a new one (so its port never closes). Used sockets are removed
/// from `inherited`; what is left there no entry wants.
pub fn bind_all_inheriting(
    entries: &[ListenEntry],
    inherited: &mut Vec<Inherited>,
) -> Result<Vec<BoundListener>, BindError> {
    entries
        .iter()
        .map(|e| {
            let key = listen_key(e);
            let found = inherited.iter().position(|i| i.key == key).map(|i| inherited.swap_remove(i).fd);
            bind(e, found)
        })
        .collect()
}

fn bind(entry: &ListenEntry, inherited: Option<OwnedFd>) -> Result<BoundListener, BindError> {
    let err = |source: io::Error| BindError { entry: entry.addr_label(), source };
    if let Some(fd) = inherited {
        return adopt(entry, fd).map_err(err);
    }
    let addr = match &entry.host {
        ListenHost::Ip(ip) => SocketAddr::new(*ip, entry.port),
        ListenHost::Name(name) => (name.as_str(), entry.port)
            .to_socket_addrs()
            .map_err(err)?
            .next()
            .ok_or_else(|| err(io::Error::new(io::ErrorKind::NotFound, "host name has no address")))?,
    };
    let (kind, proto) =
        if entry.udp { (Type::DGRAM, socket2::Protocol::UDP) } else { (Type::STREAM, socket2::Protocol::TCP) };
    let socket = Socket::new(Domain::for_address(addr), kind, Some(proto)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if entry.reuseport {
        socket.set_reuse_port(true).map_err(err)?;
    }
    if addr.is_ipv6() {
        // As nginx: IPv6 listeners are IPv6-only unless `ipv6only=off`, so
        // `0.0.0.0:P, [::]:P` both bind and IPv4 clients never appear as
        // IPv4-mapped IPv6 addresses that IPv4 routes would not match.
        socket.set_only_v6(entry.ipv6only.unwrap_or(true)).map_err(err)?;
    }
    // `bind` asks nginx for a separate bind() per address; Strait always binds each entry on its own.
    socket.bind(&addr.into()).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    let (socket, bound) = if entry.udp {
        let socket: std::net::UdpSocket = socket.into();
        let bound = socket.local_addr().map_err(err)?;
        (BoundSocket::Udp(socket), bound)
    } else {
        let backlog = entry.backlog.map_or(DEFAULT_BACKLOG, |b| b.min(i32::MAX as u32) as i32);
        socket.listen(backlog).map_err(err)?;
        let socket: std::net::TcpListener = socket.into();
        let bound = socket.local_addr().map_err(err)?;
        (BoundSocket::Tcp(socket), bound)
    };
    Ok(BoundListener { socket, info: info(entry, bound), inherited: false })
}

/// A listener on an inherited socket, after checking it is the kind the
/// entry asks for.
fn adopt(entry: &ListenEntry, fd: OwnedFd) -> io::Result<BoundListener> {
    let socket = Socket::from(fd);
    let want = if entry.udp { Type::DGRAM } else { Type::STREAM };
    if socket.r#type()? != want {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the inherited socket is not of the entry's type"));
    }
    socket.set_nonblocking(true)?;
    let (socket, bound) = if entry.udp {
        let s: std::net::UdpSocket = socket.into();
        let bound = s.local_addr()?;
        (BoundSocket::Udp(s), bound)
    } else {
        let l: std::net::TcpListener = socket.into();
        let bound = l.local_addr()?;
        (BoundSocket::Tcp(l), bound)
    };
    Ok(BoundListener { socket, info: info(entry, bound), inherited: true })
}

fn info(entry: &ListenEntry, bound: SocketAddr) -> ListenerInfo {
    ListenerInfo {
        label: entry.addr_label().into(),
        key: listen_key(entry),
        addr: bound,
        ssl: entry.ssl,
        proxy_protocol: entry.proxy_protocol,
        udp: entry.udp,
        keepalive: entry.so_keepalive,
    }
}

fn apply_keepalive(stream: &TcpStream, k: Keepalive) -> io::Result<()> {
    let sock = SockRef::from(stream);
    match k {
        Keepalive::Off => sock.set_keepalive(false),
        Keepalive::On => sock.set_keepalive(true),
        Keepalive::Tuned { idle, interval, count } => {
            let mut ka = TcpKeepalive::new();
            if let Some(t) = idle {
                ka = ka.with_time(t);
            }
            if let Some(i) = interval {
                ka = ka.with_interval(i);
            }
            if let Some(c) = count {
                ka = ka.with_retries(c);
            }
            sock.set_tcp_keepalive(&ka)
        }
    }
}

/// Accepts until `stop` turns true, spawning one task per session.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    info: Arc<ListenerInfo>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let wildcard = info.addr.ip().is_unspecified();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|v| *v) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                // With `ipv6only=off`, IPv4 clients arrive IPv4-mapped: route them as IPv4.
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                if let Some(k) = info.keepalive {
                    if let Err(e) = apply_keepalive(&stream, k) {
                        tracing::debug!(error = %e, "cannot set so_keepalive");
                    }
                }
                // The destination address is the listener's, except on a
                // wildcard listener where only the socket knows it.
                let local = if wildcard { stream.local_addr().unwrap_or(info.addr) } else { info.addr };
                let local = SocketAddr::new(local.ip().to_canonical(), local.port());
                let conn = session::Accepted {
                    stream,
                    client: peer,
                    local,
                    listener: info.clone(),
                    shared: shared.clone(),
                    alive: alive.clone(),
                };
                tokio::spawn(session::serve(Box::pin(session::setup(conn))));
            }
            Err(e) => {
                // Usually EMFILE/ENFILE: back off instead of spinning.
                tracing::warn!(listener = %info.label, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    tracing::debug!(listener = %info.label, "listener closed");
}
