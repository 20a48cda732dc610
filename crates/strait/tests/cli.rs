//! The command line: start/check/config parse/config init, and bad input.

use std::path::Path;
use std::process::{Command, Output};

use test_support::gateway::TempDir;

fn strait(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .current_dir(dir)
        .env_remove("STRAIT_STREAM_LISTEN")
        .output()
        .expect("run strait")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn version_and_help_with_examples() {
    let dir = TempDir::new();
    let v = strait(&["--version"], dir.path());
    assert!(v.status.success());
    assert!(text(&v).contains(env!("CARGO_PKG_VERSION")));
    let h = strait(&["--help"], dir.path());
    assert!(h.status.success());
    let h = text(&h);
    for needle in ["start", "check", "config", "Examples:", "STRAIT_STREAM_LISTEN"] {
        assert!(h.contains(needle), "--help lacks {needle}: {h}");
    }
}

#[test]
fn config_init_writes_a_valid_file_and_never_overwrites() {
    let dir = TempDir::new();
    let o = strait(&["config", "init", "mine.yml"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let o = strait(&["config", "parse", "mine.yml"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("parse successful"));
    let again = strait(&["config", "init", "mine.yml"], dir.path());
    assert!(!again.status.success());
    assert!(text(&again).contains("never overwritten"));
}

#[test]
fn the_quick_start_example_is_valid() {
    let dir = TempDir::new();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let o = strait(&["config", "parse", &format!("{examples}/strait.yml")], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("parse successful"), "{t}");
}

#[test]
fn config_parse_names_the_bad_field() {
    let dir = TempDir::new();
    dir.write(
        "bad.yml",
        "_format_version: \"3.0\"\nservices:\n- name: s\n  url: tcp://127.0.0.1:1\n  routes:\n  - name: r\n    protocols: [tcp]\n    destinations: [{port: 123456}]\n",
    );
    let o = strait(&["config", "parse", "bad.yml"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("route services[1].routes[1] (name 'r'): destinations[1].port: value should be between 0 and 65535"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
    let o = strait(&["config", "parse", "missing.yml"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("cannot read"));
}

#[test]
fn check_reports_bad_settings_by_key() {
    let dir = TempDir::new();
    dir.write("kong.yml", "_format_version: \"3.0\"\n");
    dir.write(
        "strait.toml",
        "declarative_config = \"kong.yml\"\nstream_listen = \"127.0.0.1:9000 udpx\"\nlog_levl = \"debug\"\ndrain_timeout = \"forever\"\n",
    );
    let o = strait(&["check", "-c", "strait.toml"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    for needle in [
        "stream_listen (from file): entry '127.0.0.1:9000 udpx': unknown flag 'udpx'; stream_listen must be of form",
        "log_levl (from file): unknown setting",
        "drain_timeout (from file)",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in {t}");
    }
    dir.write("strait.toml", "declarative_config = \"kong.yml\"\nstream_listen = \"127.0.0.1:9000\"\n");
    let o = strait(&["check"], dir.path());
    assert!(o.status.success(), "./strait.toml is the default: {}", text(&o));
    assert!(text(&o).contains("configuration OK"));
    // `check` writes nothing under the prefix.
    assert!(!dir.path().join("prefix").exists());
}

/// `strait start` with `yaml` on `port` (no Admin API), for starts that must fail.
fn start_once(port: u16, yaml: &str) -> Output {
    let dir = TempDir::new();
    dir.write("kong.yml", yaml);
    dir.write(
        "strait.toml",
        &format!(
            "prefix = \"p\"\nadmin_listen = \"off\"\ndeclarative_config = \"kong.yml\"\nstream_listen = \"127.0.0.1:{port}\"\n"
        ),
    );
    strait(&["start", "-c", "strait.toml"], dir.path())
}

#[test]
fn start_with_a_bad_declarative_file_fails_before_listening() {
    let o =
        start_once(test_support::free_port(), "_format_version: \"3.0\"\nroutes:\n- protocols: [tls_passthrough]\n");
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("must set snis when 'protocols' is 'tls_passthrough'"), "{t}");
    assert!(!t.contains("strait started"), "{t}");
}

#[test]
fn start_fails_on_a_busy_port() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let o = start_once(port, "_format_version: \"3.0\"\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains(&format!("cannot listen on 127.0.0.1:{port}")), "{}", text(&o));
}

#[test]
fn listener_flag_combinations_are_checked() {
    let dir = TempDir::new();
    let check = |listen: &str| {
        Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(["check"])
            .current_dir(dir.path())
            .env("STRAIT_STREAM_LISTEN", listen)
            .output()
            .expect("run strait")
    };
    let o = check("127.0.0.1:9000 udp ssl");
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("DTLS is not supported") && t.contains("STRAIT_STREAM_LISTEN"), "{t}");
    let o = check("127.0.0.1:9000 proxy_protocol");
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("trusted_ips") && t.contains("no peer is trusted"), "{t}");
    assert!(check("127.0.0.1:9000 udp").status.success());
}

#[test]
fn migrations_and_db_import_export() {
    let dir = TempDir::new();
    dir.write("strait.toml", "prefix = \"p\"\nadmin_listen = \"off\"\n");
    dir.write(
        "in.yml",
        "_format_version: \"3.0\"\nservices:\n- name: s\n  url: tcp://127.0.0.1:6379\n  routes:\n  - name: r\n    protocols: [tcp]\n    destinations: [{port: 9000}]\n",
    );
    let o = strait(&["migrations", "status"], dir.path());
    assert!(text(&o).contains("001_entities") && text(&o).contains("pending"), "{}", text(&o));
    let o = strait(&["migrations", "up"], dir.path());
    assert!(o.status.success() && text(&o).contains("migrated: 001_entities"), "{}", text(&o));
    let o = strait(&["config", "db_import", "in.yml"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 services, 1 routes"));
    let o = strait(&["config", "db_export", "out.json"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let o = strait(&["config", "parse", "out.json"], dir.path());
    assert!(o.status.success() && text(&o).contains("1 services, 1 routes"), "{}", text(&o));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("p/strait.db")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // A bad import changes nothing.
    dir.write("bad.yml", "_format_version: \"3.0\"\nroutes:\n- protocols: [tcp]\n");
    let o = strait(&["config", "db_import", "bad.yml"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let o = strait(&["config", "db_export"], dir.path());
    assert!(text(&o).contains("\"name\": \"r\""), "{}", text(&o));
}
