//! Backends for tests: servers that announce their name, then echo.
//!
//! A backend first writes `<name>\n` (so a test knows which service served
//! it, and so it behaves like a server-speaks-first protocol), then echoes
//! everything it reads, and closes its side after the client closes its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::WAIT;

/// A running backend; stops when dropped.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// A plain TCP backend on 127.0.0.1.
    pub async fn plain(name: &str) -> Backend {
        Backend::spawn(name, "127.0.0.1:0", None, Duration::ZERO).await
    }

    /// A plain TCP backend on a chosen address (e.g. to restart one on the
    /// same port, or to serve one port on several loopback addresses).
    pub async fn plain_at(name: &str, addr: SocketAddr) -> Backend {
        Backend::spawn(name, &addr.to_string(), None, Duration::ZERO).await
    }

    /// A TLS backend on 127.0.0.1 serving `config`.
    pub async fn tls(name: &str, config: Arc<ServerConfig>) -> Backend {
        Backend::spawn(name, "127.0.0.1:0", Some(TlsAcceptor::from(config)), Duration::ZERO).await
    }

    /// A TLS backend that waits `delay` before answering each handshake: a
    /// slow upstream, for latency-based balancing.
    pub async fn tls_slow(name: &str, config: Arc<ServerConfig>, delay: Duration) -> Backend {
        Backend::spawn(name, "127.0.0.1:0", Some(TlsAcceptor::from(config)), delay).await
    }

    /// Sessions accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    async fn spawn(name: &str, bind: &str, tls: Option<TlsAcceptor>, delay: Duration) -> Backend {
        let listener = TcpListener::bind(bind).await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (n, count) = (name.to_owned(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (n, tls) = (n.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => announce_and_echo(stream, &n).await,
                        Some(acc) => {
                            tokio::time::sleep(delay).await;
                            if let Ok(Ok(s)) = tokio::time::timeout(WAIT, acc.accept(stream)).await {
                                announce_and_echo(s, &n).await;
                            }
                        }
                    }
                });
            }
        });
        Backend { addr, name: name.to_owned(), accepted, task }
    }
}

async fn announce_and_echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, name: &str) {
    if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown().await;
}

/// Reads the backend's `<name>\n` banner, byte by byte so nothing after it is consumed.
pub async fn read_banner<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<String> {
    let read = async {
        let mut line = Vec::new();
        loop {
            let b = s.read_u8().await?;
            if b == b'\n' {
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            line.push(b);
            if line.len() > 256 {
                return Err(std::io::Error::other("banner too long"));
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no banner"))?
}

/// Connects to the gateway from a chosen local address (any 127.x.y.z).
pub async fn connect_from(local_ip: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(local_ip.parse().expect("local ip"), 0)).expect("bind client");
    tokio::time::timeout(WAIT, socket.connect(to)).await.expect("connect timed out").expect("connect")
}

/// Opens a TLS session to `to` with `sni`, using `config`.
pub async fn tls_connect(
    to: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(to)).await??;
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// True when the peer closes (or resets) without sending a byte.
pub async fn closed_without_data<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut b = [0u8; 1];
    match tokio::time::timeout(WAIT, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("peer neither closed nor sent anything within {WAIT:?}"),
    }
}

/// A UDP backend on 127.0.0.1 that answers each datagram with `<name>:`
/// followed by the datagram; stops when dropped.
#[derive(Debug)]
pub struct UdpBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpBackend {
    pub async fn start(name: &str) -> UdpBackend {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind udp backend");
        let addr = socket.local_addr().expect("udp backend addr");
        let prefix = format!("{name}:").into_bytes();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let reply = [prefix.as_slice(), &buf[..n]].concat();
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        UdpBackend { addr, task }
    }
}
