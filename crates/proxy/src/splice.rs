//! Zero-copy relaying between two plain TCP sockets with `splice(2)`.
//!
//! Bytes go socket → pipe → socket inside the kernel, so a plain session
//! never copies payload through user space. Measured on the benchmark's
//! iperf3 row (see `bench/README.md`): the proxy's CPU per GiB relayed drops
//! well below the copying relay's, which is the reason for the small
//! `unsafe` exception below (three system calls on file descriptors; no
//! memory is shared with the kernel).
//!
//! A direction holds a pipe only while bytes are in it, as the copying relay
//! holds a buffer: empty pipes go back to a per-thread pool, so an idle
//! session holds no pipe (no file descriptors, no kernel pages) and a busy
//! one reuses pooled pipes instead of creating them.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::relay::Failed;

/// Bytes moved per `splice` call: the default pipe capacity.
const CHUNK: usize = 64 * 1024;

/// Empty pipes kept per worker thread for reuse.
const POOL_MAX: usize = 64;

/// A pipe: the kernel buffer bytes pass through.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// An empty pipe from this thread's pool, or a new one.
fn take_pipe() -> io::Result<Pipe> {
    match PIPES.with(|p| p.borrow_mut().pop()) {
        Some(p) => Ok(p),
        None => new_pipe(),
    }
}

/// Returns an empty pipe to this thread's pool (closed when the pool is
/// full, or when the thread is exiting and its pool is gone).
fn give_pipe(pipe: Pipe) {
    let _ = PIPES.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(pipe);
        }
    });
}

/// Set once `splice` or `pipe2` turned out not to work here (a seccomp
/// filter, a kernel without it, no file descriptors left): later sessions
/// copy from the start instead of trying.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Whether bulk data should be spliced.
pub(crate) fn available() -> bool {
    !UNAVAILABLE.load(Ordering::Relaxed)
}

/// Errors that mean "splicing cannot be used here", not "the peer failed".
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EPERM | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    )
}

#[allow(unsafe_code)]
fn new_pipe() -> io::Result<Pipe> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `pipe2` writes two new descriptors into the two-element array
    // it is given, and nothing else.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and belong to no one else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(Pipe { read, write })
}

/// Moves up to `len` bytes from `from` to `to` without blocking; one of
/// them must be a pipe. Writing into a socket whose peer has gone gives
/// EPIPE and raises SIGPIPE (splice has no MSG_NOSIGNAL): Rust binaries
/// ignore SIGPIPE, so this is an error like any other write's.
#[allow(unsafe_code)]
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: the descriptors are open for the duration of the call (the
    // caller borrows their owners); null offsets mean "current position",
    // and no user memory is involved.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// One direction of a spliced session.
#[derive(Debug, Default)]
pub(crate) struct SpliceHalf {
    pipe: Option<Pipe>,
    /// Bytes in the pipe, not yet written out.
    in_pipe: usize,
    eof: bool,
    shut: bool,
    pub(crate) bytes: u64,
    /// Splicing turned out not to work before anything moved: the caller
    /// goes back to copying.
    pub(crate) fallback: bool,
}

impl Drop for SpliceHalf {
    fn drop(&mut self) {
        // A pipe with bytes left in it is closed, never reused.
        if let Some(p) = self.pipe.take().filter(|_| self.in_pipe == 0) {
            give_pipe(p);
        }
    }
}

impl SpliceHalf {
    /// Moves as much as possible from `reader` to `writer`; `Ready(Ok)` once
    /// the reader ended and the writer's sending side has been shut down.
    pub(crate) fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        reader: &TcpStream,
        writer: &TcpStream,
        progress: &mut bool,
    ) -> Poll<Result<(), Failed>> {
        loop {
            while self.in_pipe > 0 {
                let Some(pipe) = &self.pipe else {
                    self.in_pipe = 0;
                    break;
                };
                ready!(writer.poll_write_ready(cx)).map_err(Failed::Write)?;
                let to = writer.as_raw_fd();
                match writer.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to, self.in_pipe)) {
                    Ok(0) => return Poll::Ready(Err(Failed::Write(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.bytes += n as u64;
                        *progress = true;
                    }
                    // Readiness was cleared: the next poll waits for it.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(Failed::Write(e))),
                }
            }
            if self.eof {
                if let Some(p) = self.pipe.take() {
                    give_pipe(p);
                }
                if !self.shut {
                    socket2::SockRef::from(writer).shutdown(std::net::Shutdown::Write).map_err(Failed::Write)?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }
            match reader.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Read(e))),
                Poll::Pending => {
                    // Nothing in flight: the empty pipe goes back to the pool.
                    if let Some(p) = self.pipe.take() {
                        give_pipe(p);
                    }
                    return Poll::Pending;
                }
            }
            let pipe = match self.pipe.take().map_or_else(take_pipe, Ok) {
                Ok(p) => p,
                Err(e) => return self.give_up(e),
            };
            let from = reader.as_raw_fd();
            // The pipe is empty here, so a would-block can only be the socket's.
            let r = reader.try_io(Interest::READABLE, || splice(from, pipe.write.as_raw_fd(), CHUNK));
            self.pipe = Some(pipe);
            match r {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.in_pipe = n;
                    *progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Nothing is in flight: the caller can copy instead.
                Err(e) if unsupported(&e) => return self.give_up(e),
                Err(e) => return Poll::Ready(Err(Failed::Read(e))),
            }
        }
    }
}

