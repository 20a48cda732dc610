//! The relay loop: move bytes both ways until both sides have closed.
//! Between two plain TCP sockets the bytes are spliced in the kernel
//! (`splice.rs`); otherwise they are copied through buffers, as here.
//!
//! This is the hot path: no locks, no allocation per chunk. A direction holds
//! a buffer only while it has bytes to move: when its reader has nothing more
//! for now and every byte read has been written, the buffer goes back to a
//! per-thread pool, and the next read takes one from it. So an idle session
//! holds no user-space buffer at all, and a busy one reuses pooled ones
//! instead of allocating. An end of stream on one
//! side is forwarded as a half-close (FIN, or close_notify for TLS) and the
//! other direction keeps flowing. The idle timer is not re-armed on every
//! chunk: progress only records the time, and the timer, when it fires,
//! re-arms itself from the last activity or ends the session.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep};

use crate::live::Live;
use crate::rewind::Rewind;
use crate::splice::SpliceHalf;

/// Per-direction buffer size: one full TLS record.
pub(crate) const BUF_SIZE: usize = 16 * 1024;

/// Buffers kept per worker thread for reuse (4 MiB at most per thread).
const POOL_MAX: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Buf>> = const { RefCell::new(Vec::new()) };
}

/// A relay buffer. A fixed-size array behind a thin pointer: every session
/// keeps one such pointer per direction, and a slice's would be twice as big.
pub(crate) type Buf = Box<[u8; BUF_SIZE]>;

/// A buffer from this thread's pool, or a new one when the pool is empty.
pub(crate) fn take_buf() -> Buf {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| Box::new([0; BUF_SIZE]))
}

/// Returns a buffer to this thread's pool (freed when the pool is full).
pub(crate) fn give_buf(buf: Buf) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// Which peer a relay outcome is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// Why the relay stopped.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions finished; `first` closed its sending side first.
    Closed {
        first: Side,
    },
    IdleTimeout,
    Shutdown,
    /// Closed through the Admin API.
    Killed,
    /// A read or write on `side` failed.
    Error {
        side: Side,
        error: io::Error,
    },
    /// The data phase ended the session (a plugin closed it, failed, or
    /// held too much).
    Stopped(strait_plugin::Closed),
    /// An upgrade: the relay stopped reading and gives what it held, for
    /// the next generation to go on from; the sockets are untouched.
    HandOff(Box<Parked>),
}

/// What a plain relay held when it stopped for a hand-off: the bytes read
/// and not yet written each way (relay buffers, splice pipes, replayed
/// bytes not yet read), which directions had ended, the byte counts, and
/// the time left before the idle timeout.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parked {
    pub c2u: Vec<u8>,
    pub u2c: Vec<u8>,
    pub c2u_done: bool,
    pub u2c_done: bool,
    pub c2u_bytes: u64,
    pub u2c_bytes: u64,
    pub idle_left: Duration,
}

#[derive(Debug)]
pub struct RelayOutcome {
    pub end: RelayEnd,
    /// Bytes read from the client and written to the upstream.
    pub client_to_upstream: u64,
    /// Bytes read from the upstream and written to the client.
    pub upstream_to_client: u64,
}

/// Periodic reports of a running relay's byte counts (client to upstream,
/// upstream to client), for log plugins' progress entries.
pub struct Report<'a> {
    pub every: Duration,
    pub call: Box<dyn FnMut(u64, u64) + Send + 'a>,
}

impl std::fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report").field("every", &self.every).finish_non_exhaustive()
    }
}

/// One direction: read from one side, write to the other.
struct Half {
    /// Held only while bytes are in flight or a read is being made.
    buf: Option<Buf>,
    // u32: a buffer is 16 KiB, and every open session keeps these.
    start: u32,
    end: u32,
    eof: bool,
    shut: bool,
    /// Written since the last flush; only TLS writers need the flush.
    unflushed: bool,
    bytes: u64,
    /// Reader ended and writer shut down (or, with `close_sends_fin`, left
    /// for the close).
    done: bool,
    /// The last read filled the whole buffer: bulk data is flowing.
    bulk: bool,
    /// Stop, with `bulk` set, once a bulk read has been written out (so the
    /// caller can switch to splicing).
    stop_on_bulk: bool,
    /// At the end of stream, finish without shutting the writer down: the
    /// other direction is over and the sockets are about to be closed, which
    /// sends the FIN anyway (one system call less per session). Plain TCP
    /// only: a TLS writer must send its close_notify.
    close_sends_fin: bool,
}

