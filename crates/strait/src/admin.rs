//! The Admin API (`admin_listen`), status API (`status_listen`) and web UI
//! (`admin_gui_listen`) servers: bound (or taken over from an earlier generation), served until
//! told to stop, and restarted by a reload on the same sockets where the
//! address did not change, so those ports never close.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use strait_admin::{AdminState, Generation, NodeInfo};
use strait_config::{AdminListen, Settings};
use strait_control::Control;
use strait_proxy::Inherited;

/// The running admin servers.
#[derive(Debug)]
pub(crate) struct Admin {
    stop: tokio::sync::watch::Sender<bool>,
    /// Duplicates of the listening sockets, keyed, for a reload or an upgrade.
    sockets: Vec<Inherited>,
    /// The addresses bound, for the start line.
    pub(crate) addrs: Vec<String>,
}

/// The key of an admin or status entry among inherited sockets.
pub(crate) fn key(kind: &str, entry: &AdminListen) -> String {
    format!("{kind}:{}", entry.addr_label())
}

/// Listening sockets for `settings`' admin and status entries, taken from
/// `inherited` by key where there is one, bound otherwise. Binding happens
/// before anything is served, so a busy port fails a start or a reload
/// before it changes anything.
pub(crate) fn bind(settings: &Settings, inherited: &mut Vec<Inherited>) -> Result<Bound> {
    let mut out = Vec::new();
    for (kind, entries) in kinds(settings) {
        for entry in entries {
            let label = entry.addr_label();
            if kind == "status" && entry.ssl {
                bail!("status_listen: 'ssl' is not supported on {label}; the status API is plain HTTP");
            }
            let k = key(kind, entry);
            let listener = match inherited.iter().position(|i| i.key == k) {
                Some(i) => {
                    let l = std::net::TcpListener::from(inherited.swap_remove(i).fd);
                    l.set_nonblocking(true)?;
                    l
                }
                None => match bind_one(entry) {
                    Ok(l) => l,
                    // The UI's default address taken (by another gateway on
                    // this host, say) is not worth refusing to start over.
                    Err(e) if kind == "gui" && settings.admin_gui_default => {
                        tracing::warn!(addr = %label, error = %e,
                            "the web UI's default address is taken: the UI is off (set admin_gui_listen)");
                        continue;
                    }
                    Err(e) => {
                        let key = if kind == "gui" { "admin_gui" } else { kind };
                        return Err(e).with_context(|| format!("{key}_listen: cannot listen on {label}"));
                    }
                },
            };
            out.push((kind, entry.clone(), k, listener));
        }
    }
    Ok(Bound(out))
}

/// The hosts a browser may name the UI by when it is reached directly:
/// its listeners' own addresses (not wildcards), loopback names, and the
/// Admin API URL's host (the UI is usually on the same machine).
fn gui_hosts(settings: &Settings, api_origin: &str) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(str::to_owned).into();
    for l in &settings.admin_gui_listen {
        let h = l.host.to_string().to_ascii_lowercase();
        if !matches!(h.as_str(), "0.0.0.0" | "[::]" | "*") {
            hosts.push(h);
        }
    }
    if let Some((_, authority)) = api_origin.split_once("://") {
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => h,
            _ => authority,
        };
        hosts.push(host.to_owned());
    }
    hosts
}

/// The admin servers' kinds and their entries; the kind names the socket's key.
pub(crate) fn kinds(settings: &Settings) -> [(&'static str, &Vec<AdminListen>); 3] {
    [("admin", &settings.admin_listen), ("status", &settings.status_listen), ("gui", &settings.admin_gui_listen)]
}

fn bind_one(entry: &AdminListen) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let host = entry.host.to_string();
    let addr = (host.trim_matches(|c| c == '[' || c == ']'), entry.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "host name has no address"))?;
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if entry.reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(entry.backlog.map_or(511, |b| b.min(i32::MAX as u32) as i32))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Sockets bound for the admin servers, not yet served.
#[derive(Debug)]
pub(crate) struct Bound(Vec<(&'static str, AdminListen, String, std::net::TcpListener)>);

/// What the servers need besides their sockets.
pub(crate) struct Serving<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) node_id: &'a str,
    pub(crate) control: Arc<Control>,
    pub(crate) stats: Arc<strait_proxy::Stats>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) generation: Arc<Generation>,
    pub(crate) sessions: Arc<strait_proxy::live::Registry>,
    pub(crate) tester: strait_proxy::RouteTester,
    pub(crate) targets: Arc<strait_proxy::targets::Targets>,
}

