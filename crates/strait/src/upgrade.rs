//! Binary upgrade: the running generation starts the next one (the binary
//! at its own path, or another), which connects back over the control
//! socket and receives the listening sockets (the same sockets: no port
//! closes, nothing queued on them is lost) and the counters `/status` and
//! `/metrics` report. It starts completely and says it is ready; only then
//! does the old generation stop accepting, hand its relaying sessions over
//! and drain the rest. If the next generation fails before it is ready,
//! the old one never stopped serving.
//!
//! The conversation, after the next generation's `takeover` request:
//! old → new `sockets` (with the descriptors); new → old `ready` or
//! `failed`; old → new the sessions it hands over, then `left` with what
//! stayed behind, at its exit.

use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use strait_admin::{Generation, UpgradeCounts};
use strait_plugin::SessionCounts;
use strait_proxy::{Adopter, Flow, Handed, Inherited, Moving, Stats};
use tokio::sync::oneshot;

use crate::ctl::{self, Wire};
use crate::gateway::{Event, Gateway, now_ms};

/// How long the next generation may take to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);

const ENV_SOCKET: &str = "STRAIT_UPGRADE_SOCKET";
const ENV_TOKEN: &str = "STRAIT_UPGRADE_TOKEN";

/// An upgrade under way, in the old generation.
pub(crate) struct Pending {
    token: String,
    pid: u32,
    reply: Option<oneshot::Sender<Value>>,
    /// It connected for the sockets: its reason for failing comes through
    /// that connection, which its exit does not overtake.
    connected: bool,
    /// How it exited, when that came before its connection's last word.
    exited: Option<String>,
}

/// The next generation, ready: the connection its sessions go through.
pub(crate) struct Ready {
    pub(crate) pid: u32,
    wire: Wire,
    /// Descriptors the next generation can take sessions into.
    fd_room: u64,
}