impl Drop for Half {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_buf(buf);
        }
    }
}

/// Which step of a direction failed.
pub(crate) enum Failed {
    Read(io::Error),
    Write(io::Error),
}

impl Half {
    fn new() -> Self {
        Half {
            buf: None,
            start: 0,
            end: 0,
            eof: false,
            shut: false,
            unflushed: false,
            bytes: 0,
            done: false,
            bulk: false,
            stop_on_bulk: false,
            close_sends_fin: false,
        }
    }

    /// Moves as much as possible; `Ready(Ok)` once the reader ended and the
    /// writer has been shut down (unless `close_sends_fin` leaves that to the
    /// close).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        progress: &mut bool,
    ) -> Poll<Result<(), Failed>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            while self.start < self.end {
                let Some(buf) = &self.buf else {
                    // Bytes are only ever counted into a held buffer.
                    self.start = self.end;
                    break;
                };
                match writer.as_mut().poll_write(cx, &buf[self.start as usize..self.end as usize]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Failed::Write(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.start += n as u32;
                        self.bytes += n as u64;
                        self.unflushed = true;
                        *progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.bulk && self.stop_on_bulk && !self.eof {
                if let Some(buf) = self.buf.take() {
                    give_buf(buf);
                }
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                if let Some(buf) = self.buf.take() {
                    give_buf(buf);
                }
                if !self.shut && !self.close_sends_fin {
                    ready!(writer.as_mut().poll_shutdown(cx)).map_err(Failed::Write)?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }
            self.start = 0;
            self.end = 0;
            let buf = self.buf.get_or_insert_with(take_buf);
            let mut rb = ReadBuf::new(&mut buf[..]);
            match reader.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    self.bulk = n == BUF_SIZE;
                    if n == 0 {
                        self.eof = true;
                    } else {
                        self.end = n as u32;
                        *progress = true;
                    }
                }
                // A TLS peer that closes without close_notify: treat as an end of stream.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => self.eof = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Read(e))),
                Poll::Pending => {
                    // Nothing read and nothing left to write: a pending read
                    // keeps no reference to the buffer, so it can go back.
                    if let Some(buf) = self.buf.take() {
                        give_buf(buf);
                    }
                    if self.unflushed {
                        ready!(writer.as_mut().poll_flush(cx)).map_err(Failed::Write)?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// What a direction's step came to, as the relay sees it.
fn settle(
    r: Poll<Result<(), Failed>>,
    done: &mut bool,
    first_closed: &mut Option<Side>,
    from: Side,
) -> Option<RelayEnd> {
    let to = match from {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    };
    match r {
        Poll::Ready(Ok(())) => {
            *done = true;
            first_closed.get_or_insert(from);
            None
        }
        Poll::Ready(Err(Failed::Read(error))) => Some(RelayEnd::Error { side: from, error }),
        Poll::Ready(Err(Failed::Write(error))) => Some(RelayEnd::Error { side: to, error }),
        Poll::Pending => None,
    }
}

/// A session's two directions, however their bytes move.
pub(crate) trait Directions {
    /// Moves what can be moved now; `Some` when a side failed.
    fn drive(&mut self, cx: &mut Context<'_>, progress: &mut bool, first_closed: &mut Option<Side>)
    -> Option<RelayEnd>;
    /// Both directions have ended.
    fn done(&self) -> bool;
    /// Bytes moved (client to upstream, upstream to client).
    fn bytes(&self) -> (u64, u64);
    /// Stops for a hand-off and gives what is held; `None` when these
    /// directions cannot be handed over (TLS, data-phase plugins).
    fn park(&mut self) -> Option<io::Result<Parked>> {
        None
    }
}

/// Copying through user-space buffers: any streams (TLS included).
struct Copying<'a, C: ?Sized, U: ?Sized> {
    client: &'a mut C,
    upstream: &'a mut U,
    c2u: Half,
    u2c: Half,
}

impl<C, U> Directions for Copying<'_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    fn drive(
        &mut self,
        cx: &mut Context<'_>,
        progress: &mut bool,
        first_closed: &mut Option<Side>,
    ) -> Option<RelayEnd> {
        if !self.c2u.done {
            let r = self.c2u.poll_copy(cx, Pin::new(&mut *self.client), Pin::new(&mut *self.upstream), progress);
            if let Some(end) = settle(r, &mut self.c2u.done, first_closed, Side::Client) {
                return Some(end);
            }
        }
        if !self.u2c.done {
            let r = self.u2c.poll_copy(cx, Pin::new(&mut *self.upstream), Pin::new(&mut *self.client), progress);
            return settle(r, &mut self.u2c.done, first_closed, Side::Upstream);
        }
        None
    }

    fn done(&self) -> bool {
        self.c2u.done && self.u2c.done
    }

    fn bytes(&self) -> (u64, u64) {
        (self.c2u.bytes, self.u2c.bytes)
    }
}

/// One direction between plain TCP sockets: copied through a buffer while
/// messages are small (a `splice` costs more than a read and a write for a
/// few bytes), spliced in the kernel from the first read that fills a whole
/// buffer on (bulk data).
struct Hybrid {
    /// Its `done` is the direction's, spliced or not.
    copy: Half,
    /// Boxed: most sessions never splice, and their state stays smaller.
    splice: Option<Box<SpliceHalf>>,
}

impl Hybrid {
    fn new() -> Self {
        let mut copy = Half::new();
        copy.stop_on_bulk = crate::splice::available();
        Hybrid { copy, splice: None }
    }

    fn bytes(&self) -> u64 {
        self.copy.bytes + self.splice.as_ref().map_or(0, |s| s.bytes)
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        progress: &mut bool,
    ) -> Poll<Result<(), Failed>>
    where
        R: PlainSide,
        W: PlainSide,
    {
        loop {
            if let Some(s) = &mut self.splice {
                let (Some(from), Some(to)) = (reader.tcp(), writer.tcp()) else {
                    return Poll::Ready(Err(Failed::Read(io::Error::other("splicing without a socket"))));
                };
                let r = s.poll_copy(cx, from, to, progress);
                if !s.fallback {
                    return r;
                }
                // Splicing is not usable here: copy for the rest of the session.
                self.copy.bytes += s.bytes;
                self.splice = None;
                self.copy.stop_on_bulk = false;
                continue;
            }
            let r = self.copy.poll_copy(cx, Pin::new(&mut *reader), Pin::new(&mut *writer), progress);
            if !(matches!(r, Poll::Ready(Ok(()))) && self.copy.bulk && !self.copy.eof) {
                return r;
            }
            // Bulk data: splice from now on, once both sides are bare
            // sockets (the client's replayed bytes all delivered).
            self.copy.bulk = false;
            if reader.tcp().is_some() && writer.tcp().is_some() {
                self.splice = Some(Box::default());
            }
        }
    }
}

/// A plain TCP side of a session: a stream to copy through, and the bare
/// socket to splice once nothing is left to replay.
pub(crate) trait PlainSide: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> Option<&TcpStream>;
    /// The bytes still to be replayed, taken (a hand-off).
    fn take_replay(&mut self) -> Vec<u8>;
}

impl PlainSide for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }

    fn take_replay(&mut self) -> Vec<u8> {
        Vec::new()
    }
}

