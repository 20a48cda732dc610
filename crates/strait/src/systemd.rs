//! systemd: readiness notifications (`Type=notify`: READY=1, RELOADING=1,
//! MAINPID= after an upgrade, STOPPING=1) and socket activation
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`), both plain environment protocols:
//! without systemd they do nothing.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Result, bail};
use strait_config::{ListenHost, Settings};
use strait_proxy::Inherited;

/// Sends `state` to systemd's notification socket, if there is one.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        // An abstract socket name.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// `RELOADING=1` with the monotonic time systemd asks for with it.
pub(crate) fn reloading() -> String {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000;
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

/// The sockets systemd passed (socket activation), each keyed to the
/// `stream_listen`, `admin_listen` or `status_listen` entry with the
/// address it is bound to (and its type: UDP for `udp` entries). A socket
/// no entry wants is an error: it would be a port that never answers.
/// (`LISTEN_FDNAMES` is only quoted in that error: systemd's names cannot
/// hold the `:` of an address.)
pub(crate) fn listen_fds(settings: &Settings) -> Result<Vec<Inherited>> {
    let pid_ok = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let Some(n) = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).filter(|_| pid_ok) else {
        return Ok(Vec::new());
    };
    if !(0..=1024).contains(&n) {
        bail!("LISTEN_FDS={n}: not a number of sockets this process takes");
    }
    let names: Vec<String> =
        std::env::var("LISTEN_FDNAMES").map(|v| v.split(':').map(str::to_owned).collect()).unwrap_or_default();
    let mut out = Vec::new();
    for i in 0..n {
        let fd = take_fd(3 + i);
        let socket = socket2::Socket::from(fd);
        let local = socket.local_addr().ok().and_then(|a| a.as_socket());
        let udp = socket.r#type().ok() == Some(socket2::Type::DGRAM);
        let name = names.get(i as usize).map(String::as_str).unwrap_or("");
        let Some(key) = key_for(settings, local, udp) else {
            bail!(
                "socket activation: socket {} ({name}, {}) matches no stream_listen, admin_listen, status_listen or admin_gui_listen entry",
                3 + i,
                local.map_or_else(|| "unknown address".to_owned(), |a| a.to_string())
            );
        };
        tracing::info!(key = %key, "listening socket from systemd");
        out.push(Inherited { key, fd: socket.into() });
    }
    Ok(out)
}

/// Takes ownership of descriptor `fd`, which systemd opened for this process.
#[allow(unsafe_code)]
fn take_fd(fd: i32) -> OwnedFd {
    // SAFETY: socket activation hands descriptors 3..3+LISTEN_FDS to the
    // process named by LISTEN_PID (checked above); nothing else in this
    // process owns them, and each is taken exactly once, at start.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The key of the entry a socket serves.
fn key_for(settings: &Settings, local: Option<SocketAddr>, udp: bool) -> Option<String> {
    let local = local?;
    let matches = |host: &ListenHost, port: u16| match host {
        ListenHost::Ip(ip) => SocketAddr::new(*ip, port) == local,
        ListenHost::Name(_) => false,
    };
    for e in &settings.stream_listen {
        if e.udp == udp && matches(&e.host, e.port) {
            return Some(strait_proxy::listen_key(e));
        }
    }
    for (kind, entries) in crate::admin::kinds(settings) {
        for e in entries {
            if !udp && matches(&e.host, e.port) {
                return Some(crate::admin::key(kind, e));
            }
        }
    }
    None
}
