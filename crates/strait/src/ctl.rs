//! The control socket: `prefix/strait.sock`, a unix socket (mode 0600)
//! through which `strait reload` and `strait upgrade` reach the running
//! process, and through which the next generation of an upgrade takes the
//! listening sockets and the sessions.
//!
//! Every message is a frame: a 4-byte big-endian length, then that many
//! bytes of JSON. A frame that carries file descriptors says how many in
//! its `fds` field; they follow as one byte sent with `SCM_RIGHTS`, read
//! on its own so that no other read can take (and so close) them. Only a
//! peer running as this process's user (or root) is served.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use serde_json::{Value, json};

/// The largest frame either side accepts.
const MAX_FRAME: usize = 16 << 20;

/// The most descriptors one frame carries (the kernel's `SCM_MAX_FD` is 253).
pub(crate) const MAX_FDS: usize = 200;

/// The control socket's path under `prefix`.
pub(crate) fn socket_path(prefix: &Path) -> PathBuf {
    prefix.join("strait.sock")
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the control connection")]
    Closed,
    #[error("bad frame: {0}")]
    Bad(String),
}

/// One end of a control connection (blocking).
#[derive(Debug)]
pub(crate) struct Wire {
    stream: UnixStream,
}

impl Wire {
    pub(crate) fn new(stream: UnixStream) -> Wire {
        Wire { stream }
    }

    /// Another handle on the same connection.
    pub(crate) fn try_clone(&self) -> io::Result<Wire> {
        Ok(Wire { stream: self.stream.try_clone()? })
    }

    /// Connects to the control socket at `path`.
    pub(crate) fn connect(path: &Path) -> io::Result<Wire> {
        Ok(Wire { stream: UnixStream::connect(path)? })
    }

    /// No more frames from this end; the peer's still arrive.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    pub(crate) fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)?;
        self.stream.set_write_timeout(t)
    }

    /// Sends `msg` (an object), and `fds` with it.
    pub(crate) fn send(&mut self, mut msg: Value, fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
        if fds.len() > MAX_FDS {
            return Err(WireError::Bad(format!("{} descriptors in one frame (at most {MAX_FDS})", fds.len())));
        }
        if !fds.is_empty() {
            msg["fds"] = json!(fds.len());
        }
        let body = serde_json::to_vec(&msg).map_err(|e| WireError::Bad(e.to_string()))?;
        if body.len() > MAX_FRAME {
            return Err(WireError::Bad(format!("a frame of {} bytes (at most {MAX_FRAME})", body.len())));
        }
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame)?;
        if !fds.is_empty() {
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(WireError::Bad("no room for the descriptors".into()));
            }
            let sent = rustix::net::sendmsg(&self.stream, &[IoSlice::new(b"F")], &mut control, SendFlags::NOSIGNAL)
                .map_err(io::Error::from)?;
            if sent != 1 {
                return Err(WireError::Bad("the descriptors' byte was not sent".into()));
            }
        }
        Ok(())
    }

    /// Receives one frame and the descriptors it carries.
    pub(crate) fn recv(&mut self) -> Result<(Value, Vec<OwnedFd>), WireError> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(WireError::Bad(format!("a frame of {len} bytes (at most {MAX_FRAME})")));
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => WireError::Closed,
            _ => e.into(),
        })?;
        let msg: Value = serde_json::from_slice(&body).map_err(|e| WireError::Bad(format!("not JSON: {e}")))?;
        if !msg.is_object() {
            return Err(WireError::Bad("not a JSON object".into()));
        }
        let n = msg.get("fds").and_then(Value::as_u64).unwrap_or(0) as usize;
        if n > MAX_FDS {
            return Err(WireError::Bad(format!("{n} descriptors announced (at most {MAX_FDS})")));
        }
        let mut fds = Vec::with_capacity(n);
        if n > 0 {
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(n))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut byte = [0u8; 1];
            let got = rustix::net::recvmsg(
                &self.stream,
                &mut [IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            if got.bytes == 0 {
                return Err(WireError::Closed);
            }
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = m {
                    fds.extend(received);
                }
            }
            if got.flags.contains(ReturnFlags::CTRUNC) || fds.len() != n {
                return Err(WireError::Bad(format!("{n} descriptors announced, {} received", fds.len())));
            }
        }
        Ok((msg, fds))
    }

    /// The peer's process id and user id, from the kernel.
    pub(crate) fn peer(&self) -> io::Result<(u32, u32)> {
        let cred = rustix::net::sockopt::socket_peercred(self.stream.as_fd()).map_err(io::Error::from)?;
        Ok((cred.pid.as_raw_nonzero().get() as u32, cred.uid.as_raw()))
    }

    /// Whether the peer may command this process: the same user, or root.
    pub(crate) fn peer_allowed(&self) -> io::Result<bool> {
        let (_, uid) = self.peer()?;
        Ok(uid == 0 || uid == rustix::process::geteuid().as_raw())
    }
}