impl PlainSide for Rewind<TcpStream> {
    fn tcp(&self) -> Option<&TcpStream> {
        self.drained()
    }

    fn take_replay(&mut self) -> Vec<u8> {
        self.take_replay()
    }
}

impl Hybrid {
    /// The bytes this direction read and has not written, in order: the
    /// buffer's, the pipe's, then what `from` still had to replay.
    fn take_pending(&mut self, from: &mut impl PlainSide) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(buf) = self.copy.buf.take() {
            out.extend_from_slice(&buf[self.copy.start as usize..self.copy.end as usize]);
            give_buf(buf);
        }
        self.copy.start = self.copy.end;
        if let Some(s) = &mut self.splice {
            out.extend(s.drain_pipe()?);
        }
        out.extend(from.take_replay());
        Ok(out)
    }
}

/// Both directions between plain TCP sockets.
struct Plain<'a, C, U> {
    client: &'a mut C,
    upstream: &'a mut U,
    c2u: Hybrid,
    u2c: Hybrid,
}

impl<C: PlainSide, U: PlainSide> Directions for Plain<'_, C, U> {
    fn drive(
        &mut self,
        cx: &mut Context<'_>,
        progress: &mut bool,
        first_closed: &mut Option<Side>,
    ) -> Option<RelayEnd> {
        if !self.c2u.copy.done {
            self.c2u.copy.close_sends_fin = self.u2c.copy.done;
            let r = self.c2u.poll_copy(cx, &mut *self.client, &mut *self.upstream, progress);
            if let Some(end) = settle(r, &mut self.c2u.copy.done, first_closed, Side::Client) {
                return Some(end);
            }
        }
        if !self.u2c.copy.done {
            self.u2c.copy.close_sends_fin = self.c2u.copy.done;
            let r = self.u2c.poll_copy(cx, &mut *self.upstream, &mut *self.client, progress);
            return settle(r, &mut self.u2c.copy.done, first_closed, Side::Upstream);
        }
        None
    }

    fn done(&self) -> bool {
        self.c2u.copy.done && self.u2c.copy.done
    }

    fn bytes(&self) -> (u64, u64) {
        (self.c2u.bytes(), self.u2c.bytes())
    }

    fn park(&mut self) -> Option<io::Result<Parked>> {
        let mut parked = || {
            Ok(Parked {
                c2u: self.c2u.take_pending(&mut *self.client)?,
                u2c: self.u2c.take_pending(&mut *self.upstream)?,
                c2u_done: self.c2u.copy.done,
                u2c_done: self.u2c.copy.done,
                c2u_bytes: self.c2u.bytes(),
                u2c_bytes: self.u2c.bytes(),
                idle_left: Duration::ZERO,
            })
        };
        Some(parked())
    }
}

