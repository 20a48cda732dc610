//! `strait-bench`: the pieces `bench/run.sh` drives — test certificates,
//! echo backends (plain and TLS), a correctness check, and load generators
//! for new sessions per second, request/response latency and idle
//! connections. Results are printed as `key=value` lines for the script.
//!
//! Not part of the product: nothing in `crates/` depends on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "Load generator and backends for Strait's benchmark")]
struct Cli {
    /// Runtime worker threads.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a CA and ECDSA P-256 server certificates for bench.test and pt.test.
    Certs {
        #[arg(long)]
        out: PathBuf,
    },
    /// Echoes every byte back (TLS with --cert/--key).
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Checks that `to` echoes 64 bytes (over TLS for --sni, verifying the
    /// certificate against --ca); with --refused, that it does not.
    Check {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        sni: Option<String>,
        #[arg(long)]
        ca: Option<PathBuf>,
        #[arg(long)]
        refused: bool,
    },
    /// New sessions: connect (+TLS), 64 bytes each way, close; `conc` at once.
    Rate {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 32)]
        conc: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long)]
        sni: Option<String>,
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Request/response latency over `conns` persistent connections.
    Latency {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// Opens `conns` connections, exchanges `bytes` on each, prints `ready`,
    /// and holds them until stdin closes.
    Idle {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        conns: usize,
        #[arg(long, default_value_t = 64)]
        bytes: usize,
        /// After this many connections, print `mark` and wait for a line on
        /// stdin before opening the rest (so a script can read the proxy's
        /// memory at both points and take the difference).
        #[arg(long)]
        mark: Option<usize>,
    },
    /// Micro-benchmarks: router lookups with 10 and 10,000 routes, and the
    /// ClientHello parser, in nanoseconds per operation.
    Micro {
        #[arg(long, default_value_t = 2_000_000)]
        iters: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads.max(1)).enable_all().build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Certs { out } => certs(&out),
            Cmd::Echo { listen, cert, key } => echo(listen, cert.zip(key)).await,
            Cmd::Check { to, sni, ca, refused } => check(to, sni, ca, refused).await,
            Cmd::Rate { to, conc, secs, sni, ca } => rate(to, conc, secs, sni, ca).await,
            Cmd::Latency { to, conns, secs } => latency(to, conns, secs).await,
            Cmd::Idle { to, conns, bytes, mark } => idle(to, conns, bytes, mark).await,
            Cmd::Micro { iters } => micro(iters),
        }
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(out: &std::path::Path) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(out)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "strait bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    std::fs::write(out.join("ca.pem"), ca.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);
    for name in ["bench.test", "pt.test"] {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &issuer)?;
        std::fs::write(out.join(format!("{name}.crt")), cert.pem())?;
        std::fs::write(out.join(format!("{name}.key")), key.serialize_pem())?;
        // HAProxy wants certificate and key in one file.
        std::fs::write(out.join(format!("{name}.pem")), cert.pem() + &key.serialize_pem())?;
    }
    Ok(())
}

fn server_config(cert: &PathBuf, key: &PathBuf) -> Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>().context("certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).context("key")?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// TLS 1.3 client trusting `ca`, with resumption off: every handshake is full.
fn client_config(ca: &PathBuf) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

async fn echo(listen: SocketAddr, tls: Option<(PathBuf, PathBuf)>) -> Result<()> {
    let acceptor = match &tls {
        Some((c, k)) => Some(tokio_rustls::TlsAcceptor::from(server_config(c, k)?)),
        None => None,
    };
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (s, _) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
                Some(a) => {
                    if let Ok(t) = a.accept(s).await {
                        let (mut r, mut w) = tokio::io::split(t);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                }
            }
        });
    }
}

