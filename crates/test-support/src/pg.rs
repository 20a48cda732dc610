//! A private PostgreSQL server for one test: `initdb` into a fresh folder,
//! listening on 127.0.0.1 on a free port with password authentication, so a
//! test may stop and restart it (an outage) without touching anyone else's
//! database. Stopped and removed on drop.
//!
//! The server binaries are found in `STRAIT_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`. Without them the tests fail and
//! say how to install them; `STRAIT_SKIP_PG_TESTS=1` skips them instead, for
//! developers without PostgreSQL (CI never sets it).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::gateway::TempDir;

/// The `postgres` role's password on every test server.
pub const PASSWORD: &str = "strait-test-secret";

/// A running private PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: TempDir,
    pub port: u16,
    /// Run the server tools as this user (initdb refuses root).
    run_as: Option<&'static str>,
}

/// Whether PostgreSQL tests run here: `None` means skip (the caller
/// returns); panics with the fix when the binaries are missing and skipping
/// was not asked for.
pub fn available() -> Option<PathBuf> {
    if let Some(bin) = find_bin() {
        return Some(bin);
    }
    if std::env::var("STRAIT_SKIP_PG_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("PostgreSQL tests skipped: STRAIT_SKIP_PG_TESTS=1");
        return None;
    }
    panic!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (apt-get install postgresql), \
         or point STRAIT_PG_BIN at their folder, or set STRAIT_SKIP_PG_TESTS=1 to skip these tests"
    );
}

fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STRAIT_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    if let Some(newest) = versions.pop() {
        return Some(newest);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

impl PgServer {
    /// Starts a fresh server, or `None` when PostgreSQL tests are skipped.
    pub fn start() -> Option<PgServer> {
        let bin = available()?;
        let dir = TempDir::new();
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let run_as = root.then_some("postgres");
        let server = PgServer { bin, dir, port: crate::free_port(), run_as };
        let pwfile = server.dir.write("pwfile", PASSWORD);
        if let Some(user) = run_as {
            let ok = Command::new("chown").arg("-R").arg(user).arg(server.dir.path()).status();
            assert!(ok.is_ok_and(|s| s.success()), "chown the test database folder to {user}");
        }
        let out = server.tool(
            "initdb",
            &[
                "-D",
                &server.data().display().to_string(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(out.status.success(), "initdb failed:\n{}", String::from_utf8_lossy(&out.stderr));
        server.start_again();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tool(&self, name: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(name);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(self.dir.path()).output().unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
    }

    /// Starts the server (again, after [`PgServer::stop`]) and waits until it answers.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        let out = self.tool(
            "pg_ctl",
            &["start", "-w", "-t", "30", "-D", &self.data().display().to_string(), "-l", &log, "-o", &opts],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
        let deadline = Instant::now() + crate::WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop(&self) {
        let out =
            self.tool("pg_ctl", &["stop", "-w", "-t", "30", "-m", "fast", "-D", &self.data().display().to_string()]);
        assert!(out.status.success(), "pg_ctl stop failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs SQL as `postgres` over the local socket (trusted); panics on failure.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let psql = if self.bin.join("psql").exists() { self.bin.join("psql") } else { PathBuf::from("psql") };
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&psql);
                c
            }
            None => Command::new(&psql),
        };
        let out = cmd
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", database, "-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("run psql: {e}"));
        assert!(out.status.success(), "psql {sql:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates a database and returns its name.
    pub fn create_database(&self, name: &str) -> String {
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        name.to_owned()
    }

    /// The gateway settings (TOML values) that point at `database` here.
    pub fn settings(&self, database: &str) -> Vec<(String, String)> {
        vec![
            ("database".into(), "\"postgres\"".into()),
            ("pg_host".into(), "\"127.0.0.1\"".into()),
            ("pg_port".into(), self.port.to_string()),
            ("pg_user".into(), "\"postgres\"".into()),
            ("pg_password".into(), format!("{PASSWORD:?}")),
            ("pg_database".into(), format!("{database:?}")),
        ]
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.tool("pg_ctl", &["stop", "-m", "immediate", "-D", &self.data().display().to_string()]);
    }
}