/// Relays between `client` and `upstream` until both close, the session is
/// idle for `idle`, or every session is closed by force.
pub(crate) fn relay<'a, C, U>(
    client: &'a mut C,
    upstream: &'a mut U,
    idle: Duration,
    live: &'a Live,
    report: Option<Report<'a>>,
) -> impl Future<Output = RelayOutcome> + 'a
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Run::new(Copying { client, upstream, c2u: Half::new(), u2c: Half::new() }, idle, live, report)
}

/// [`relay`] between plain TCP sockets: small messages are copied, bulk
/// data is spliced in the kernel (`splice(2)`) and never enters user space.
/// The caller closes both sockets when it returns: the direction that ends
/// last leaves its FIN to that close.
pub(crate) fn relay_plain<'a, C: PlainSide, U: PlainSide>(
    client: &'a mut C,
    upstream: &'a mut U,
    idle: Duration,
    live: &'a Live,
    report: Option<Report<'a>>,
) -> impl Future<Output = RelayOutcome> + 'a {
    Run::new(Plain { client, upstream, c2u: Hybrid::new(), u2c: Hybrid::new() }, idle, live, report)
}

/// [`relay_plain`] for a session an earlier generation handed over: the
/// bytes it held are replayed by the two sides (`Rewind`), and the relay
/// goes on from its counts, ended directions and idle deadline.
pub(crate) fn relay_resumed<'a, C: PlainSide, U: PlainSide>(
    client: &'a mut C,
    upstream: &'a mut U,
    from: &Parked,
    idle: Duration,
    live: &'a Live,
    report: Option<Report<'a>>,
    stay: bool,
) -> impl Future<Output = RelayOutcome> + 'a {
    let half = |done: bool, bytes: u64| {
        let mut h = Hybrid::new();
        h.copy.done = done;
        h.copy.bytes = bytes;
        h
    };
    let d =
        Plain { client, upstream, c2u: half(from.c2u_done, from.c2u_bytes), u2c: half(from.u2c_done, from.u2c_bytes) };
    let mut run = Run::new(d, idle, live, report);
    // One that could not leave does not try again in this upgrade.
    run.stayed = stay;
    // The idle deadline the earlier generation had.
    run.timer = tokio::time::sleep(from.idle_left);
    let ago = idle.saturating_sub(from.idle_left);
    run.last_activity = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
    run
}

