//! The relay through a data phase: each chunk read from one side goes
//! through the session's data-phase plugins (`strait_plugin::Stream`) before
//! what they pass on is written to the other side.
//!
//! Only sessions whose chain has a data-phase instance come here; all
//! others keep the relay of `relay.rs` (splice between plain sockets) and
//! pay nothing. The idle timeout and the force-close signal are the same
//! `relay::Run`; what differs is each direction's step: read into a pooled
//! buffer, hand the bytes to the plugins, write what they pass on (in a
//! vector from the kit's per-thread pool, given back once written). The end of a stream
//! is forwarded once the plugins hold nothing more in that direction. A
//! plugin's stream control (another task resuming held bytes, or closing
//! the session) wakes the relay; a close flushes what was passed on first.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use strait_plugin::data::Requests;
use strait_plugin::{Closed, Direction};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::live::Live;
use crate::relay::{Buf, Directions, RelayEnd, RelayOutcome, Run, Side, give_buf, take_buf};

/// What the relay asks of the session's data phase.
pub(crate) trait Hooks: Send {
    /// `input` arrived going `direction` (`end_of_stream`: the last of it);
    /// what the plugins pass on is appended to `out`.
    fn data(
        &mut self,
        direction: Direction,
        input: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Closed>;
    /// Pass on what the plugins of `stages` (a bit each) hold going `direction`.
    fn resume(&mut self, direction: Direction, stages: u32, out: &mut Vec<u8>) -> Result<(), Closed>;
    /// `direction`'s sender will send no more.
    fn finished(&mut self, direction: Direction);
    /// Whether the plugins hold bytes going `direction`.
    fn holds(&self, direction: Direction) -> bool;
    /// What the plugins' stream control was asked.
    fn poll_requests(&self, cx: &mut Context<'_>) -> Poll<Requests>;
    /// Progress reports for log plugins: `(every, report(up, down))`.
    fn progress_every(&self) -> Option<Duration>;
    fn progress(&mut self, client_to_upstream: u64, upstream_to_client: u64);
}

/// One direction of a filtered relay.
struct Way {
    direction: Direction,
    /// Held only while a read is being made.
    buf: Option<Buf>,
    /// What the plugins passed on, not yet written (empty, without
    /// capacity, between chunks).
    out: Vec<u8>,
    written: usize,
    /// The reader ended (its end of stream went to the plugins).
    eof: bool,
    unflushed: bool,
    /// Written to the other side.
    bytes: u64,
    done: bool,
}

/// Why a direction stopped.
enum WayEnd {
    Read(io::Error),
    Write(io::Error),
    Stopped(Closed),
}

impl Way {
    fn new(direction: Direction) -> Way {
        Way { direction, buf: None, out: Vec::new(), written: 0, eof: false, unflushed: false, bytes: 0, done: false }
    }

    /// Writes what is pending; `Ready(Ok)` once nothing is.
    fn poll_flush_out<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
        progress: &mut bool,
    ) -> Poll<Result<(), WayEnd>> {
        while self.written < self.out.len() {
            match writer.as_mut().poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(WayEnd::Write(io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.bytes += n as u64;
                    self.unflushed = true;
                    *progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(WayEnd::Write(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Back to the pool once written: an idle session holds no vector.
        strait_plugin::data::pool::give(std::mem::take(&mut self.out));
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what is pending and flushes the writer (a TLS writer buffers).
    fn poll_flush_all<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
        progress: &mut bool,
    ) -> Poll<Result<(), WayEnd>> {
        ready!(self.poll_flush_out(cx, writer.as_mut(), progress))?;
        writer.poll_flush(cx).map_err(WayEnd::Write)
    }

    /// Moves as much as possible; `Ready(Ok)` once the reader ended, the
    /// plugins hold nothing more and the writer was shut down.
    fn poll_copy<R, W, H>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        hooks: &mut H,
        progress: &mut bool,
    ) -> Poll<Result<(), WayEnd>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
        H: Hooks + ?Sized,
    {
        loop {
            ready!(self.poll_flush_out(cx, writer.as_mut(), progress))?;
            if self.eof {
                // The end of the stream follows the last byte the plugins
                // let through; while they hold some, it waits (a resume
                // wakes the relay).
                if hooks.holds(self.direction) {
                    return self.poll_flush_tls(cx, writer);
                }
                ready!(writer.as_mut().poll_shutdown(cx)).map_err(WayEnd::Write)?;
                return Poll::Ready(Ok(()));
            }
            let buf = self.buf.get_or_insert_with(take_buf);
            let mut rb = ReadBuf::new(&mut buf[..]);
            let read = reader.as_mut().poll_read(cx, &mut rb);
            let n = rb.filled().len();
            match read {
                Poll::Ready(Ok(())) if n > 0 => {
                    *progress = true;
                    let input = &buf[..n];
                    hooks.data(self.direction, input, false, &mut self.out).map_err(WayEnd::Stopped)?;
                }
                // The end of the stream (a TLS peer may end without close_notify).
                Poll::Ready(Ok(())) => self.end(hooks)?,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => self.end(hooks)?,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(WayEnd::Read(e))),
                Poll::Pending => {
                    if let Some(buf) = self.buf.take() {
                        give_buf(buf);
                    }
                    return self.poll_flush_tls(cx, writer);
                }
            }
        }
    }

    /// The reader ended: the plugins see the end of the stream.
    fn end<H: Hooks + ?Sized>(&mut self, hooks: &mut H) -> Result<(), WayEnd> {
        self.eof = true;
        if let Some(buf) = self.buf.take() {
            give_buf(buf);
        }
        hooks.data(self.direction, &[], true, &mut self.out).map_err(WayEnd::Stopped)?;
        hooks.finished(self.direction);
        Ok(())
    }

    /// Nothing more to do now: flush what was written (TLS writers buffer).
    fn poll_flush_tls<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
    ) -> Poll<Result<(), WayEnd>> {
        if self.unflushed {
            ready!(writer.as_mut().poll_flush(cx)).map_err(WayEnd::Write)?;
            self.unflushed = false;
        }
        Poll::Pending
    }
}

impl Drop for Way {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_buf(buf);
        }
    }
}

/// Both directions of a session through its data phase.
struct Filtered<'a, C: ?Sized, U: ?Sized, H: ?Sized> {
    client: &'a mut C,
    upstream: &'a mut U,
    hooks: &'a mut H,
    c2u: Way,
    u2c: Way,
    /// A plugin closed the session: what was passed on is flushed, then it ends.
    closing: Option<Closed>,
    /// Progress reports for log plugins, when they ask for them.
    tick: Option<(Duration, Pin<Box<Sleep>>)>,
}