impl Gateway {
    /// Starts the next generation, unless one is starting already.
    pub(crate) fn begin_upgrade(
        &mut self,
        binary: Option<PathBuf>,
        conf: Option<PathBuf>,
        reply: Option<oneshot::Sender<Value>>,
    ) {
        let refuse = |reply: Option<oneshot::Sender<Value>>, why: String| {
            tracing::error!(error = %why, "upgrade refused");
            if let Some(r) = reply {
                let _ = r.send(json!({ "ok": false, "errors": [why] }));
            }
        };
        if self.upgrading.is_some() {
            return refuse(reply, "an upgrade is already in progress".to_owned());
        }
        let binary = binary.unwrap_or_else(|| self.exe.clone());
        let token = uuid::Uuid::new_v4().to_string();
        let socket = match std::path::absolute(ctl::socket_path(&self.settings.prefix)) {
            Ok(p) => p,
            Err(e) => return refuse(reply, format!("the control socket's path: {e}")),
        };
        let mut cmd = Command::new(&binary);
        cmd.arg("start");
        if let Some(c) = conf.or_else(|| self.conf.clone()) {
            cmd.arg("-c").arg(c);
        }
        cmd.env(ENV_SOCKET, socket)
            .env(ENV_TOKEN, &token)
            // The sockets come over the control socket, not from systemd.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .stdin(std::process::Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return refuse(reply, format!("cannot start {}: {e}", binary.display())),
        };
        let pid = child.id();
        tracing::info!(binary = %binary.display(), pid, "upgrade: the next generation is starting");
        // Its death before it is ready fails the upgrade at once; its
        // silence, after START_TIMEOUT.
        let events = self.events.clone();
        let t = token.clone();
        std::thread::spawn(move || {
            let why = match child.wait() {
                Ok(status) => format!("the new generation exited before it was ready ({status})"),
                Err(e) => format!("the new generation could not be watched: {e}"),
            };
            let _ = events.send(Event::Exited { token: t, why });
        });
        let events = self.events.clone();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(START_TIMEOUT).await;
            let why = format!("the new generation was not ready within {} s", START_TIMEOUT.as_secs());
            let _ = events.send(Event::Started { token: t, result: Err(why) });
        });
        self.upgrading = Some(Pending { token, pid, reply, connected: false, exited: None });
    }

    /// The next generation asks for the sockets.
    pub(crate) fn takeover(&mut self, mut wire: Wire, token: &str) {
        let Some(p) = self.upgrading.as_ref().filter(|p| p.token == token) else {
            let _ = wire.send(json!({ "failed": "no upgrade is waiting for this process" }), &[]);
            return;
        };
        match wire.peer() {
            Ok((pid, _)) if pid == p.pid => {}
            _ => {
                let _ = wire.send(json!({ "failed": "only the process the upgrade started may take over" }), &[]);
                return;
            }
        }
        // A next generation that stops reading cannot hold this loop up for long.
        let _ = wire.set_timeout(Some(Duration::from_secs(10)));
        let mut keys = Vec::new();
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        for (info, fd) in self.proxy.sockets() {
            keys.push(info.key.clone());
            fds.push(fd);
        }
        for (key, fd) in self.admin.borrowed() {
            keys.push(key.to_owned());
            fds.push(fd);
        }
        let counts = self.proxy.stats().snapshot();
        // The addresses health checks (or an operator) took out of service.
        let mut down = Vec::new();
        for u in self.control.upstreams().all_health() {
            for t in &u.targets {
                for a in t.addresses.iter().filter(|a| a.health == "UNHEALTHY") {
                    down.push(
                        json!({ "upstream": u.id.to_string(), "target": t.target, "address": a.addr.to_string() }),
                    );
                }
            }
        }
        let msg = json!({
            "sockets": keys,
            "generation": self.generation.number,
            "accepted": counts.accepted,
            "handled": counts.handled,
            "unhealthy": down,
            "plugins": self.kit.plugins.export_state(),
        });
        let sent = if fds.is_empty() {
            let mut m = msg;
            m["last"] = json!(true);
            wire.send(m, &[])
        } else {
            fds.chunks(ctl::MAX_FDS).enumerate().try_for_each(|(i, chunk)| {
                let mut m = if i == 0 { msg.clone() } else { json!({ "more": true }) };
                m["last"] = json!((i + 1) * ctl::MAX_FDS >= fds.len());
                wire.send(m, chunk)
            })
        };
        if let Err(e) = sent {
            let token = token.to_owned();
            let _ =
                self.events.send(Event::Started { token, result: Err(format!("cannot hand the sockets over: {e}")) });
            return;
        }
        let events = self.events.clone();
        let token = token.to_owned();
        let pid = p.pid;
        if let Some(p) = self.upgrading.as_mut() {
            p.connected = true;
        }
        tokio::task::spawn_blocking(move || {
            let _ = wire.set_timeout(Some(START_TIMEOUT));
            let result = match wire.recv() {
                Ok((m, _)) if m.get("ready").and_then(Value::as_bool) == Some(true) => {
                    let fd_room = m.get("fd_room").and_then(Value::as_u64).unwrap_or(u64::MAX);
                    Ok(Ready { pid, wire, fd_room })
                }
                Ok((m, _)) => Err(m.get("failed").and_then(Value::as_str).unwrap_or("no reason given").to_owned()),
                Err(e) => Err(format!("the new generation did not start: {e}")),
            };
            let _ = events.send(Event::Started { token, result });
        });
    }

    /// The next generation exited before it was ready. Once it connected,
    /// the connection's reader reports (with the reason it sent, then the
    /// exit); before, the exit is the report.
    pub(crate) fn exited(&mut self, token: &str, why: String) {
        let Some(p) = self.upgrading.as_mut().filter(|p| p.token == token) else { return };
        if p.connected {
            p.exited = Some(why);
            return;
        }
        let _ = self.started(token, Err(why));
    }

    /// How the next generation's start went; `Some` when it is ready.
    pub(crate) fn started(&mut self, token: &str, result: Result<Ready, String>) -> Option<Ready> {
        // Reports of an upgrade that already ended (its timer, its exit) are stale.
        if self.upgrading.as_ref().is_none_or(|p| p.token != token) {
            return None;
        }
        let mut p = self.upgrading.take()?;
        match result {
            Ok(ready) => {
                let number = self.generation.number + 1;
                if let Some(r) = p.reply.take() {
                    let _ = r.send(json!({ "ok": true, "pid": ready.pid, "generation": number }));
                }
                Some(ready)
            }
            Err(why) => {
                let why = match p.exited.take() {
                    Some(exit) => format!("{why} ({exit})"),
                    None => why,
                };
                tracing::error!(error = %why, "upgrade failed: this generation keeps serving");
                // A next generation that is still there is not wanted.
                if let Some(pid) = rustix::process::Pid::from_raw(p.pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                if let Some(r) = p.reply.take() {
                    let _ = r.send(json!({ "ok": false, "errors": [why] }));
                }
                None
            }
        }
    }
}

