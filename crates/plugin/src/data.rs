//! The data phase: plugins that see, change, hold or refuse the bytes of a
//! stream while it relays.
//!
//! An instance that says so ([`Instance::data_phase`](crate::Instance::data_phase))
//! gets each chunk read from one side before it is written to the other, as
//! a [`Data`] buffer it may read, replace, prepend to or append to, and
//! answers with a [`DataVerdict`]: continue (pass the bytes on), pause (hold
//! them: the next call sees them again with what arrived since), or close.
//! Several instances form a pipeline: bytes from the client pass them in
//! chain order, bytes from the upstream in reverse order (as write filters
//! do in Envoy); each holds its own paused bytes. What all of them hold in
//! one direction is bounded (`stream_max_pending`); past the bound the
//! session closes. A session with no data-phase instance never builds any
//! of this and keeps the plain relay (splice between plain sockets).

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client, on its way to the upstream (proxy-wasm's "downstream data").
    Downstream,
    /// From the upstream, on its way to the client.
    Upstream,
}

impl Direction {
    pub(crate) fn index(self) -> usize {
        match self {
            Direction::Downstream => 0,
            Direction::Upstream => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Downstream => "downstream",
            Direction::Upstream => "upstream",
        }
    }
}

/// The bytes a data-phase call sees: what this plugin held in this direction
/// (everything it paused on), followed by what just arrived.
#[derive(Debug)]
pub struct Data<'a> {
    buf: &'a mut Vec<u8>,
    end_of_stream: bool,
}