impl Bound {
    /// Serves the Admin API and the status API on these sockets.
    pub(crate) fn serve(self, s: Serving<'_>) -> Result<Admin> {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let info = NodeInfo {
            node_id: s.node_id.to_owned(),
            hostname: crate::app::hostname(),
            database: s.settings.database.as_str().to_owned(),
            stream_listen: s.settings.stream_listen.iter().map(|l| l.addr_label()).collect(),
            admin_listen: s.settings.admin_listen.iter().map(|l| l.addr_label()).collect(),
        };
        let state = Arc::new(AdminState {
            control: s.control,
            stats: s.stats,
            token: s.settings.admin_token.clone(),
            info,
            generation: s.generation,
            sessions: s.sessions,
            tester: s.tester,
            targets: s.targets,
            cors: s.settings.admin_gui_api_url.as_ref().map(|api| strait_admin::Cors {
                origins: s.settings.admin_gui_url.iter().map(|u| u.origin.clone()).collect(),
                ui_hosts: gui_hosts(s.settings, &api.origin),
                ui_ports: s.settings.admin_gui_listen.iter().map(|l| l.port).collect(),
            }),
        });
        let gui = strait_admin::gui::GuiOptions {
            api_url: s.settings.admin_gui_api_url.as_ref().map(|u| (u.url.clone(), u.origin.clone())),
            admin_urls: s
                .settings
                .admin_listen
                .iter()
                .map(|l| format!("{}://{}", if l.ssl { "https" } else { "http" }, l.addr_label()))
                .collect(),
            dbless: s.settings.database == strait_config::Database::Off,
            wasm: s.settings.wasm.enabled,
        };
        let mut addrs = Vec::new();
        let mut sockets = Vec::new();
        for (kind, entry, key, listener) in self.0 {
            let fd: OwnedFd = listener.as_fd().try_clone_to_owned()?;
            sockets.push(Inherited { key, fd });
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let addr = listener.local_addr().map_or_else(|_| entry.addr_label(), |a| a.to_string());
            let mut rx = stop_rx.clone();
            let state = state.clone();
            let shutdown = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            if kind == "gui" {
                tracing::info!(addr = %addr, "web UI ready");
                let (state, gui) = (state.clone(), gui.clone());
                match s.tls.clone().filter(|_| entry.ssl) {
                    Some(tls) => {
                        let app = strait_admin::gui::router(state, gui);
                        tokio::spawn(strait_admin::serve_router_tls(listener, tls, app, shutdown));
                    }
                    None => {
                        tokio::spawn(async move {
                            if let Err(e) = strait_admin::gui::serve(listener, state, gui, shutdown).await {
                                tracing::error!(error = %e, "the web UI stopped");
                            }
                        });
                    }
                }
            } else if kind == "status" {
                tracing::info!(addr = %addr, "status API ready (/status, /metrics)");
                tokio::spawn(async move {
                    if let Err(e) = strait_admin::serve_status(listener, state, shutdown).await {
                        tracing::error!(error = %e, "the status API stopped");
                    }
                });
            } else {
                addrs.push(addr);
                match s.tls.clone().filter(|_| entry.ssl) {
                    Some(tls) => {
                        tokio::spawn(strait_admin::serve_tls(listener, tls, state, shutdown));
                    }
                    None => {
                        tokio::spawn(async move {
                            if let Err(e) = strait_admin::serve(listener, state, shutdown).await {
                                tracing::error!(error = %e, "the Admin API stopped");
                            }
                        });
                    }
                }
            }
        }
        Ok(Admin { stop, sockets, addrs })
    }
}

impl Admin {
    /// Duplicates of the listening sockets, for the next servers (a reload)
    /// or the next generation (an upgrade).
    pub(crate) fn sockets(&self) -> std::io::Result<Vec<Inherited>> {
        self.sockets.iter().map(|i| Ok(Inherited { key: i.key.clone(), fd: i.fd.try_clone()? })).collect()
    }

    /// The sockets as they are, to hand over.
    pub(crate) fn borrowed(&self) -> impl Iterator<Item = (&str, std::os::fd::BorrowedFd<'_>)> {
        self.sockets.iter().map(|i| (i.key.as_str(), i.fd.as_fd()))
    }

    /// Stops serving: no new connection is accepted; those open finish
    /// their requests.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }
}
