//! The data phase at run time: a session's pipeline of data-phase instances
//! (see [`crate::data`]), driven by the host's relay.
//!
//! The host asks the session's chain for a [`Stream`] once the upstream is
//! connected ([`Chain::stream`]); it exists only when an instance of the
//! chain has a data phase for the session's protocol. The host then hands
//! each chunk it reads to [`Chain::data`] and writes what comes out, and
//! calls [`Chain::resume`] and [`Chain::finished`] as the stream's control
//! and its ends say. Everything here is synchronous: a call runs a plugin's
//! code and returns.

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::data::{Data, DataVerdict, Direction, StreamControl, pool, stage_bit};
use crate::runtime::{Chain, Entry, guarded, wait};
use crate::{Session, Status, Verdict};
use strait_model::Protocol;

/// Why the data phase ended a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A plugin closed it (`DataVerdict::Close`, or its stream control).
    ByPlugin { plugin: &'static str },
    /// A plugin refused it when the upstream connected.
    Refused { plugin: &'static str, status: Status, message: Option<String> },
    /// The plugins held more than `stream_max_pending` bytes in one direction.
    PendingLimit { direction: Direction, held: usize, max: usize },
    /// A plugin failed (it panicked, or its sandbox stopped it).
    Failed { plugin: Option<&'static str>, reason: String },
}

/// A session's data-phase state: the instances that see its bytes, what
/// each holds in each direction, and the control other tasks use.
#[derive(Debug)]
pub struct Stream {
    /// Indices of the chain's entries with a data phase for this session, in
    /// chain order (bytes from the upstream pass them in reverse).
    stages: Vec<usize>,
    /// What each stage holds, per direction.
    held: [Vec<Vec<u8>>; 2],
    /// The direction's end of stream has been read.
    ended: [bool; 2],
    /// Its close notifications were sent.
    notified: [bool; 2],
    max_pending: usize,
    control: StreamControl,
}

impl Stream {
    /// The handle plugins and the host use to resume or close the stream.
    pub fn control(&self) -> &StreamControl {
        &self.control
    }

    /// Whether plugins hold bytes in `direction` (the host forwards the end
    /// of the stream only once they hold none).
    pub fn holds(&self, direction: Direction) -> bool {
        self.held[direction.index()].iter().any(|h| !h.is_empty())
    }

    /// Stage `i` in the order bytes going `direction` meet them.
    fn stage(&self, direction: Direction, i: usize) -> usize {
        match direction {
            Direction::Downstream => i,
            Direction::Upstream => self.stages.len() - 1 - i,
        }
    }
}

impl Chain {
    /// Whether an instance of this chain has a data phase for sessions of
    /// `protocol`: only then does the host relay through [`Chain::stream`].
    pub fn has_data_phase(&self, protocol: Protocol) -> bool {
        self.entries.iter().any(|e| e.runs_on.contains(protocol) && e.instance.data_phase())
    }

    /// The session's data phase: its instances with a data phase for its
    /// protocol (with none, bytes pass through). `upstream` is the address
    /// it connected to; `max_pending` bounds what the instances may hold in
    /// each direction. The session gets its [`StreamControl`] from here on.
    pub fn stream(&self, s: &mut Session, upstream: Option<SocketAddr>, max_pending: usize) -> Stream {
        let proto = s.protocol();
        let stages: Vec<usize> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.runs_on.contains(proto) && e.instance.data_phase())
            .map(|(i, _)| i)
            .collect();
        let control = StreamControl::default();
        s.set_stream_control(control.clone(), upstream);
        let held = [vec![Vec::new(); stages.len()], vec![Vec::new(); stages.len()]];
        Stream { stages, held, ended: [false; 2], notified: [false; 2], max_pending, control }
    }

    /// The upstream is connected: each data-phase instance's `on_connect`,
    /// in order (one may refuse, delay or hold the session).
    pub async fn connected(&self, s: &mut Session, stream: &Stream) -> Result<(), Closed> {
        for (k, &i) in stream.stages.iter().enumerate() {
            let e = &self.entries[i];
            s.set_stage(k);
            match guarded(e, || e.instance.on_connect(s)) {
                Verdict::Continue => {}
                Verdict::Delay(d) => tokio::time::sleep(d.min(crate::runtime::MAX_DELAY)).await,
                Verdict::Wait(r) => {
                    if let Some((status, message)) = wait(&r).await {
                        return Err(Closed::Refused { plugin: e.name, status, message });
                    }
                }
                Verdict::Reject { status, message } => return Err(Closed::Refused { plugin: e.name, status, message }),
            }
        }
        Ok(())
    }

    /// `input` arrived going `direction` (`end_of_stream`: the sender has
    /// finished). What the instances pass on is appended to `out`.
    pub fn data(
        &self,
        s: &mut Session,
        stream: &mut Stream,
        direction: Direction,
        input: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Closed> {
        if end_of_stream {
            stream.ended[direction.index()] = true;
        }
        let mut carry = pool::take();
        carry.extend_from_slice(input);
        let r = self.run(s, stream, direction, &mut carry, None);
        Self::pass_on(stream, direction, carry, r.is_ok(), out);
        r
    }

    /// What came out of the stages goes to `out` (moved when `out` is
    /// empty), and every vector nothing is held in goes back to the pool:
    /// between chunks a session keeps only what its plugins hold.
    fn pass_on(stream: &mut Stream, direction: Direction, mut carry: Vec<u8>, ok: bool, out: &mut Vec<u8>) {
        if ok {
            if out.is_empty() {
                std::mem::swap(out, &mut carry);
            } else {
                out.extend_from_slice(&carry);
            }
        }
        pool::give(carry);
        for h in &mut stream.held[direction.index()] {
            if h.is_empty() && h.capacity() > 0 {
                pool::give(std::mem::take(h));
            }
        }
    }

    /// Plugins asked to pass on what they hold going `direction` (`stages`:
    /// a bit each, as [`crate::data::Requests`] gives them): each passes its
    /// bytes on without being called again (as Envoy continues a paused
    /// filter), and the plugins after it are called with them; what other
    /// plugins hold stays held.
    pub fn resume(
        &self,
        s: &mut Session,
        stream: &mut Stream,
        direction: Direction,
        stages: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), Closed> {
        let mut carry = Vec::new();
        let r = self.run(s, stream, direction, &mut carry, Some(stages));
        Self::pass_on(stream, direction, carry, r.is_ok(), out);
        r
    }

    /// `direction`'s sender will send no more (it finished, or the session
    /// is ending): the instances' close notifications, once per direction.
    pub fn finished(&self, s: &mut Session, stream: &mut Stream, direction: Direction) {
        if std::mem::replace(&mut stream.notified[direction.index()], true) {
            return;
        }
        for (k, &i) in stream.stages.iter().enumerate() {
            let e = &self.entries[i];
            s.set_stage(k);
            let notified = catch_unwind(AssertUnwindSafe(|| match direction {
                Direction::Downstream => e.instance.on_downstream_close(s),
                Direction::Upstream => e.instance.on_upstream_close(s),
            }));
            if notified.is_err() {
                tracing::error!(plugin = e.name, "plugin panicked in a close notification");
            }
        }
    }

    /// Runs `carry` through the stages going `direction`; what the last one
    /// passes on is left in `carry`. `resumed`: the stages that continued,
    /// whose bytes (and what reaches them) go on without a call.
    fn run(
        &self,
        s: &mut Session,
        stream: &mut Stream,
        direction: Direction,
        carry: &mut Vec<u8>,
        resumed: Option<u32>,
    ) -> Result<(), Closed> {
        let d = direction.index();
        let eos = stream.ended[d];
        for i in 0..stream.stages.len() {
            let k = stream.stage(direction, i);
            match resumed {
                Some(stages) if stages & stage_bit(k) != 0 => {
                    let held = &mut stream.held[d][k];
                    held.extend_from_slice(carry);
                    carry.clear();
                    std::mem::swap(held, carry);
                    continue;
                }
                // Nothing new reached this stage: it keeps what it holds.
                Some(_) if carry.is_empty() => continue,
                Some(_) => {}
                // Nothing for this stage, nor for the ones after it.
                None if carry.is_empty() && stream.held[d][k].is_empty() && !eos => return Ok(()),
                None => {}
            }
            let others: usize = stream.held[d].iter().enumerate().filter(|(j, _)| *j != k).map(|(_, h)| h.len()).sum();
            let held = &mut stream.held[d][k];
            if held.is_empty() {
                // Nothing held: the bytes move in rather than being copied.
                std::mem::swap(held, carry);
            } else {
                held.extend_from_slice(carry);
                carry.clear();
            }
            let e: &Entry = &self.entries[stream.stages[k]];
            if others + held.len() > stream.max_pending {
                return Err(Closed::PendingLimit { direction, held: others + held.len(), max: stream.max_pending });
            }
            s.set_stage(k);
            let mut data = Data::new(held, eos);
            let verdict = catch_unwind(AssertUnwindSafe(|| match direction {
                Direction::Downstream => e.instance.on_downstream_data(s, &mut data),
                Direction::Upstream => e.instance.on_upstream_data(s, &mut data),
            }));
            match verdict {
                Ok(DataVerdict::Continue) => std::mem::swap(held, carry),
                Ok(DataVerdict::Pause) => {
                    // What it holds now, with what it may have added.
                    let total = others + held.len();
                    if total > stream.max_pending {
                        return Err(Closed::PendingLimit { direction, held: total, max: stream.max_pending });
                    }
                    return Ok(());
                }
                // A plugin that failed the session (its stream control) and
                // closes it: the failure is what the log says.
                Ok(DataVerdict::Close) => {
                    return Err(match stream.control.closing() {
                        Some((plugin, Some(reason))) => Closed::Failed { plugin: Some(plugin), reason },
                        _ => Closed::ByPlugin { plugin: e.name },
                    });
                }
                Err(_) => {
                    tracing::error!(plugin = e.name, "plugin panicked in the data phase; the session ends with 500");
                    return Err(Closed::Failed { plugin: Some(e.name), reason: "the plugin panicked".to_owned() });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::task::Poll;

    use strait_model::{Config, Options, PluginNames, RouteIdx};

    use super::*;
    use crate::{Chains, Conf, ConfigureCx, ConfigureError, Facts, Instance, Plugin, Plugins, Registry};

    /// Holds every chunk (pauses) and keeps its stream control, so a test
    /// can resume it; `first` runs before `second`.
    struct Holder(&'static str, i32, Arc<Mutex<Option<StreamControl>>>);
    struct Holding(Arc<Mutex<Option<StreamControl>>>);
    impl Plugin for Holder {
        type Config = ();
        fn name(&self) -> &'static str {
            self.0
        }
        fn priority(&self) -> i32 {
            self.1
        }
        fn schema(&self, _conf: &mut Conf<'_>) -> Option<()> {
            Some(())
        }
        fn configure(&self, _: (), _cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
            Ok(Arc::new(Holding(self.2.clone())))
        }
    }
    impl Instance for Holding {
        fn data_phase(&self) -> bool {
            true
        }
        fn on_downstream_data(&self, s: &mut Session, _data: &mut Data<'_>) -> DataVerdict {
            *self.0.lock().expect("control") = s.stream_control().cloned();
            DataVerdict::Pause
        }
    }

    #[test]
    fn a_resume_passes_on_only_what_the_resuming_plugin_holds() {
        let (first, second) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
        let registry =
            Registry::default().with(Holder("first", 20, first.clone())).with(Holder("second", 10, second.clone()));
        let options = Options {
            plugins: PluginNames { bundled: true, custom: vec!["first".into(), "second".into()] },
            schemas: Some(Arc::new(registry.clone())),
            filters: None,
        };
        let yaml = "_format_version: \"3.0\"\nservices:\n- url: tcp://127.0.0.1:1\n  routes:\n  - protocols: [tcp]\n    destinations: [{port: 1}]\nplugins:\n- name: first\n- name: second\n";
        let config: Arc<Config> = Arc::new(strait_model::load_str_with(yaml, &options).expect("valid").config);
        let chains =
            Chains::compile(&config, &Plugins::new(registry), &|_| Err("no TLS".to_owned())).expect("compiles");
        let chain = chains.route(RouteIdx(0)).expect("a chain").clone();
        let a: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
        let mut s = Session::new(Facts {
            config: config.clone(),
            client: a,
            server: a,
            listener: Arc::from("test"),
            protocol: Protocol::Tcp,
            sni: None,
            alpn: Vec::new(),
            route: Some(RouteIdx(0)),
        });
        let mut stream = chain.stream(&mut s, None, 1024);
        let mut out = Vec::new();
        // The first holds "abc"; resumed, it passes it to the second, which holds it.
        chain.data(&mut s, &mut stream, Direction::Downstream, b"abc", false, &mut out).expect("held");
        assert!(out.is_empty() && stream.holds(Direction::Downstream));
        first.lock().expect("c").as_ref().expect("first's control").resume(Direction::Downstream);
        let waker = std::task::Waker::noop();
        let Poll::Ready(r) = stream.control().poll_requests(&mut std::task::Context::from_waker(waker)) else {
            panic!("a resume was asked")
        };
        assert_eq!((r.resume_downstream, r.resume_upstream), (1, 0), "the first stage's bit only");
        chain.resume(&mut s, &mut stream, Direction::Downstream, r.resume_downstream, &mut out).expect("resumed");
        assert!(out.is_empty(), "the second still holds what the first let go");
        // "de" reaches the first (held again); the second's resume lets
        // "abc" out, and the first keeps "de".
        chain.data(&mut s, &mut stream, Direction::Downstream, b"de", false, &mut out).expect("held");
        second.lock().expect("c").as_ref().expect("second's control").resume(Direction::Downstream);
        let Poll::Ready(r) = stream.control().poll_requests(&mut std::task::Context::from_waker(waker)) else {
            panic!("a resume was asked")
        };
        chain.resume(&mut s, &mut stream, Direction::Downstream, r.resume_downstream, &mut out).expect("resumed");
        assert_eq!(out, b"abc", "only what the resuming plugin held");
        assert!(stream.holds(Direction::Downstream), "the first still holds \"de\"");
    }
}