impl<'a> Data<'a> {
    /// A buffer for a call (the runtime makes these; a plugin's tests may too).
    pub fn new(buf: &'a mut Vec<u8>, end_of_stream: bool) -> Data<'a> {
        Data { buf, end_of_stream }
    }

    pub fn bytes(&self) -> &[u8] {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The sender has finished this direction (its FIN, or TLS close_notify):
    /// no byte follows these.
    pub fn end_of_stream(&self) -> bool {
        self.end_of_stream
    }

    /// Replaces every byte.
    pub fn replace(&mut self, bytes: &[u8]) {
        self.buf.clear();
        self.buf.extend_from_slice(bytes);
    }

    /// Replaces the first `n` bytes (all of them when `n` is larger).
    pub fn replace_prefix(&mut self, n: usize, bytes: &[u8]) {
        let n = n.min(self.buf.len());
        self.buf.splice(..n, bytes.iter().copied());
    }

    pub fn prepend(&mut self, bytes: &[u8]) {
        self.replace_prefix(0, bytes);
    }

    pub fn append(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer itself, for any other edit.
    pub fn as_mut_vec(&mut self) -> &mut Vec<u8> {
        self.buf
    }
}

/// What a data-phase call decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataVerdict {
    /// Pass the bytes on (as the call left them).
    Continue,
    /// Hold them: the next call in this direction sees them again, with
    /// what arrives next appended (bounded by `stream_max_pending`). At the
    /// end of the stream the bytes stay held until the plugin continues
    /// (through [`StreamControl::resume`]) or the session ends.
    Pause,
    /// End the session: what was passed on before is delivered first, then
    /// both sides close (`closed by plugin` in the log).
    Close,
}

const CLOSE: u8 = 1;
const FAIL: u8 = 2;

/// A handle on a relaying session's data phase that other tasks may use (a
/// plugin's timer, for instance): pass on what its plugin holds, or close
/// the session. Requests take effect when the relay next runs, which they
/// wake. Each data-phase plugin of a session has its own handle
/// ([`Session::stream_control`](crate::Session::stream_control) during its
/// calls), so a resume passes on only what that plugin holds.
#[derive(Debug, Clone, Default)]
pub struct StreamControl {
    inner: Arc<ControlInner>,
    /// The stage (the plugin's place among the session's data-phase
    /// plugins) this handle resumes.
    stage: u8,
}

/// The resume bit of a stage; the 32nd and later stages share the last bit.
pub(crate) fn stage_bit(stage: usize) -> u32 {
    1 << stage.min(31)
}

#[derive(Debug, Default)]
struct ControlInner {
    /// Close and fail requests.
    requests: AtomicU8,
    /// Per direction, the stages that asked to resume.
    resumes: [AtomicU32; 2],
    /// The relay's waker, registered once: a task's waker stays valid for
    /// the task's life, so the relay's polls need no lock.
    registered: std::sync::atomic::AtomicBool,
    waker: Mutex<Option<Waker>>,
    /// Who closed the session, and why it failed when it did.
    closed: Mutex<Option<(&'static str, Option<String>)>>,
}

/// What a [`StreamControl`] was asked, as the relay reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// The stages (a bit each, in chain order) that resumed, per direction.
    pub resume_downstream: u32,
    pub resume_upstream: u32,
    /// The plugin that closed the session, and the failure when it failed
    /// (status 500).
    pub close: Option<(&'static str, Option<String>)>,
}

impl StreamControl {
    /// Passes on what this handle's plugin holds in `direction`, without
    /// calling it again (as Envoy continues a paused filter); the plugins
    /// after it see the bytes. What other plugins hold stays held.
    pub fn resume(&self, direction: Direction) {
        self.inner.resumes[direction.index()].fetch_or(stage_bit(usize::from(self.stage)), Ordering::AcqRel);
        self.wake();
    }

    pub(crate) fn stage(&self) -> usize {
        usize::from(self.stage)
    }

    /// The same session's handle for another stage.
    pub(crate) fn for_stage(&self, stage: usize) -> StreamControl {
        StreamControl { inner: self.inner.clone(), stage: stage.min(31) as u8 }
    }

    /// Ends the session (what was passed on is delivered first); `plugin`
    /// is who closed it, for the log.
    pub fn close(&self, plugin: &'static str) {
        self.inner.closed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert((plugin, None));
        self.request(CLOSE);
    }

    /// Ends the session as failed: status 500, `reason` in the log.
    pub fn fail(&self, plugin: &'static str, reason: impl Into<String>) {
        self.inner.closed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert((plugin, Some(reason.into())));
        self.request(FAIL);
    }

    fn request(&self, bit: u8) {
        self.inner.requests.fetch_or(bit, Ordering::AcqRel);
        self.wake();
    }

    fn wake(&self) {
        let waker = self.inner.waker.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// For the relay (one task): takes what was asked since the last call;
    /// the first call registers the task to be woken when something is.
    pub fn poll_requests(&self, cx: &mut Context<'_>) -> Poll<Requests> {
        let take = || {
            let i = &self.inner;
            let r = (
                i.requests.swap(0, Ordering::AcqRel),
                i.resumes[0].swap(0, Ordering::AcqRel),
                i.resumes[1].swap(0, Ordering::AcqRel),
            );
            (r != (0, 0, 0)).then_some(r)
        };
        let mut asked = take();
        if asked.is_none() {
            if self.inner.registered.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            *self.inner.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            self.inner.registered.store(true, Ordering::Release);
            // Asked between the swap and the registration: seen now.
            asked = take();
        }
        let Some((bits, down, up)) = asked else { return Poll::Pending };
        let close = if bits & (CLOSE | FAIL) != 0 {
            self.inner.closed.lock().unwrap_or_else(|p| p.into_inner()).clone()
        } else {
            None
        };
        Poll::Ready(Requests { resume_downstream: down, resume_upstream: up, close })
    }

    /// Who closed the session, and the failure when it failed.
    pub fn closing(&self) -> Option<(&'static str, Option<String>)> {
        self.inner.closed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a plugin closed (or failed) the session.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// A hold on a session that another task ends: see [`crate::Verdict::Wait`].
#[derive(Debug, Clone, Default)]
pub struct Resume(Arc<ResumeInner>);

#[derive(Debug, Default)]
struct ResumeInner {
    done: std::sync::atomic::AtomicBool,
    /// Set (before `done`) when the session is refused rather than resumed.
    refusal: Mutex<Option<(crate::Status, Option<String>)>>,
    notify: tokio::sync::Notify,
}

impl Resume {
    pub fn new() -> Resume {
        Resume::default()
    }

    /// Lets the held session go on.
    pub fn resume(&self) {
        self.0.done.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// Ends the held session instead, as a [`crate::Verdict::Reject`] would.
    pub fn refuse(&self, status: crate::Status, message: Option<String>) {
        self.0.refusal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert((status, message));
        self.resume();
    }

    /// Completes once [`Resume::resume`] or [`Resume::refuse`] was called
    /// (before or after); gives the refusal, if it was one.
    pub async fn resumed(&self) -> Option<(crate::Status, Option<String>)> {
        let waiter = self.0.notify.notified();
        if !self.0.done.load(Ordering::Acquire) {
            waiter.await;
        }
        self.0.refusal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl PartialEq for Resume {
    fn eq(&self, other: &Resume) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Resume {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_edits_as_envoy_allows_them() {
        let mut v = b"world".to_vec();
        let mut d = Data::new(&mut v, false);
        d.prepend(b"hello ");
        d.append(b"!");
        assert_eq!(d.bytes(), b"hello world!");
        d.replace_prefix(5, b"HELLO");
        assert_eq!(d.bytes(), b"HELLO world!");
        d.replace_prefix(usize::MAX, b"x");
        assert_eq!(d.bytes(), b"x");
        d.replace(b"");
        assert!(d.is_empty() && !d.end_of_stream());
    }

    #[test]
    fn control_requests_are_taken_once_and_wake_the_relay() {
        let c = StreamControl::default();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(c.poll_requests(&mut cx).is_pending());
        c.resume(Direction::Upstream);
        c.fail("f", "boom");
        c.close("g");
        let Poll::Ready(r) = c.poll_requests(&mut cx) else { panic!("requests were made") };
        assert!(r.resume_upstream == 1 && r.resume_downstream == 0);
        assert_eq!(r.close, Some(("f", Some("boom".to_owned()))), "the first to close is kept");
        assert!(c.poll_requests(&mut cx).is_pending(), "taken once");
        assert!(c.is_closed());
    }
}

/// Byte vectors the data phase reuses, per worker thread: between chunks a
/// session holds none (unless a plugin holds bytes), so an idle session
/// costs no buffer, and a busy one allocates none per chunk once warm.
pub mod pool {
    use std::cell::RefCell;

    /// Vectors kept per thread, and the largest capacity kept (together at
    /// most 4 MiB per thread, as the relay's own buffer pool).
    const KEEP: usize = 64;
    const MAX_CAPACITY: usize = 64 * 1024;

    thread_local! {
        static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty vector, with capacity when the pool had one.
    pub fn take() -> Vec<u8> {
        POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default()
    }

    /// Gives `v`'s capacity back (its bytes are dropped).
    pub fn give(mut v: Vec<u8>) {
        if v.capacity() == 0 || v.capacity() > MAX_CAPACITY {
            return;
        }
        v.clear();
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < KEEP {
                p.push(v);
            }
        });
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn capacity_is_reused_and_bounded() {
            let mut v = super::take();
            v.extend_from_slice(&[1; 1000]);
            let cap = v.capacity();
            super::give(v);
            let again = super::take();
            assert!(again.is_empty() && again.capacity() == cap, "the same vector, emptied");
            super::give(vec![0; super::MAX_CAPACITY + 1]);
            assert_eq!(super::take().capacity(), 0, "an oversized vector is not kept");
        }
    }
}