/// Sessions sent and not yet acknowledged, at most: the next generation
/// answers each in order, and this many may be on their way.
const WINDOW: usize = 64;

/// Descriptors a generation keeps free for itself (new sessions, files,
/// the store) when it takes sessions over.
const FD_RESERVE: u64 = 256;

impl Ready {
    /// Sends every session the proxy hands over, until `done` (the drain
    /// is over: no session is left to move). Each is acknowledged by the
    /// next generation, which starts it only once it said so; one it
    /// refuses, or one not acknowledged when it stops answering (it died),
    /// resumes here through `fallback`, so none is lost or duplicated. So
    /// does each beyond the descriptors the next generation has room for.
    /// Gives the connection back, and how many moved.
    pub(crate) fn send_sessions(
        mut self,
        plugin_state: &Value,
        moving: &std::sync::mpsc::Receiver<Handed>,
        fallback: &Adopter,
        done: &AtomicBool,
    ) -> (Ready, u64) {
        use std::os::fd::AsFd;
        use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
        let mut moved = 0;
        let mut seq = 0u64;
        let mut in_flight: VecDeque<(u64, Handed)> = VecDeque::new();
        let mut room = self.fd_room;
        let mut short = 0u64;
        // A next generation that stops answering is given up on.
        let mut broken = self.wire.set_timeout(Some(Duration::from_secs(30))).is_err();
        // First the limiters, final now that this generation admits no one.
        if !broken && let Err(e) = self.wire.send(json!({ "plugins": plugin_state }), &[]) {
            tracing::error!(error = %e, "the next generation stopped taking sessions: they stay here");
            broken = true;
        }
        loop {
            let h = match moving.try_recv() {
                Ok(h) => h,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    // Nothing waiting: settle what is in flight, so that the
                    // places those sessions hold in this drain are let go.
                    while !in_flight.is_empty() && !broken {
                        broken = !self.acknowledged(&mut in_flight, fallback, &mut moved);
                    }
                    if broken {
                        self.give_up(&mut in_flight, fallback, &mut moved);
                    }
                    match moving.recv_timeout(Duration::from_millis(50)) {
                        Ok(h) => h,
                        Err(RecvTimeoutError::Timeout) if !done.load(Ordering::Acquire) => continue,
                        Err(_) => match moving.try_recv() {
                            Ok(h) => h,
                            Err(_) => break,
                        },
                    }
                }
            };
            let needs = match &h {
                Handed::Session(_) => 2,
                Handed::Flow(_) => 1,
                Handed::FlowsDone(_) => 0,
            };
            if !broken && needs > room {
                short += 1;
                resume_here(fallback, h);
                continue;
            }
            if broken {
                resume_here(fallback, h);
                continue;
            }
            seq += 1;
            let sent = match &h {
                Handed::Session(m) => self
                    .wire
                    .send(json!({ "session": m.describe(), "seq": seq }), &[m.client.as_fd(), m.upstream.as_fd()]),
                Handed::Flow(f) => self.wire.send(json!({ "flow": f.describe(), "seq": seq }), &[f.upstream.as_fd()]),
                Handed::FlowsDone(key) => self.wire.send(json!({ "flows_done": key }), &[]),
            };
            if let Err(e) = sent {
                tracing::error!(error = %e, "the next generation stopped taking sessions: the rest stay here");
                broken = true;
                resume_here(fallback, h);
                self.give_up(&mut in_flight, fallback, &mut moved);
                continue;
            }
            room -= needs;
            if needs > 0 {
                in_flight.push_back((seq, h));
            }
            while in_flight.len() >= WINDOW && !broken {
                broken = !self.acknowledged(&mut in_flight, fallback, &mut moved);
            }
            if broken {
                self.give_up(&mut in_flight, fallback, &mut moved);
            }
        }
        while !in_flight.is_empty() && !broken {
            broken = !self.acknowledged(&mut in_flight, fallback, &mut moved);
        }
        if broken {
            self.give_up(&mut in_flight, fallback, &mut moved);
        }
        if short > 0 {
            tracing::warn!(
                sessions = short,
                "the next generation has no descriptors left for these: they stay here until they end"
            );
        }
        (self, moved)
    }

    /// The next generation stopped answering: it may still answer for those
    /// it received, so no more frames, then its answers until it closes
    /// (briefly); the sessions left unanswered go on here at once.
    fn give_up(&mut self, in_flight: &mut VecDeque<(u64, Handed)>, fallback: &Adopter, moved: &mut u64) {
        if in_flight.is_empty() {
            return;
        }
        let _ = self.wire.shutdown_write();
        let _ = self.wire.set_timeout(Some(Duration::from_secs(5)));
        while !in_flight.is_empty() && self.acknowledged(in_flight, fallback, moved) {}
        for (_, h) in in_flight.drain(..) {
            resume_here(fallback, h);
        }
    }

    /// Reads the next generation's answer for the oldest session in flight:
    /// taken, or refused (it resumes here). `false` when no answer came.
    fn acknowledged(&mut self, in_flight: &mut VecDeque<(u64, Handed)>, fallback: &Adopter, moved: &mut u64) -> bool {
        let Some((seq, _)) = in_flight.front() else { return true };
        let seq = *seq;
        let answer = match self.wire.recv() {
            Ok((m, _)) => m,
            Err(e) => {
                tracing::error!(error = %e, "the next generation stopped answering: the sessions it did not take stay here");
                return false;
            }
        };
        let Some((_, h)) = in_flight.pop_front() else { return true };
        if answer.get("took").and_then(Value::as_u64) == Some(seq) {
            *moved += 1;
        } else if answer.get("refused").and_then(Value::as_u64) == Some(seq) {
            let why = answer.get("why").and_then(Value::as_str).unwrap_or("no reason given");
            tracing::warn!(reason = why, "the next generation refused a session: it stays here");
            resume_here(fallback, h);
        } else {
            tracing::error!(%answer, "the next generation answered out of turn: the sessions in flight stay here");
            in_flight.push_front((seq, h));
            return false;
        }
        true
    }

    /// The old generation's last word: how many sessions moved, how many
    /// ended with it (`drained`) and how many it closed at `drain_timeout`.
    pub(crate) fn left(mut self, moved: u64, drained: u64, closed: u64) {
        tracing::info!(moved, drained, closed, "handed over: this generation exits");
        let _ = self.wire.send(json!({ "left": { "moved": moved, "drained": drained, "closed": closed } }), &[]);
    }
}

