//! Runs the real `strait` binary for a test: writes a settings file and a
//! declarative file into a fresh folder, starts the process, waits (bounded)
//! until it says it is serving, and kills it when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::WAIT;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh folder under the system temp folder, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("strait-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write test file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start a gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub stream_listen: String,
    pub declarative: String,
    /// Extra `key = value` lines for the settings file (values already TOML).
    pub settings: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
}

impl GatewayConfig {
    pub fn new(stream_listen: impl Into<String>, declarative: impl Into<String>) -> Self {
        GatewayConfig {
            stream_listen: stream_listen.into(),
            declarative: declarative.into(),
            settings: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn setting(mut self, key: &str, toml_value: &str) -> Self {
        self.settings.push((key.into(), toml_value.into()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A running gateway process.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    pub dir: TempDir,
    pub access_log: PathBuf,
    /// The settings file it was started with.
    pub conf: PathBuf,
    stderr: Arc<Mutex<String>>,
    /// The generations binary upgrades started (killed on drop too).
    generations: Mutex<Vec<u32>>,
}

impl Gateway {
    /// Starts `bin` (the test's `CARGO_BIN_EXE_strait`) and waits until it serves.
    pub fn start(bin: &Path, cfg: GatewayConfig) -> Gateway {
        let dir = TempDir::new();
        let yml = dir.write("kong.yml", &cfg.declarative);
        let access_log = dir.path().join("access.log");
        // Defaults for a test: DB-less, no Admin API; any of them overridable.
        let mut settings: Vec<(String, String)> = vec![
            ("prefix".into(), format!("{:?}", dir.path().join("prefix"))),
            ("database".into(), "\"off\"".into()),
            ("admin_listen".into(), "\"off\"".into()),
            ("admin_gui_listen".into(), "\"off\"".into()),
            ("declarative_config".into(), format!("{yml:?}")),
            ("stream_listen".into(), format!("{:?}", cfg.stream_listen)),
            ("proxy_stream_access_log".into(), format!("{access_log:?}")),
        ];
        for (k, v) in &cfg.settings {
            settings.retain(|(key, _)| key != k);
            settings.push((k.clone(), v.clone()));
        }
        let toml: String = settings.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let conf = dir.write("strait.toml", &toml);
        let mut cmd = Command::new(bin);
        cmd.arg("start").arg("-c").arg(&conf).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn strait");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr pipe");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let mut gw = Gateway { child, dir, access_log, conf, stderr, generations: Mutex::new(Vec::new()) };
        let deadline = Instant::now() + WAIT;
        loop {
            if gw.stderr().contains("strait started") {
                return gw;
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("strait exited with {status} before serving:\n{}", gw.stderr());
            }
            assert!(Instant::now() < deadline, "strait did not start in time:\n{}", gw.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The access log's lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Waits (bounded) for an access-log line containing every needle.
    pub async fn wait_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.log_lines().into_iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line with {needles:?}; log:\n{}\nstderr:\n{}",
                self.log_lines().join("\n"),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `bin` with `args` and this gateway's settings file (`-c`), bounded.
    pub fn cli(&self, bin: &Path, args: &[&str]) -> std::process::Output {
        let mut child = Command::new(bin)
            .args(args)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run strait");
        let deadline = Instant::now() + Duration::from_secs(180);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("strait {args:?} did not finish in time:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("strait output")
    }

    /// `strait upgrade`, which must succeed; gives the new generation's pid.
    pub fn upgrade(&self, bin: &Path) -> u32 {
        let out = self.cli(bin, &["upgrade"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "strait upgrade failed: {}{}\nstderr:\n{}",
            text,
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
        let pid = text
            .split("(pid ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {text:?}"));
        if let Ok(mut g) = self.generations.lock() {
            g.push(pid);
        }
        pid
    }

    /// The pid of the generation serving now.
    pub fn pid(&self) -> u32 {
        self.generations.lock().ok().and_then(|g| g.last().copied()).unwrap_or(self.child.id())
    }

    /// Sends `signal` (`HUP`, `USR1`, `USR2`, `TERM`, …) to the generation serving now.
    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Whether process `pid` still runs (and is not a zombie).
    pub fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits (bounded by `limit`) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "strait did not exit in time:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Has the process exited?
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let pids = self.generations.lock().map(|g| g.clone()).unwrap_or_default();
        for pid in pids {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Indents PEM text for a YAML block scalar at `spaces` columns.
pub fn yaml_block(pem: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    pem.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// A `certificates` list item with the certificate's PEM and its `snis`.
pub fn certificate_yaml(pem: &crate::certs::Pem, snis: &[&str]) -> String {
    format!(
        "- cert: |\n{}  key: |\n{}  snis: [{}]\n",
        yaml_block(&pem.cert, 4),
        yaml_block(&pem.key, 4),
        snis.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
    )
}

/// A declarative file with one `tcp` service towards `upstream` and one route.
/// `service_fields` and `route_fields` are YAML `key: value` lines.
pub fn one_route(upstream: std::net::SocketAddr, service_fields: &[&str], route_fields: &[&str]) -> String {
    let mut s = format!("_format_version: \"3.0\"\nservices:\n- url: tcp://{upstream}\n");
    for f in service_fields {
        s.push_str(&format!("  {f}\n"));
    }
    s.push_str("  routes:\n");
    for (i, f) in route_fields.iter().enumerate() {
        s.push_str(&format!("  {} {f}\n", if i == 0 { "-" } else { " " }));
    }
    s
}