pin_project_lite::pin_project! {
    /// The progress reports of a session that has them, with their own timer.
    struct Ticker<'a> {
        report: Report<'a>,
        #[pin]
        tick: Sleep,
    }
}

pin_project_lite::pin_project! {
    /// The relay as a future, written out rather than an `async fn`: it is
    /// the state every open session keeps for its whole life, and a written
    /// future holds each field once (an `async fn` keeps its arguments and
    /// the locals moved out of them side by side).
    pub(crate) struct Run<'a, D> {
        d: D,
        // The session's entry among the open ones: its listener's close
        // signal, its kill flag, where its counts are published.
        live: &'a Live,
        // Polled until registered only: a registered waiter wakes this task
        // on `close_all` without being polled again, and polling it takes a
        // lock. Every later poll checks the flag instead.
        #[pin]
        stop: Notified<'a>,
        waiting: bool,
        // A hand-off this relay cannot make was seen (and waited past).
        stayed: bool,
        #[pin]
        timer: Sleep,
        // Milliseconds (Kong's unit for timeouts): beside the flags below it
        // takes no room of its own.
        idle_ms: u32,
        last_activity: Instant,
        // Boxed: only sessions with progress-reporting plugins have one.
        ticker: Option<Pin<Box<Ticker<'a>>>>,
        first_closed: Option<Side>,
    }
}

impl<'a, D: Directions> Run<'a, D> {
    pub(crate) fn new(d: D, idle: Duration, live: &'a Live, report: Option<Report<'a>>) -> Self {
        let force = live.force();
        let now = Instant::now();
        let ticker =
            report.map(|report| Box::pin(Ticker { tick: tokio::time::sleep_until(now + report.every), report }));
        Run {
            d,
            live,
            stop: force.waiter(),
            waiting: false,
            stayed: false,
            timer: tokio::time::sleep_until(now + idle),
            // Rounded up, so that a sub-millisecond timeout is not none.
            idle_ms: u32::try_from(idle.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX),
            last_activity: now,
            ticker,
            first_closed: None,
        }
    }
}