/// A session that could not move: it goes on here (a UDP one, whose
/// listener has stopped here, ends).
fn resume_here(fallback: &Adopter, h: Handed) {
    let failed = match h {
        Handed::Session(m) => fallback.adopt(m).err(),
        Handed::Flow(f) => fallback.adopt_flow(f).err(),
        Handed::FlowsDone(_) => None,
    };
    if let Some(e) = failed {
        tracing::warn!(error = %e, "a session that could not move could not go on here either");
    }
}

/// The next generation's side of the conversation.
pub(crate) struct Takeover {
    wire: Wire,
    sockets: Vec<Inherited>,
    generation: u64,
    counts: SessionCounts,
    /// Addresses the old generation held out of service.
    unhealthy: Vec<Value>,
    /// The plugins' carried state (limiters) there.
    plugins: Value,
}

impl Takeover {
    /// When this process was started by an upgrade: connects to the old
    /// generation and takes its sockets.
    pub(crate) fn from_env() -> Result<Option<Takeover>> {
        let (Some(socket), Some(token)) = (std::env::var_os(ENV_SOCKET), std::env::var(ENV_TOKEN).ok()) else {
            return Ok(None);
        };
        let mut wire = Wire::connect(std::path::Path::new(&socket))
            .with_context(|| format!("upgrade: cannot reach the running generation at {}", socket.display()))?;
        wire.set_timeout(Some(Duration::from_secs(30)))?;
        wire.send(json!({ "cmd": "takeover", "token": token }), &[])?;
        let mut sockets = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut first: Option<Value> = None;
        loop {
            let (m, got) = wire.recv().context("upgrade: the running generation did not hand its sockets over")?;
            if let Some(why) = m.get("failed").and_then(Value::as_str) {
                bail!("upgrade refused by the running generation: {why}");
            }
            fds.extend(got);
            let last = m.get("last").and_then(Value::as_bool).unwrap_or(true);
            if first.is_none() {
                keys = m
                    .get("sockets")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                first = Some(m);
            }
            if last {
                break;
            }
        }
        let first = first.unwrap_or_default();
        if keys.len() != fds.len() {
            bail!("upgrade: {} sockets named, {} received", keys.len(), fds.len());
        }
        for (key, fd) in keys.into_iter().zip(fds) {
            sockets.push(Inherited { key, fd });
        }
        let n = |k: &str| first.get(k).and_then(Value::as_u64).unwrap_or(0);
        let counts = SessionCounts { accepted: n("accepted"), handled: n("handled"), active: 0 };
        let unhealthy = first.get("unhealthy").and_then(Value::as_array).cloned().unwrap_or_default();
        let plugins = first.get("plugins").cloned().unwrap_or(Value::Null);
        Ok(Some(Takeover { wire, sockets, generation: n("generation") + 1, counts, unhealthy, plugins }))
    }

