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

use crate::data::{Data, DataVerdict, Direction, StreamControl, pool};
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
        for &i in &stream.stages {
            let e = &self.entries[i];
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
        let r = self.run(s, stream, direction, &mut carry, false);
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

    /// A plugin asked to pass on what is held going `direction`: each
    /// paused instance passes its bytes on without being called again (as
    /// Envoy resumes a paused filter chain), the ones after it are called.
    pub fn resume(
        &self,
        s: &mut Session,
        stream: &mut Stream,
        direction: Direction,
        out: &mut Vec<u8>,
    ) -> Result<(), Closed> {
        let mut carry = Vec::new();
        let r = self.run(s, stream, direction, &mut carry, true);
        Self::pass_on(stream, direction, carry, r.is_ok(), out);
        r
    }

    /// `direction`'s sender will send no more (it finished, or the session
    /// is ending): the instances' close notifications, once per direction.
    pub fn finished(&self, s: &mut Session, stream: &mut Stream, direction: Direction) {
        if std::mem::replace(&mut stream.notified[direction.index()], true) {
            return;
        }
        for &i in &stream.stages {
            let e = &self.entries[i];
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
    /// passes on is left in `carry`. `resuming`: paused stages pass their
    /// bytes on without a call.
    fn run(
        &self,
        s: &mut Session,
        stream: &mut Stream,
        direction: Direction,
        carry: &mut Vec<u8>,
        resuming: bool,
    ) -> Result<(), Closed> {
        let d = direction.index();
        let eos = stream.ended[d];
        for i in 0..stream.stages.len() {
            let k = stream.stage(direction, i);
            if resuming && carry.is_empty() {
                // Nothing new reached this stage: what it held goes on as is.
                std::mem::swap(&mut stream.held[d][k], carry);
                continue;
            }
            if carry.is_empty() && stream.held[d][k].is_empty() && !eos {
                // Nothing for this stage, nor for the ones after it.
                return Ok(());
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
            let mut data = Data::new(held, eos);
            let verdict = catch_unwind(AssertUnwindSafe(|| match direction {
                Direction::Downstream => e.instance.on_downstream_data(s, &mut data),
                Direction::Upstream => e.instance.on_upstream_data(s, &mut data),
            }));
            match verdict {
                Ok(DataVerdict::Continue) => std::mem::swap(held, carry),
                Ok(DataVerdict::Pause) => return Ok(()),
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
