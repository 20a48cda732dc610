//! A stream that first replays bytes already read from it.
//!
//! Classifying a session reads the client's first bytes (to find a
//! ClientHello); whatever happens next — a TLS handshake, passthrough, plain
//! relay — must see those bytes again, in order. The buffer is freed as soon
//! as it has been replayed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct Rewind<S> {
    /// Boxed, `None` once replayed: a plain session keeps its stream in this
    /// wrapper for its whole life, and one word is all it then costs.
    replay: Option<Box<Replay>>,
    inner: S,
}

#[derive(Debug)]
struct Replay {
    bytes: Vec<u8>,
    pos: usize,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        let replay = (!prefix.is_empty()).then(|| Box::new(Replay { bytes: prefix, pos: 0 }));
        Rewind { replay, inner }
    }

    /// The bytes not yet replayed, taken: reading goes to the stream from now on.
    pub fn take_replay(&mut self) -> Vec<u8> {
        match self.replay.take() {
            Some(mut r) => r.bytes.split_off(r.pos),
            None => Vec::new(),
        }
    }

    /// The stream itself, and the bytes not yet replayed.
    pub fn into_parts(mut self) -> (S, Vec<u8>) {
        let rest = self.take_replay();
        (self.inner, rest)
    }

    /// The underlying stream, once every replayed byte has been read (so
    /// reading it directly loses nothing); `None` before that.
    pub fn drained(&self) -> Option<&S> {
        self.replay.is_none().then_some(&self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(r) = self.replay.as_mut() {
            let n = (r.bytes.len() - r.pos).min(buf.remaining());
            buf.put_slice(&r.bytes[r.pos..r.pos + n]);
            r.pos += n;
            if r.pos == r.bytes.len() {
                self.replay = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replays_prefix_then_reads_inner() {
        let inner: &[u8] = b" world";
        let mut r = Rewind::new(b"hello".to_vec(), inner);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn small_reads_split_the_prefix() {
        let inner: &[u8] = b"!";
        let mut r = Rewind::new(b"abc".to_vec(), inner);
        let mut one = [0u8; 2];
        assert_eq!(r.read(&mut one).await.unwrap(), 2);
        assert_eq!(&one, b"ab");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"c!");
    }
}