    /// The sockets handed over (taken once).
    pub(crate) fn take_sockets(&mut self) -> Vec<Inherited> {
        std::mem::take(&mut self.sockets)
    }

    pub(crate) fn generation(&self) -> Generation {
        Generation { number: self.generation, started_at: now_ms(), upgrade: Some(UpgradeCounts::default()) }
    }

    /// The plugins' carried state in the old generation.
    pub(crate) fn plugin_state(&self) -> &Value {
        &self.plugins
    }

    /// The old generation's session counters, to go on from.
    pub(crate) fn counts(&self) -> SessionCounts {
        self.counts
    }

    /// Marks unhealthy here what was unhealthy there, so an upgrade does
    /// not send sessions back to a target the health checks took out. An
    /// address not known yet (a name still resolving) is left to the checks.
    pub(crate) fn carry_health(&self, upstreams: &strait_upstream::Upstreams) {
        for d in &self.unhealthy {
            let s = |k: &str| d.get(k).and_then(Value::as_str);
            let (Some(id), Some(target), Some(addr)) = (s("upstream"), s("target"), s("address")) else { continue };
            let Ok(id) = uuid::Uuid::parse_str(id) else { continue };
            if let Err(e) = upstreams.set_health(id, target, Some(addr), false) {
                tracing::debug!(upstream = %id, target, address = addr, error = %e, "health not carried over");
            }
        }
    }

    /// Tells the old generation this one failed to start.
    pub(crate) fn failed(&mut self, why: &str) {
        let _ = self.wire.send(json!({ "failed": why }), &[]);
    }

