//! The running gateway: started once (or as the next generation of an
//! upgrade), then driven by one loop that owns it and takes every event in
//! turn — a signal (SIGTERM/SIGINT stop, SIGHUP reload, SIGUSR1 reopen the
//! logs, SIGUSR2 upgrade) or a request on the control socket. Owning it in
//! one place means a reload or an upgrade never races another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use strait_admin::Generation;
use strait_config::{Database, Settings};
use strait_control::Control;
use strait_model::{KeyPair, Loaded};
use strait_proxy::{AccessLogger, Inherited, Proxy, SessionOptions, Timeouts};
use strait_store::Store;
use strait_upstream::Upstreams;
use tokio::sync::{mpsc, oneshot};

use crate::admin::{self, Admin};
use crate::app::{self, Kit, Opened, Prepared};
use crate::logging::LevelHandle;
use crate::{ctl, systemd, upgrade};

/// A request the control socket (or a signal) brings to the loop.
pub(crate) enum Event {
    Stop,
    /// SIGHUP, or `strait reload`: the settings file (when given: from now
    /// on) and the requester's `STRAIT_*` environment (the process's own on
    /// SIGHUP).
    Reload {
        conf: Option<PathBuf>,
        env: Option<BTreeMap<String, String>>,
        reply: Option<oneshot::Sender<Value>>,
    },
    /// SIGUSR1: reopen the access log (after a rotation).
    Reopen,
    /// SIGUSR2, or `strait upgrade`.
    Upgrade {
        binary: Option<PathBuf>,
        conf: Option<PathBuf>,
        reply: Option<oneshot::Sender<Value>>,
    },
    /// The next generation connected to take over.
    Takeover {
        wire: ctl::Wire,
        token: String,
    },
    /// How the next generation's start went.
    Started {
        token: String,
        result: Result<upgrade::Ready, String>,
    },
    /// The next generation exited before it was ready.
    Exited {
        token: String,
        why: String,
    },
}

/// Everything a running gateway is.
pub(crate) struct Gateway {
    /// The settings file, re-read by a reload.
    pub(crate) conf: Option<PathBuf>,
    /// The settings in effect.
    pub(crate) settings: Settings,
    pub(crate) kit: Kit,
    pub(crate) control: Arc<Control>,
    pub(crate) proxy: Proxy,
    pub(crate) logger: AccessLogger,
    pub(crate) level: LevelHandle,
    pub(crate) admin: Admin,
    pub(crate) node: String,
    pub(crate) generation: Arc<Generation>,
    /// The binary this process was started from, for an upgrade.
    pub(crate) exe: PathBuf,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// An upgrade under way.
    pub(crate) upgrading: Option<upgrade::Pending>,
    /// Stops the cluster watcher and the control socket.
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
}

/// `strait start`: runs until stopped, or until an upgrade's next
/// generation has taken everything over.
pub fn start(conf: Option<&Path>) -> Result<()> {
    // The next generation of an upgrade first asks the running one for its
    // sockets: whatever fails after this is reported back to it.
    let mut takeover = upgrade::Takeover::from_env()?;
    match run(conf, takeover.as_mut()) {
        Ok(()) => Ok(()),
        Err(e) => {
            if let Some(t) = takeover.as_mut() {
                t.failed(&format!("{e:#}"));
            }
            Err(e)
        }
    }
}