impl<D: Directions> Future for Run<'_, D> {
    type Output = RelayOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayOutcome> {
        let mut this = self.project();
        let end = 'end: {
            let live: &Live = this.live;
            let force = live.force();
            // Its own flag first (a kill wakes this task alone): a session
            // killed as an upgrade begins is not handed over.
            if live.killed() {
                break 'end RelayEnd::Killed;
            }
            if !*this.stayed && force.handing_off() {
                match this.d.park() {
                    Some(Ok(mut parked)) => {
                        let deadline = *this.last_activity + Duration::from_millis(u64::from(*this.idle_ms));
                        parked.idle_left = deadline.saturating_duration_since(Instant::now());
                        break 'end RelayEnd::HandOff(Box::new(parked));
                    }
                    Some(Err(error)) => break 'end RelayEnd::Error { side: Side::Client, error },
                    // This session stays: wait for a close again.
                    None => {
                        *this.stayed = true;
                        *this.waiting = false;
                    }
                }
            }
            if !*this.waiting {
                while this.stop.as_mut().poll(cx).is_ready() {
                    if force.is_set() {
                        break 'end RelayEnd::Shutdown;
                    }
                    // Woken by a hand-off, not a close: a new waiter.
                    this.stop.set(force.waiter());
                }
                *this.waiting = true;
                // Once: a kill wakes this task through it. A kill since the
                // check above left no waker to wake: look again.
                live.wake_on_kill(cx.waker());
                if live.killed() {
                    break 'end RelayEnd::Killed;
                }
            }
            // The waiter was made before this check: no close_all is missed.
            if force.is_set() {
                break 'end RelayEnd::Shutdown;
            }
            let mut progress = false;
            if let Some(end) = this.d.drive(cx, &mut progress, this.first_closed) {
                break 'end end;
            }
            if this.d.done() {
                break 'end RelayEnd::Closed { first: this.first_closed.unwrap_or(Side::Client) };
            }
            if progress {
                let now = Instant::now();
                *this.last_activity = now;
                let (up, down) = this.d.bytes();
                live.progress(up, down, now);
            }
            if let Some(t) = this.ticker.as_mut() {
                let mut t = t.as_mut().project();
                while t.tick.as_mut().poll(cx).is_ready() {
                    let (up, down) = this.d.bytes();
                    (t.report.call)(up, down);
                    t.tick.as_mut().reset(Instant::now() + t.report.every);
                }
            }
            while this.timer.as_mut().poll(cx).is_ready() {
                let deadline = *this.last_activity + Duration::from_millis(u64::from(*this.idle_ms));
                if deadline <= Instant::now() {
                    break 'end RelayEnd::IdleTimeout;
                }
                this.timer.as_mut().reset(deadline);
            }
            return Poll::Pending;
        };
        let (client_to_upstream, upstream_to_client) = this.d.bytes();
        Poll::Ready(RelayOutcome { end, client_to_upstream, upstream_to_client })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[test]
    fn buffers_come_back_to_the_pool() {
        let a = take_buf();
        let ptr = a.as_ptr();
        give_buf(a);
        let b = take_buf();
        assert_eq!(b.as_ptr(), ptr, "a returned buffer is reused on this thread");
        assert_eq!(b.len(), BUF_SIZE);
        give_buf(b);
        let mut h = Half::new();
        h.buf = Some(take_buf());
        drop(h);
        assert!(POOL.with(|p| !p.borrow().is_empty()), "a dropped half returns its buffer");
    }

    #[tokio::test]
    async fn copies_both_ways_and_forwards_half_close() {
        let (mut client_far, mut client_near) = duplex(64);
        let (mut up_near, mut up_far) = duplex(64);
        let live = crate::live::test_entry();
        let relay =
            tokio::spawn(
                async move { relay(&mut client_near, &mut up_near, Duration::from_secs(5), &live, None).await },
            );
        client_far.write_all(b"ping").await.unwrap();
        client_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        up_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "client's FIN reaches the upstream after its data");
        up_far.write_all(b"pong-after-half-close").await.unwrap();
        up_far.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_far.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong-after-half-close");
        let out = relay.await.unwrap();
        assert!(matches!(out.end, RelayEnd::Closed { first: Side::Client }));
        assert_eq!((out.client_to_upstream, out.upstream_to_client), (4, 21));
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn plain_sockets_copy_small_messages_and_splice_bulk_data() {
        let (mut client_far, client_near) = tcp_pair().await;
        let (mut up_near, mut up_far) = tcp_pair().await;
        // The classifier already read the client's first bytes: replayed first.
        let mut client_near = Rewind::new(b"hello ".to_vec(), client_near);
        let bulk: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
        let sent = bulk.clone();
        let feeder = tokio::spawn(async move {
            client_far.write_all(&sent).await.unwrap();
            client_far.shutdown().await.unwrap();
            let mut back = Vec::new();
            client_far.read_to_end(&mut back).await.unwrap();
            back
        });
        let far = tokio::spawn(async move {
            let mut got = Vec::new();
            up_far.read_to_end(&mut got).await.unwrap();
            up_far.write_all(b"ok").await.unwrap();
            up_far.shutdown().await.unwrap();
            got
        });
        let mut d = Plain { client: &mut client_near, upstream: &mut up_near, c2u: Hybrid::new(), u2c: Hybrid::new() };
        let mut first = None;
        let end = poll_fn(|cx| {
            let mut progress = false;
            if let Some(end) = d.drive(cx, &mut progress, &mut first) {
                return Poll::Ready(Some(end));
            }
            if d.done() { Poll::Ready(None) } else { Poll::Pending }
        })
        .await;
        assert!(end.is_none(), "{end:?}");
        assert!(d.c2u.splice.is_some(), "the bulk direction switched to splice");
        assert!(d.u2c.splice.is_none(), "the two-byte reply was copied");
        assert_eq!(d.bytes(), (6 + bulk.len() as u64, 2));
        // As the session does: the sockets close when the relay ends (the
        // last direction's FIN is sent by this close).
        drop(d);
        drop((client_near, up_near));
        let got = far.await.unwrap();
        assert!(got.starts_with(b"hello ") && got[6..] == bulk[..], "replayed bytes first, then the rest, in order");
        assert_eq!(feeder.await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn plain_relay_closes_the_last_direction_with_a_fin() {
        let (mut client_far, client_near) = tcp_pair().await;
        let (up_near, mut up_far) = tcp_pair().await;
        let live = crate::live::test_entry();
        let relay = tokio::spawn(async move {
            let (mut c, mut u) = (client_near, up_near);
            let out = relay_plain(&mut c, &mut u, Duration::from_secs(5), &live, None).await;
            // As the session does: the sockets close when the relay ends.
            drop((c, u));
            out
        });
        client_far.write_all(b"ping").await.unwrap();
        client_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        up_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        up_far.write_all(b"pong").await.unwrap();
        up_far.shutdown().await.unwrap();
        // The relay shuts nothing down for this last direction: the close does.
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client_far.read_to_end(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, b"pong", "the reply, then a clean end of stream (not a reset)");
        let out = relay.await.unwrap();
        assert!(matches!(out.end, RelayEnd::Closed { first: Side::Client }), "{:?}", out.end);
        assert_eq!((out.client_to_upstream, out.upstream_to_client), (4, 4));
    }

    #[tokio::test]
    async fn a_close_all_before_the_relay_starts_ends_it_at_once() {
        let (_client_far, mut client_near) = duplex(64);
        let (mut up_near, _up_far) = duplex(64);
        let live = crate::live::test_entry();
        live.force().close_all();
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            relay(&mut client_near, &mut up_near, Duration::from_secs(600), &live, None),
        )
        .await
        .unwrap();
        assert!(matches!(out.end, RelayEnd::Shutdown));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_ends_a_silent_session() {
        let (_client_far, mut client_near) = duplex(64);
        let (mut up_near, _up_far) = duplex(64);
        let live = crate::live::test_entry();
        let out = relay(&mut client_near, &mut up_near, Duration::from_secs(60), &live, None).await;
        assert!(matches!(out.end, RelayEnd::IdleTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_postpones_the_idle_timeout() {
        let (mut client_far, mut client_near) = duplex(64);
        let (mut up_near, mut up_far) = duplex(64);
        let live = crate::live::test_entry();
        let task =
            tokio::spawn(
                async move { relay(&mut client_near, &mut up_near, Duration::from_secs(10), &live, None).await },
            );
        let start = Instant::now();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_far.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            up_far.read_exact(&mut b).await.unwrap();
        }
        let out = task.await.unwrap();
        assert!(matches!(out.end, RelayEnd::IdleTimeout));
        assert!(start.elapsed() >= Duration::from_secs(40), "{:?}", start.elapsed());
        assert_eq!(out.client_to_upstream, 5);
    }

    #[tokio::test]
    async fn shutdown_signal_ends_the_relay() {
        let (_client_far, mut client_near) = duplex(64);
        let (mut up_near, _up_far) = duplex(64);
        let live = std::sync::Arc::new(crate::live::test_entry());
        let l = live.clone();
        let task =
            tokio::spawn(
                async move { relay(&mut client_near, &mut up_near, Duration::from_secs(600), &l, None).await },
            );
        // Let the relay start waiting first: the signal must wake it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        live.force().close_all();
        let out = tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert!(matches!(out.end, RelayEnd::Shutdown));
    }

    #[tokio::test]
    async fn a_kill_ends_that_relay_alone_and_counts_are_published() {
        let (mut client_far, mut client_near) = duplex(64);
        let (mut up_near, mut up_far) = duplex(64);
        let (_other_far, mut other_near) = duplex(64);
        let (mut other_up, _other_up_far) = duplex(64);
        let live = std::sync::Arc::new(crate::live::test_entry());
        let registry = crate::live::test_registry(&live);
        let other = std::sync::Arc::new(registry.test_sibling(&live));
        let (l, o) = (live.clone(), other.clone());
        let task =
            tokio::spawn(
                async move { relay(&mut client_near, &mut up_near, Duration::from_secs(600), &l, None).await },
            );
        let bystander =
            tokio::spawn(
                async move { relay(&mut other_near, &mut other_up, Duration::from_secs(600), &o, None).await },
            );
        client_far.write_all(b"abc").await.unwrap();
        let mut b = [0u8; 3];
        up_far.read_exact(&mut b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(live.view().bytes_from_client, 3, "the relay published its count");
        assert!(live.kill());
        let out = tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert!(matches!(out.end, RelayEnd::Killed), "{:?}", out.end);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!bystander.is_finished(), "a kill ends only its own session");
        bystander.abort();
    }
}