fn side_of(d: Direction) -> Side {
    match d {
        Direction::Downstream => Side::Client,
        Direction::Upstream => Side::Upstream,
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    }
}

impl<C, U, H> Filtered<'_, C, U, H>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    H: Hooks + ?Sized,
{
    /// What the stream control asked (resume held bytes, close).
    fn requests(&mut self, cx: &mut Context<'_>) -> Result<(), Closed> {
        while let Poll::Ready(r) = self.hooks.poll_requests(cx) {
            if r.resume_downstream != 0 {
                self.hooks.resume(Direction::Downstream, r.resume_downstream, &mut self.c2u.out)?;
            }
            if r.resume_upstream != 0 {
                self.hooks.resume(Direction::Upstream, r.resume_upstream, &mut self.u2c.out)?;
            }
            if let Some((plugin, failure)) = r.close {
                self.closing = Some(match failure {
                    None => Closed::ByPlugin { plugin },
                    Some(reason) => Closed::Failed { plugin: Some(plugin), reason },
                });
                return Ok(());
            }
        }
        Ok(())
    }
}

impl<C, U, H> Directions for Filtered<'_, C, U, H>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    H: Hooks + ?Sized,
{
    fn drive(
        &mut self,
        cx: &mut Context<'_>,
        progress: &mut bool,
        first_closed: &mut Option<Side>,
    ) -> Option<RelayEnd> {
        if self.closing.is_none()
            && let Err(closed) = self.requests(cx)
        {
            // A plugin closed while resuming: what went before still goes.
            self.closing = Some(closed);
        }
        if let Some(closed) = &self.closing {
            // Flush what the plugins passed on, through any TLS writer's
            // buffer (failures end at once), then end.
            let flushing = matches!(closed, Closed::ByPlugin { .. });
            let c = flushing.then(|| self.c2u.poll_flush_all(cx, Pin::new(&mut *self.upstream), progress));
            let u = flushing.then(|| self.u2c.poll_flush_all(cx, Pin::new(&mut *self.client), progress));
            let pending = matches!(c, Some(Poll::Pending)) || matches!(u, Some(Poll::Pending));
            if pending {
                return None;
            }
            return self.closing.take().map(RelayEnd::Stopped);
        }
        if let Some((every, tick)) = self.tick.as_mut() {
            while tick.as_mut().poll(cx).is_ready() {
                self.hooks.progress(self.c2u.bytes, self.u2c.bytes);
                tick.as_mut().reset(Instant::now() + *every);
            }
        }
        for d in [Direction::Downstream, Direction::Upstream] {
            let r = match d {
                Direction::Downstream if !self.c2u.done => self.c2u.poll_copy(
                    cx,
                    Pin::new(&mut *self.client),
                    Pin::new(&mut *self.upstream),
                    &mut *self.hooks,
                    progress,
                ),
                Direction::Upstream if !self.u2c.done => self.u2c.poll_copy(
                    cx,
                    Pin::new(&mut *self.upstream),
                    Pin::new(&mut *self.client),
                    &mut *self.hooks,
                    progress,
                ),
                _ => continue,
            };
            let from = side_of(d);
            match r {
                Poll::Ready(Ok(())) => {
                    match d {
                        Direction::Downstream => self.c2u.done = true,
                        Direction::Upstream => self.u2c.done = true,
                    }
                    first_closed.get_or_insert(from);
                }
                Poll::Ready(Err(WayEnd::Read(error))) => return Some(RelayEnd::Error { side: from, error }),
                Poll::Ready(Err(WayEnd::Write(error))) => return Some(RelayEnd::Error { side: other(from), error }),
                Poll::Ready(Err(WayEnd::Stopped(closed))) => {
                    self.closing = Some(closed);
                    return self.drive(cx, progress, first_closed);
                }
                Poll::Pending => {}
            }
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

/// Relays between `client` and `upstream` through the session's data
/// phase (`hooks`), until both close, the session is idle for `idle`, a
/// plugin ends it, or every session is closed by force.
pub(crate) fn relay_filtered<'a, C, U, H>(
    client: &'a mut C,
    upstream: &'a mut U,
    hooks: &'a mut H,
    idle: Duration,
    live: &'a Live,
) -> impl Future<Output = RelayOutcome> + 'a
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    H: Hooks + ?Sized,
{
    let tick = hooks.progress_every().map(|every| (every, Box::pin(tokio::time::sleep(every))));
    let d = Filtered {
        client,
        upstream,
        hooks,
        c2u: Way::new(Direction::Downstream),
        u2c: Way::new(Direction::Upstream),
        closing: None,
        tick,
    };
    Run::new(d, idle, live, None)
}