fn run(conf: Option<&Path>, mut takeover: Option<&mut upgrade::Takeover>) -> Result<()> {
    let settings = Settings::load(conf)?;
    let level = crate::logging::init(settings.log_level);
    if settings.stream_listen.is_empty() && settings.admin_listen.is_empty() {
        bail!("stream_listen and admin_listen are both off: there is nothing to serve");
    }
    std::fs::create_dir_all(&settings.prefix)
        .with_context(|| format!("prefix: cannot create {}", settings.prefix.display()))?;
    let exe = std::env::current_exe().context("cannot tell which binary this is")?;
    let kit = app::kit(&settings, true)?;
    let plugins = kit.plugins.clone();
    let Prepared { settings, loaded, default_cert } = app::prepare(settings, &kit, true)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if settings.declarative_config.is_none() && settings.database == Database::Off {
        tracing::warn!("declarative_config is not set: there are no routes until POST /config");
    }
    let mut inherited = match takeover.as_deref_mut() {
        Some(t) => t.take_sockets(),
        None => systemd::listen_fds(&settings)?,
    };
    crate::upgrade::raise_fd_limit();

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("strait-worker");
    if let Some(n) = settings.worker_threads {
        rt.worker_threads(n.get());
    }
    let rt = rt.build().context("cannot start the runtime")?;

    let (logger, writer) = AccessLogger::open(&settings.proxy_stream_access_log)
        .context("proxy_stream_access_log: cannot open the access log")?;
    let listeners = strait_proxy::bind_all_inheriting(&settings.stream_listen, &mut inherited)?;
    let admin_bound = admin::bind(&settings, &mut inherited)?;
    // Sockets no entry wants any more (a listener the new settings dropped).
    drop(inherited);
    let generation = Arc::new(match takeover.as_deref() {
        Some(t) => t.generation(),
        None => Generation { number: 1, started_at: now_ms(), upgrade: None },
    });
    let outcome = rt.block_on(async {
        let opened = app::open_store(&settings).await?;
        let admin_tls = app::admin_tls(&settings, &default_cert)?;
        let upstreams = Arc::new(Upstreams::new(settings.dns.clone()));
        let cache = settings.prefix.join("config_cache.json");
        let from_cache = matches!(opened, Opened::Unreachable(..));
        let (control, snapshot) = match opened {
            Opened::Ready(store) => {
                let tls = app::server_tls(&settings, default_cert);
                let options = app::options(&settings, &kit);
                Control::start(store, loaded.config, tls, options, upstreams, plugins.clone()).await?
            }
            Opened::Unreachable(store, why) => {
                if !settings.db_cache {
                    bail!("{why:#}\n(db_cache is off, so there is no cached configuration to start from)");
                }
                if !cache.exists() {
                    bail!(
                        "{why:#}\n(no cached configuration at {} to start from: this node never reached the database)",
                        cache.display()
                    );
                }
                tracing::warn!("{why:#}");
                let tls = app::server_tls(&settings, default_cert);
                Control::start_cached(store, &cache, tls, app::options(&settings, &kit), upstreams, plugins.clone())?
            }
        };
        let counts = app::summary(&control.current().config);
        let options = SessionOptions {
            adopting: takeover.is_some(),
            generation: generation.number,
            ..session_options(&settings)
        };
        let proxy = Proxy::start(listeners, snapshot, logger.clone(), timeouts(&settings), options)?;
        if let Some(t) = takeover.as_deref() {
            proxy.stats().carry_over(t.counts());
            t.carry_health(control.upstreams());
            // The plugins are configured now: their limiters go on from the old generation's.
            plugins.import_state(t.plugin_state());
        }
        let swapper = proxy.swapper();
        control.set_publisher(move |s| swapper.swap(s));

        let node = app::node_id(&settings.prefix);
        let admin = admin_bound.serve(admin::Serving {
            settings: &settings,
            node_id: &node,
            control: control.clone(),
            stats: proxy.stats(),
            tls: admin_tls,
            generation: generation.clone(),
            sessions: proxy.sessions(),
            tester: proxy.tester(),
            targets: proxy.targets(),
        })?;
        let (stop, _) = tokio::sync::watch::channel(false);
        if control.store().is_some_and(Store::is_shared) {
            if settings.db_cache {
                control.set_cache(cache);
            }
            let node = strait_control::cluster::Node { id: node.clone(), hostname: app::hostname() };
            tokio::spawn(strait_control::cluster::watch(
                control.clone(),
                node,
                settings.db_update_frequency,
                from_cache && settings.auto_migrate,
                stop.subscribe(),
            ));
        }
        let (events, rx) = mpsc::unbounded_channel();
        // The control socket, then (an upgrade) the word that this
        // generation is ready: a `strait reload` after `strait upgrade`
        // returns reaches this process.
        ctl_server(&settings.prefix, takeover.is_some(), events.clone(), stop.subscribe())?;
        let addrs: Vec<String> = proxy.local_addrs().iter().map(ToString::to_string).collect();
        tracing::info!(
            listeners = %addrs.join(", "),
            admin = %admin.addrs.join(", "),
            config = %counts,
            generation = generation.number,
            "strait started"
        );
        let gw = Gateway {
            conf: conf.map(Path::to_owned),
            settings,
            kit,
            control,
            proxy,
            logger,
            level,
            admin,
            node,
            generation,
            exe,
            events,
            upgrading: None,
            stop,
        };
        if let Some(t) = takeover.as_deref_mut() {
            t.ready(&gw, gw.proxy.adopter(), gw.proxy.stats(), gw.kit.plugins.clone())?;
        }
        systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        signals(gw.events.clone())?;
        gw.serve(rx).await
    })?;
    // Dropping the runtime drops any session task still holding a logger, so
    // the writer can then flush and end.
    rt.shutdown_timeout(Duration::from_secs(1));
    writer.finish();
    tracing::info!(forced = outcome.forced, "strait stopped");
    Ok(())
}