/// One session: connect, optional TLS, write `msg`, read it back, close.
async fn session(
    to: SocketAddr,
    tls: Option<(&ServerName<'static>, &Arc<rustls::ClientConfig>)>,
    msg: &[u8],
) -> Result<()> {
    let tcp = TcpStream::connect(to).await?;
    let _ = tcp.set_nodelay(true);
    let mut back = vec![0u8; msg.len()];
    match tls {
        None => {
            let mut s = tcp;
            s.write_all(msg).await?;
            s.read_exact(&mut back).await?;
        }
        Some((name, config)) => {
            let mut s = tokio_rustls::TlsConnector::from(config.clone()).connect(name.clone(), tcp).await?;
            s.write_all(msg).await?;
            s.read_exact(&mut back).await?;
            let _ = s.shutdown().await;
        }
    }
    if back != msg {
        bail!("echo mismatch");
    }
    Ok(())
}

fn tls_target(
    sni: Option<String>,
    ca: Option<PathBuf>,
) -> Result<Option<(ServerName<'static>, Arc<rustls::ClientConfig>)>> {
    match (sni, ca) {
        (Some(sni), Some(ca)) => Ok(Some((ServerName::try_from(sni)?, client_config(&ca)?))),
        (None, None) => Ok(None),
        _ => bail!("--sni and --ca go together"),
    }
}

async fn check(to: SocketAddr, sni: Option<String>, ca: Option<PathBuf>, refused: bool) -> Result<()> {
    let tls = tls_target(sni, ca)?;
    let msg: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
    let result =
        tokio::time::timeout(Duration::from_secs(5), session(to, tls.as_ref().map(|(n, c)| (n, c)), &msg)).await;
    let ok = matches!(result, Ok(Ok(())));
    match (ok, refused) {
        (true, false) | (false, true) => {
            println!("check=ok");
            Ok(())
        }
        (true, true) => bail!("{to} served a session it should have refused"),
        (false, false) => bail!("{to} did not echo: {result:?}"),
    }
}

async fn rate(to: SocketAddr, conc: usize, secs: f64, sni: Option<String>, ca: Option<PathBuf>) -> Result<()> {
    let tls = Arc::new(tls_target(sni, ca)?);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let (tls, done, errors, stop) = (tls.clone(), done.clone(), errors.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let msg = [7u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let t = tls.as_ref().as_ref().map(|(n, c)| (n, c));
                match tokio::time::timeout(Duration::from_secs(5), session(to, t, &msg)).await {
                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!("sessions={n} errors={} secs={elapsed:.3} rate={:.1}", errors.load(Ordering::Relaxed), n as f64 / elapsed);
    Ok(())
}

async fn latency(to: SocketAddr, conns: usize, secs: f64) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns.max(1) {
        let stop = stop.clone();
        let mut s = TcpStream::connect(to).await?;
        s.set_nodelay(true)?;
        tasks.push(tokio::spawn(async move {
            let msg = [9u8; 64];
            let mut back = [0u8; 64];
            let mut samples = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if s.write_all(&msg).await.is_err() || s.read_exact(&mut back).await.is_err() {
                    break;
                }
                samples.push(t0.elapsed().as_nanos() as u64);
            }
            samples
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    if all.is_empty() {
        bail!("no request completed");
    }
    all.sort_unstable();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    println!("requests={} p50_us={:.1} p99_us={:.1} p999_us={:.1}", all.len(), q(0.50), q(0.99), q(0.999));
    Ok(())
}

async fn idle(to: SocketAddr, conns: usize, bytes: usize, mark: Option<usize>) -> Result<()> {
    let msg = vec![5u8; bytes];
    let mut held = Vec::with_capacity(conns);
    let mut back = vec![0u8; bytes];
    for i in 0..conns {
        if Some(i) == mark {
            println!("mark={i}");
            tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
        }
        let mut s = TcpStream::connect(to).await.with_context(|| format!("connection {i}"))?;
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
        held.push(s);
    }
    println!("ready={}", held.len());
    // Held until the script closes stdin (after it has read the RSS).
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)
    })
    .await;
    Ok(())
}

/// Times `op` over `iters` runs (after a warm-up) and prints ns per run.
fn time_op(name: &str, iters: u64, mut op: impl FnMut() -> bool) {
    for _ in 0..iters / 10 {
        std::hint::black_box(op());
    }
    let t0 = Instant::now();
    let mut hits = 0u64;
    for _ in 0..iters {
        hits += u64::from(std::hint::black_box(op()));
    }
    let ns = t0.elapsed().as_nanos() as f64 / iters as f64;
    println!("{name} ns_per_op={ns:.1} hits={hits}");
}

fn micro(iters: u64) -> Result<()> {
    use strait_router::{ConnKind, Facts, Router};
    for n in [10usize, 10_000] {
        // `n` routes on distinct destination addresses and ports, plus SNI routes.
        let mut yaml = String::from("_format_version: \"3.0\"\nservices:\n- url: tcp://127.0.0.1:1\n  routes:\n");
        for i in 0..n {
            yaml.push_str(&format!(
                "  - {{protocols: [tcp], destinations: [{{ip: 10.{}.{}.1, port: {}}}]}}\n",
                i / 250 % 250,
                i % 250,
                1000 + i % 50_000
            ));
            if i % 10 == 0 {
                yaml.push_str(&format!("  - {{protocols: [tls_passthrough], snis: [\"h{i}.example.com\"]}}\n"));
            }
        }
        yaml.push_str("  - {protocols: [tls_passthrough], snis: [\"*.wild.example.com\"]}\n");
        let config = strait_model::load_str(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?.config;
        let router = Router::new(&config);
        let mid = n / 2;
        let dst: SocketAddr = format!("10.{}.{}.1:{}", mid / 250 % 250, mid % 250, 1000 + mid % 50_000).parse()?;
        let src: SocketAddr = "192.0.2.7:40000".parse()?;
        let plain = Facts { src, dst, sni: None };
        time_op(&format!("router_{n}_routes_by_destination"), iters, || router.find(ConnKind::Plain, &plain).is_some());
        let sni = Facts { src, dst, sni: Some("a.b.wild.example.com") };
        time_op(&format!("router_{n}_routes_by_wildcard_sni"), iters, || {
            router.find(ConnKind::TlsOnPlain, &sni).is_some()
        });
    }
    // A real ClientHello, as rustls sends it.
    let config = client_config_insecure()?;
    let mut conn = rustls::ClientConnection::new(config, ServerName::try_from("db.example.com")?)?;
    let mut hello = Vec::new();
    conn.write_tls(&mut hello)?;
    time_op(&format!("client_hello_{}_bytes", hello.len()), iters, || {
        matches!(strait_wire::peek(&hello), strait_wire::Peek::Hello(_))
    });
    Ok(())
}

/// A client configuration that is only used to produce a ClientHello.
fn client_config_insecure() -> Result<Arc<rustls::ClientConfig>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