    /// Tells the old generation this one is ready, then takes what it
    /// hands over until it exits.
    pub(crate) fn ready(
        &mut self,
        gw: &Gateway,
        adopter: Adopter,
        stats: Arc<Stats>,
        plugins: Arc<strait_plugin::Plugins>,
    ) -> Result<()> {
        let mut wire = self.wire.try_clone()?;
        wire.send(json!({ "ready": true, "pid": std::process::id(), "fd_room": fd_room() }), &[])
            .context("upgrade: cannot tell the running generation this one is ready")?;
        wire.set_timeout(None)?;
        let generation = gw.generation.clone();
        std::thread::Builder::new()
            .name("strait-takeover".into())
            .spawn(move || receive(wire, &generation, &adopter, &stats, &plugins))?;
        Ok(())
    }
}

/// Takes what the old generation sends after `ready`, until it exits:
/// its sessions, each answered (taken or refused) before it starts here,
/// then what it left behind.
fn receive(
    mut wire: Wire,
    generation: &Arc<Generation>,
    adopter: &Adopter,
    stats: &Stats,
    plugins: &strait_plugin::Plugins,
) {
    let Some(counts) = generation.upgrade.as_ref() else { return };
    loop {
        let (m, fds) = match wire.recv() {
            Ok(got) => got,
            Err(ctl::WireError::Closed) => break,
            Err(e) => {
                tracing::error!(error = %e, "the hand-off from the previous generation broke off");
                break;
            }
        };
        let seq = m.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let refuse = |wire: &mut Wire, why: String| {
            tracing::error!(error = %why, "a session handed over was refused");
            let _ = wire.send(json!({ "refused": seq, "why": why }), &[]);
        };
        if let Some(d) = m.get("session") {
            let prepared = Moving::from_description(d, fds)
                .map_err(|e| e.to_string())
                .and_then(|s| adopter.prepare(s).map_err(|(_, e)| e.to_string()));
            match prepared {
                // Started only once the old generation knows: if this answer
                // cannot reach it, the session goes on there instead.
                Ok(a) => match wire.send(json!({ "took": seq }), &[]) {
                    Ok(()) => {
                        a.start();
                        counts.moved.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "a session handed over could not be acknowledged: left there")
                    }
                },
                Err(why) => refuse(&mut wire, why),
            }
        } else if let Some(d) = m.get("flow") {
            match Flow::from_description(d, fds) {
                Ok(f) => match wire.send(json!({ "took": seq }), &[]) {
                    Ok(()) => match adopter.adopt_flow(f) {
                        Ok(()) => {
                            counts.moved.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tracing::error!(error = %e, "a UDP session handed over could not be resumed"),
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "a session handed over could not be acknowledged: left there")
                    }
                },
                Err(e) => refuse(&mut wire, e.to_string()),
            }
        } else if let Some(state) = m.get("plugins") {
            plugins.import_state(state);
        } else if let Some(key) = m.get("flows_done").and_then(Value::as_str) {
            adopter.flows_done(key);
        } else if let Some(left) = m.get("left") {
            let n = |k: &str| left.get(k).and_then(Value::as_u64).unwrap_or(0);
            counts.drained.store(n("drained"), Ordering::Relaxed);
            counts.closed.store(n("closed"), Ordering::Relaxed);
            // They were counted open when the counters were carried over.
            stats.carry_over(SessionCounts { accepted: 0, handled: n("drained") + n("closed"), active: 0 });
        }
    }
    // Nothing more will come: UDP listeners still waiting read their
    // sockets, and what the limiters counted for the old generation goes.
    adopter.all_flows_done();
    plugins.settle_state();
    counts.finished.store(true, Ordering::Relaxed);
    tracing::info!(moved = counts.moved.load(Ordering::Relaxed), "the previous generation has exited");
}

/// How many more descriptors this process may open, less a reserve.
fn fd_room() -> u64 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1 << 20);
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    limit.saturating_sub(open).saturating_sub(FD_RESERVE)
}

/// Raises the soft limit on open files to the hard one: a generation that
/// takes over every session holds two descriptors per session.
pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    // "Unlimited" is not a value the kernel takes for this limit.
    let target = l.maximum.unwrap_or(1 << 20);
    if l.current.is_some_and(|c| c < target) {
        l.current = Some(target);
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}