/// What the control socket at a path turned out to be.
pub(crate) enum Found {
    /// Nothing there, or a socket no process listens on (left by a crash).
    Free,
    /// A running Strait answered.
    Live(Value),
}

/// Asks whoever listens at `path` who they are.
pub(crate) fn probe(path: &Path) -> Found {
    let Ok(mut w) = Wire::connect(path) else { return Found::Free };
    let _ = w.set_timeout(Some(Duration::from_secs(5)));
    match w.send(json!({ "cmd": "status" }), &[]).and_then(|()| w.recv()) {
        Ok((v, _)) => Found::Live(v),
        // Something listens but does not answer: not ours to replace.
        Err(_) => Found::Live(json!({ "pid": null })),
    }
}

/// Sends one request to the running process at `prefix` and waits up to
/// `timeout` for its answer.
pub(crate) fn request(prefix: &Path, msg: Value, timeout: Duration) -> anyhow::Result<Value> {
    use anyhow::Context;
    let path = socket_path(prefix);
    let mut w = Wire::connect(&path).with_context(|| {
        format!("cannot reach a running strait at {} (is it running with this prefix?)", path.display())
    })?;
    w.set_timeout(Some(timeout))?;
    w.send(msg, &[])?;
    let (answer, _) = w.recv().context("no answer from the running strait")?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_json_and_descriptors_and_bad_frames_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Wire::new(a), Wire::new(b));
        let (p, q) = UnixStream::pair().unwrap();
        a.send(json!({"hello": 1}), &[]).unwrap();
        a.send(json!({"with": "fds"}), &[p.as_fd(), q.as_fd()]).unwrap();
        a.send(json!({"after": true}), &[]).unwrap();
        let (m, fds) = b.recv().unwrap();
        assert_eq!((m["hello"].as_i64(), fds.len()), (Some(1), 0));
        let (m, fds) = b.recv().unwrap();
        assert_eq!((m["with"].as_str(), fds.len()), (Some("fds"), 2));
        // The received descriptors are the same sockets.
        let mut p2 = UnixStream::from(fds.into_iter().next().unwrap());
        p2.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        (&q).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        let (m, _) = b.recv().unwrap();
        assert_eq!(m["after"], json!(true));
        // Garbage and oversized frames are refused, not trusted.
        let (c, d) = UnixStream::pair().unwrap();
        let mut d = Wire::new(d);
        (&c).write_all(&5u32.to_be_bytes()).unwrap();
        (&c).write_all(b"nope!").unwrap();
        assert!(matches!(d.recv(), Err(WireError::Bad(_))));
        (&c).write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(matches!(d.recv(), Err(WireError::Bad(_))));
        drop(c);
        assert!(matches!(d.recv(), Err(WireError::Closed)));
        assert!(a.peer_allowed().unwrap());
    }
}