impl SpliceHalf {
    /// The bytes in the pipe, read out (a session being handed over: the
    /// pipe does not travel, its bytes do). The pipe is non-blocking and
    /// holds `in_pipe` bytes, so the reads never wait.
    pub(crate) fn drain_pipe(&mut self) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut out = Vec::with_capacity(self.in_pipe);
        if let Some(pipe) = self.pipe.take() {
            let mut f = std::fs::File::from(pipe.read);
            while out.len() < self.in_pipe {
                let mut chunk = vec![0u8; self.in_pipe - out.len()];
                match f.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            // Its write end closes with it: this pipe is never pooled.
            drop(pipe.write);
        }
        if out.len() != self.in_pipe {
            return Err(io::Error::other(format!("{} bytes in the pipe, {} read", self.in_pipe, out.len())));
        }
        self.in_pipe = 0;
        Ok(out)
    }

    /// Splicing failed for a local reason while nothing was in flight.
    fn give_up(&mut self, e: io::Error) -> Poll<Result<(), Failed>> {
        if !UNAVAILABLE.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "splice(2) is not usable here: relaying by copying");
        }
        if let Some(p) = self.pipe.take() {
            give_pipe(p);
        }
        self.fallback = true;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn moves_bytes_and_the_end_of_stream_between_sockets() {
        // far_in → near_in ==splice==> near_out → far_out
        let (mut far_in, near_in) = pair().await;
        let (near_out, mut far_out) = pair().await;
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            far_in.write_all(&sent).await.unwrap();
            far_in.shutdown().await.unwrap();
            far_in
        });
        let mut half = SpliceHalf::default();
        let mut progress = false;
        let pump = async {
            let r = poll_fn(|cx| half.poll_copy(cx, &near_in, &near_out, &mut progress)).await;
            assert!(r.is_ok());
            half.bytes
        };
        let read = async {
            let mut got = Vec::new();
            far_out.read_to_end(&mut got).await.unwrap();
            got
        };
        let (moved, got) = tokio::join!(pump, read);
        assert_eq!(moved, payload.len() as u64);
        assert!(got == payload, "the bytes arrive in order and intact");
        drop(writer.await.unwrap());
        assert!(PIPES.with(|p| !p.borrow().is_empty()), "the empty pipe went back to the pool");
    }

    #[test]
    fn a_pipe_with_bytes_left_is_closed_not_pooled() {
        let pipe = new_pipe().unwrap();
        let fd = pipe.read.as_raw_fd();
        // Bytes another session must never see.
        assert_eq!(write_into(&pipe, b"secret"), 6);
        drop(SpliceHalf { pipe: Some(pipe), in_pipe: 6, ..SpliceHalf::default() });
        assert!(PIPES.with(|p| p.borrow().iter().all(|q| q.read.as_raw_fd() != fd)), "not pooled");
    }

    /// Writes into a pipe through std (a `File` over a duplicate of its write end).
    fn write_into(pipe: &Pipe, bytes: &[u8]) -> usize {
        use std::io::Write;
        let mut f = std::fs::File::from(pipe.write.try_clone().unwrap());
        f.write(bytes).unwrap()
    }

    #[test]
    fn a_drained_pipe_gives_its_bytes_in_order() {
        let pipe = new_pipe().unwrap();
        assert_eq!(write_into(&pipe, b"in flight"), 9);
        let mut half = SpliceHalf { pipe: Some(pipe), in_pipe: 9, ..SpliceHalf::default() };
        assert_eq!(half.drain_pipe().unwrap(), b"in flight");
        assert_eq!(half.in_pipe, 0);
        assert!(half.pipe.is_none());
    }

    #[test]
    fn a_pooled_pipe_is_reused() {
        let p = take_pipe().unwrap();
        let fd = p.read.as_raw_fd();
        give_pipe(p);
        let q = take_pipe().unwrap();
        assert_eq!(q.read.as_raw_fd(), fd);
    }
}