/// `strait reload`: asks the running process (found by the settings'
/// `prefix`) to re-read its settings, with this file and this environment.
pub fn reload_command(conf: Option<&Path>) -> Result<()> {
    let settings = Settings::load(conf)?;
    let env: serde_json::Map<String, Value> =
        std::env::vars().filter(|(k, _)| k.starts_with("STRAIT_")).map(|(k, v)| (k, Value::String(v))).collect();
    let conf = conf.map(std::path::absolute).transpose()?;
    let req = json!({ "cmd": "reload", "conf": conf, "env": env });
    let answer = ctl::request(&settings.prefix, req, Duration::from_secs(60))?;
    answered(&answer, |a| {
        let changed: Vec<&str> = a["changed"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if changed.is_empty() {
            "reloaded: nothing changed".to_owned()
        } else {
            format!("reloaded: {}", changed.join(", "))
        }
    })
}

/// `strait upgrade`: asks the running process to start the next
/// generation and hand everything over; waits until it is ready.
pub fn upgrade_command(conf: Option<&Path>, binary: Option<&Path>) -> Result<()> {
    let settings = Settings::load(conf)?;
    let conf = conf.map(std::path::absolute).transpose()?;
    let binary = binary.map(std::path::absolute).transpose()?;
    let req = json!({ "cmd": "upgrade", "conf": conf, "binary": binary });
    let answer = ctl::request(&settings.prefix, req, Duration::from_secs(180))?;
    answered(&answer, |a| format!("upgraded: generation {} (pid {}) serves now", a["generation"], a["pid"]))
}

/// Prints a successful answer, or fails with its errors.
fn answered(answer: &Value, ok: impl Fn(&Value) -> String) -> Result<()> {
    if answer["ok"].as_bool() == Some(true) {
        println!("{}", ok(answer));
        return Ok(());
    }
    let errors: Vec<&str> = answer["errors"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    bail!("{}", if errors.is_empty() { "refused".to_owned() } else { errors.join("\n") })
}

/// The settings the proxy's sessions read.
fn timeouts(s: &Settings) -> Timeouts {
    Timeouts { preread: s.preread_timeout, tls_detect: s.tls_detect_timeout, drain: s.drain_timeout }
}

fn session_options(s: &Settings) -> SessionOptions {
    SessionOptions {
        trusted_ips: s.trusted_ips.clone(),
        udp_max_sessions: s.udp_max_sessions,
        stream_max_pending: s.stream_max_pending,
        adopting: false,
        // Only read at the start, where it is set.
        generation: 1,
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Turns signals into events.
fn signals(events: mpsc::UnboundedSender<Event>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot listen for SIGUSR1")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot listen for SIGUSR2")?;
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = term.recv() => Event::Stop,
                _ = int.recv() => Event::Stop,
                _ = hup.recv() => Event::Reload { conf: None, env: None, reply: None },
                _ = usr1.recv() => Event::Reopen,
                _ = usr2.recv() => Event::Upgrade { binary: None, conf: None, reply: None },
            };
            if events.send(event).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Serves the control socket under `prefix`. A socket left there by a
/// process that is gone is replaced; one a live process answers on is
/// left alone (that process owns the prefix), unless this is the next
/// generation of an upgrade, which takes it over. The socket is bound
/// under a temporary name and renamed into place, so the path always
/// leads to one live process.
fn ctl_server(
    prefix: &Path,
    next_generation: bool,
    events: mpsc::UnboundedSender<Event>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = ctl::socket_path(prefix);
    if !next_generation && let ctl::Found::Live(who) = ctl::probe(&path) {
        tracing::warn!(
            socket = %path.display(),
            pid = %who["pid"],
            "another strait answers on this prefix's control socket: strait reload and strait upgrade reach it, not this process"
        );
        return Ok(());
    }
    let tmp = prefix.join(format!(".strait.sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)
        .with_context(|| format!("cannot create the control socket {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot create the control socket {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|v| *v) => return,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            let events = events.clone();
            tokio::task::spawn_blocking(move || {
                let Ok(stream) = stream.into_std() else { return };
                let _ = stream.set_nonblocking(false);
                ctl_connection(ctl::Wire::new(stream), &events);
            });
        }
    });
    Ok(())
}

/// One control connection: one request, one answer (a takeover goes on
/// in the loop).
fn ctl_connection(mut wire: ctl::Wire, events: &mpsc::UnboundedSender<Event>) {
    let _ = wire.set_timeout(Some(Duration::from_secs(10)));
    match wire.peer_allowed() {
        Ok(true) => {}
        _ => {
            let _ = wire.send(json!({ "ok": false, "errors": ["permission denied: not this process's user"] }), &[]);
            return;
        }
    }
    let Ok((req, _)) = wire.recv() else { return };
    let path = |k: &str| req.get(k).and_then(Value::as_str).map(PathBuf::from);
    let (reply, answer) = oneshot::channel();
    let event = match req.get("cmd").and_then(Value::as_str) {
        Some("status") => {
            let _ = wire.send(json!({ "ok": true, "pid": std::process::id() }), &[]);
            return;
        }
        Some("reload") => {
            let env = req.get("env").and_then(Value::as_object).map(|m| {
                m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect::<BTreeMap<_, _>>()
            });
            Event::Reload { conf: path("conf"), env, reply: Some(reply) }
        }
        Some("upgrade") => Event::Upgrade { binary: path("binary"), conf: path("conf"), reply: Some(reply) },
        Some("takeover") => {
            let token = req.get("token").and_then(Value::as_str).unwrap_or_default().to_owned();
            let _ = wire.set_timeout(None);
            let _ = events.send(Event::Takeover { wire, token });
            return;
        }
        other => {
            let _ = wire.send(json!({ "ok": false, "errors": [format!("unknown command {other:?}")] }), &[]);
            return;
        }
    };
    if events.send(event).is_err() {
        let _ = wire.send(json!({ "ok": false, "errors": ["the gateway is stopping"] }), &[]);
        return;
    }
    // An upgrade waits for the next generation's start.
    let answer = answer.blocking_recv().unwrap_or_else(|_| json!({ "ok": false, "errors": ["no answer"] }));
    let _ = wire.set_timeout(Some(Duration::from_secs(10)));
    let _ = wire.send(answer, &[]);
}

/// How the loop ended.
pub(crate) struct Outcome {
    forced: bool,
    /// Sessions closed at `drain_timeout`.
    closed: u64,
}

impl Gateway {
    /// Takes events until a stop, or until an upgrade's next generation is
    /// ready; then drains.
    async fn serve(mut self, mut rx: mpsc::UnboundedReceiver<Event>) -> Result<Outcome> {
        let handover = loop {
            let Some(event) = rx.recv().await else { break None };
            match event {
                Event::Stop => break None,
                Event::Reload { conf, env, reply } => {
                    systemd::notify(&systemd::reloading());
                    let answer = match self.reload(conf, env).await {
                        Ok(changed) => {
                            tracing::info!(changed = %changed.join(", "), "settings reloaded");
                            json!({ "ok": true, "changed": changed })
                        }
                        Err(errors) => {
                            for e in &errors {
                                tracing::error!(error = %e, "reload refused: nothing changed");
                            }
                            json!({ "ok": false, "errors": errors })
                        }
                    };
                    systemd::notify("READY=1");
                    if let Some(r) = reply {
                        let _ = r.send(answer);
                    }
                }
                Event::Reopen => {
                    let logger = self.logger.clone();
                    let target = self.settings.proxy_stream_access_log.clone();
                    match tokio::task::spawn_blocking(move || logger.reopen(&target)).await {
                        Ok(Ok(())) => tracing::info!("access log reopened"),
                        Ok(Err(e)) => tracing::error!(error = %e, "cannot reopen the access log"),
                        Err(e) => tracing::error!(error = %e, "cannot reopen the access log"),
                    }
                }
                Event::Upgrade { binary, conf, reply } => self.begin_upgrade(binary, conf, reply),
                Event::Takeover { wire, token } => self.takeover(wire, &token),
                Event::Exited { token, why } => self.exited(&token, why),
                Event::Started { token, result } => {
                    if let Some(ready) = self.started(&token, result) {
                        break Some(ready);
                    }
                }
            }
        };
        let _ = self.stop.send(true);
        self.admin.stop();
        match handover {
            None => {
                systemd::notify("STOPPING=1");
                tracing::info!(drain_timeout = ?self.settings.drain_timeout, "shutting down: no new sessions");
                Ok(self.drain(rx).await)
            }
            Some(ready) => Ok(self.hand_over(ready, rx).await),
        }
    }

    /// Stops accepting and lets the open sessions finish for up to
    /// `drain_timeout` (a second SIGTERM cuts it short).
    async fn drain(self, mut rx: mpsc::UnboundedReceiver<Event>) -> Outcome {
        let Gateway { proxy, settings, control, .. } = self;
        drop(control);
        let closer = proxy.closer();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                match e {
                    Event::Stop => {
                        tracing::warn!("second signal: closing every open session now");
                        closer.close_all();
                        return;
                    }
                    Event::Reload { reply: Some(r), .. } | Event::Upgrade { reply: Some(r), .. } => {
                        let _ = r.send(json!({ "ok": false, "errors": ["the gateway is stopping"] }));
                    }
                    _ => {}
                }
            }
        });
        let report = proxy.shutdown(settings.drain_timeout).await;
        Outcome { forced: report.forced, closed: report.closed }
    }

    /// The next generation accepts on every socket now: this one stops
    /// accepting, hands its relaying sessions over, lets the others finish
    /// (up to `drain_timeout`) and exits.
    async fn hand_over(mut self, ready: upgrade::Ready, rx: mpsc::UnboundedReceiver<Event>) -> Outcome {
        tracing::info!(pid = ready.pid, "the next generation is ready: handing over");
        let stats = self.proxy.stats();
        let before = stats.snapshot().handled;
        // Sessions that cannot leave (the next generation is gone) resume here.
        let fallback = self.proxy.adopter().staying();
        let (to, moving) = std::sync::mpsc::channel();
        // Before the listeners stop: a UDP listener that stops with a way
        // out hands its sessions over instead of ending them.
        self.proxy.hand_off(to);
        self.proxy.stop_accepting().await;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The limiters as they are now that this generation admits no one.
        let state = self.kit.plugins.export_state();
        let sender = {
            let done = done.clone();
            tokio::task::spawn_blocking(move || ready.send_sessions(&state, &moving, &fallback, &done))
        };
        let outcome = self.drain(rx).await;
        done.store(true, std::sync::atomic::Ordering::Release);
        if let Ok((ready, moved)) = sender.await {
            let ended = stats.snapshot().handled.saturating_sub(before);
            ready.left(moved, ended.saturating_sub(outcome.closed), outcome.closed);
        }
        outcome
    }

    /// Re-reads the settings (and, DB-less, the declarative file) and
    /// applies them; on any error nothing changes. Gives what changed.
    async fn reload(
        &mut self,
        conf: Option<PathBuf>,
        env: Option<BTreeMap<String, String>>,
    ) -> Result<Vec<String>, Vec<String>> {
        let conf = conf.or_else(|| self.conf.clone());
        let env = env.unwrap_or_else(|| std::env::vars().filter(|(k, _)| k.starts_with("STRAIT_")).collect());
        let new = Settings::load_with_env(conf.as_deref(), &env).map_err(|e| vec![e.to_string()])?;
        let old = &self.settings;
        let fixed = fixed(old, &new);
        if !fixed.is_empty() {
            return Err(fixed
                .into_iter()
                .map(|k| format!("{k} cannot change in place: it needs a restart or `strait upgrade`"))
                .collect());
        }
        let one = |e: anyhow::Error| vec![format!("{e:#}")];
        let Prepared { settings: new, loaded, default_cert } = app::prepare(new, &self.kit, true).map_err(one)?;
        // DB-less: the declarative file is the whole configuration.
        let doc = self.declarative(&new, loaded).await?;
        let admin_tls = app::admin_tls(&new, &default_cert).map_err(one)?;
        if let strait_config::AccessLog::File(p) = &new.proxy_stream_access_log
            && new.proxy_stream_access_log != old.proxy_stream_access_log
        {
            open_check(p).map_err(|e| vec![format!("proxy_stream_access_log: cannot open {}: {e}", p.display())])?;
        }
        // Listeners: entries unchanged keep theirs; the others are bound
        // now (on the socket of a running entry at the same address, so a
        // changed flag never closes the port).
        let kept: Vec<String> =
            new.stream_listen.iter().filter(|e| old.stream_listen.contains(e)).map(strait_proxy::listen_key).collect();
        let wanted: Vec<strait_config::ListenEntry> =
            new.stream_listen.iter().filter(|e| !old.stream_listen.contains(e)).cloned().collect();
        let mut running = self.stream_sockets().map_err(|e| vec![e.to_string()])?;
        let bound = strait_proxy::bind_all_inheriting(&wanted, &mut running).map_err(|e| vec![e.to_string()])?;
        let admin_changed = old.admin_listen != new.admin_listen
            || old.status_listen != new.status_listen
            || old.admin_gui_listen != new.admin_gui_listen
            || old.admin_gui_api_url != new.admin_gui_api_url
            || old.admin_gui_url != new.admin_gui_url
            || old.admin_token != new.admin_token
            || old.admin_ssl_cert != new.admin_ssl_cert
            || (new.admin_listen.iter().chain(&new.admin_gui_listen).any(|l| l.ssl) && old.ssl_cert != new.ssl_cert);
        let admin_bound = if admin_changed {
            let mut running = self.admin.sockets().map_err(|e| vec![e.to_string()])?;
            Some(admin::bind(&new, &mut running).map_err(one)?)
        } else {
            None
        };

        // Everything is valid and bound: apply.
        let mut changed = Vec::new();
        if let Some(doc) = doc {
            self.control
                .apply(|d| strait_control::replace_all::<std::convert::Infallible>(d, doc))
                .await
                .map_err(|e| vec![format!("declarative_config: {e}")])?;
            changed.push("declarative_config".to_owned());
        }
        if cert_changed(&self.control, &default_cert) {
            if let Err(e) = self.control.set_default_cert(default_cert).await {
                return Err(vec![format!("ssl_cert: {e}")]);
            }
            changed.push("ssl_cert".to_owned());
        }
        if old.dns != new.dns {
            self.control.upstreams().set_dns(new.dns.clone());
            changed.push("dns".to_owned());
        }
        self.proxy.retune(timeouts(&new), &session_options(&new));
        if old.log_level != new.log_level {
            self.level.set(new.log_level);
            changed.push("log_level".to_owned());
        }
        if old.proxy_stream_access_log != new.proxy_stream_access_log {
            let logger = self.logger.clone();
            let target = new.proxy_stream_access_log.clone();
            match tokio::task::spawn_blocking(move || logger.reopen(&target)).await {
                Ok(Ok(())) => changed.push("proxy_stream_access_log".to_owned()),
                Ok(Err(e)) => tracing::error!(error = %e, "proxy_stream_access_log: cannot open the new access log"),
                Err(e) => tracing::error!(error = %e, "proxy_stream_access_log: cannot open the new access log"),
            }
        }
        for (k, differs) in [
            ("preread_timeout", old.preread_timeout != new.preread_timeout),
            ("tls_detect_timeout", old.tls_detect_timeout != new.tls_detect_timeout),
            ("trusted_ips", old.trusted_ips != new.trusted_ips),
            ("stream_max_pending", old.stream_max_pending != new.stream_max_pending),
            ("drain_timeout", old.drain_timeout != new.drain_timeout),
        ] {
            if differs {
                changed.push(k.to_owned());
            }
        }
        if old.stream_listen != new.stream_listen {
            self.proxy.retire(|l| !kept.contains(&l.key), new.drain_timeout);
            self.proxy.add(bound).map_err(|e| vec![format!("stream_listen: {e}")])?;
            changed.push("stream_listen".to_owned());
        }
        if let Some(bound) = admin_bound {
            let next = bound
                .serve(admin::Serving {
                    settings: &new,
                    node_id: &self.node,
                    control: self.control.clone(),
                    stats: self.proxy.stats(),
                    tls: admin_tls,
                    generation: self.generation.clone(),
                    sessions: self.proxy.sessions(),
                    tester: self.proxy.tester(),
                    targets: self.proxy.targets(),
                })
                .map_err(one)?;
            std::mem::replace(&mut self.admin, next).stop();
            changed.push("admin_listen".to_owned());
        }
        if let Some(c) = conf {
            self.conf = Some(c);
        }
        self.settings = new;
        Ok(changed)
    }

    /// DB-less: the document of the declarative file, validated against the
    /// running configuration; `None` when it is what is served already (or
    /// when a database holds the configuration).
    async fn declarative(&self, new: &Settings, loaded: Loaded) -> Result<Option<Value>, Vec<String>> {
        if new.database != Database::Off {
            return Ok(None);
        }
        let doc = strait_model::export::to_declarative(&loaded.config);
        if strait_model::export::to_declarative(&self.control.current().config) == doc {
            return Ok(None);
        }
        let check = doc.clone();
        self.control
            .check(|d| strait_control::replace_all::<std::convert::Infallible>(d, check))
            .await
            .map_err(|e| vec![format!("declarative_config: {e}")])?;
        Ok(Some(doc))
    }

    /// Duplicates of the stream listeners' sockets, keyed.
    fn stream_sockets(&self) -> std::io::Result<Vec<Inherited>> {
        self.proxy
            .sockets()
            .map(|(info, fd)| Ok(Inherited { key: info.key.clone(), fd: fd.try_clone_to_owned()? }))
            .collect()
    }
}

/// The settings a reload cannot change, where they differ.
fn fixed(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut same = |k: &'static str, equal: bool| {
        if !equal {
            out.push(k);
        }
    };
    same("prefix", old.prefix == new.prefix);
    same("database", old.database == new.database);
    same("pg_*", old.pg == new.pg);
    same("auto_migrate", old.auto_migrate == new.auto_migrate);
    same("db_update_frequency", old.db_update_frequency == new.db_update_frequency);
    same("db_cache", old.db_cache == new.db_cache);
    same("plugins", old.plugins == new.plugins);
    same("worker_threads", old.worker_threads == new.worker_threads);
    same("udp_max_sessions", old.udp_max_sessions == new.udp_max_sessions);
    same("ssl_session_tickets", old.ssl_session_tickets == new.ssl_session_tickets);
    same("ssl_session_cache_size", old.ssl_session_cache == new.ssl_session_cache);
    same("wasm", old.wasm == new.wasm);
    out
}

/// Whether `cert` differs from the default certificate served: another
/// `ssl_cert`, or the same files renewed in place.
fn cert_changed(control: &Control, cert: &KeyPair) -> bool {
    control.default_cert().cert_pem != cert.cert_pem
}

/// Whether `path` can be opened for appending (created if missing).
fn open_check(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path).map(drop)
}
