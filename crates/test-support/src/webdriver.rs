//! A real headless Chromium for UI tests, driven over the W3C WebDriver
//! protocol by Debian's `chromedriver`: start it, open pages, find elements
//! by CSS or XPath, click and type, read text, collect the browser's
//! console, save screenshots. Every wait is bounded by [`crate::WAIT`].
//! There is no fallback: without chromium and chromedriver the test fails
//! and says what to install (`.ci/run` installs both).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::WAIT;
use crate::gateway::TempDir;

/// One WebDriver call: chromedriver keeps connections open whatever the
/// request says, so the answer is read by its Content-Length.
async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to chromedriver");
        let (ct, b) = body.unwrap_or(("application/json", b""));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            b.len()
        );
        s.write_all(head.as_bytes()).await.expect("write request");
        s.write_all(b).await.expect("write body");
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            let n = s.read(&mut buf).await.expect("read answer");
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if let Some(len) = len
                    && raw.len() >= end + 4 + len
                {
                    raw.truncate(end + 4 + len);
                    break;
                }
            }
        }
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
        let status = String::from_utf8_lossy(&raw[..end])
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        Reply { status, body: raw[end + 4..].to_vec() }
    };
    tokio::time::timeout(WAIT * 2, run).await.expect("chromedriver did not answer in time")
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session and the chromedriver behind it; both end on drop.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: TempDir,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        let p = Path::new(name);
        if p.is_absolute() && p.exists() {
            return Some(p.to_owned());
        }
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.exists() {
                return Some(candidate);
            }
        }
    }
    None
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let driver_bin = find_program(&["chromedriver", "/usr/lib/chromium/chromedriver"])
            .expect("chromedriver is not installed: apt-get install chromium chromium-driver");
        // Debian's /usr/bin/chromium is a wrapper script; chromedriver wants the binary.
        let chrome = find_program(&["/usr/lib/chromium/chromium", "chromium", "chromium-browser"])
            .expect("chromium is not installed: apt-get install chromium chromium-driver");
        let port = crate::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let r = request(addr, "GET", "/status", None).await;
                if r.json()["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = TempDir::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chrome,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", "--disable-background-networking",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let mut browser = Browser { driver, addr, session: String::new(), _profile: profile };
        let v = browser.call("POST", "/session", Some(caps)).await;
        browser.session = v["sessionId"].as_str().expect("a WebDriver session id").to_owned();
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = if path == "/session" { path.to_owned() } else { format!("/session/{}{path}", self.session) };
        let text = body.map(|b| b.to_string());
        let r = request(self.addr, method, &full, text.as_deref().map(|t| ("application/json", t.as_bytes()))).await;
        let v = r.json();
        assert!(r.status == 200, "WebDriver {method} {path}: {} {v}", r.status);
        v["value"].clone()
    }

    /// Opens `url` and waits for the document to load.
    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", Some(json!({"width": width, "height": height}))).await;
    }

    async fn find_now(&self, using: &str, value: &str) -> Option<Element> {
        let body = json!({"using": using, "value": value}).to_string();
        let path = format!("/session/{}/elements", self.session);
        let r = request(self.addr, "POST", &path, Some(("application/json", body.as_bytes()))).await;
        let first = r.json()["value"].as_array()?.first()?[ELEMENT].as_str()?.to_owned();
        Some(Element(first))
    }

    async fn wait_find(&self, using: &str, value: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.find_now(using, value).await {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {using} {value:?} appeared in {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for an element matching the CSS selector.
    pub async fn css(&self, selector: &str) -> Element {
        self.wait_find("css selector", selector).await
    }

    /// Waits for an element matching the XPath expression.
    pub async fn xpath(&self, expr: &str) -> Element {
        self.wait_find("xpath", expr).await
    }

    /// Whether an element matches now (no waiting).
    pub async fn exists(&self, selector: &str) -> bool {
        self.find_now("css selector", selector).await.is_some()
    }

    /// The button whose accessible text (its label or aria-label) is `name`.
    pub async fn button(&self, name: &str) -> Element {
        self.xpath(&format!("//button[normalize-space(.)={q} or @aria-label={q}]", q = xpath_literal(name))).await
    }

    /// The form control labelled `label` (a `<label for>`), within the
    /// element matching `scope` (CSS), e.g. a form.
    pub async fn field(&self, scope: &str, label: &str) -> Element {
        let id: String = {
            let deadline = Instant::now() + WAIT;
            loop {
                let v = self
                    .run(
                        "const scope = document.querySelector(arguments[0]); if (!scope) return null; \
                         const l = [...scope.querySelectorAll('label')].find(l => l.textContent.trim() === arguments[1]); \
                         return l ? l.htmlFor : null;",
                        json!([scope, label]),
                    )
                    .await;
                if let Some(id) = v.as_str() {
                    break id.to_owned();
                }
                assert!(Instant::now() < deadline, "no field labelled {label:?} in {scope} within {WAIT:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        self.css(&format!("[id='{id}']")).await
    }

    pub async fn click(&self, e: &Element) {
        self.call("POST", &format!("/element/{}/click", e.0), Some(json!({}))).await;
    }

    /// Replaces what the field holds with `text`.
    pub async fn fill(&self, e: &Element, text: &str) {
        self.call("POST", &format!("/element/{}/clear", e.0), Some(json!({}))).await;
        self.call("POST", &format!("/element/{}/value", e.0), Some(json!({ "text": text }))).await;
    }

    /// Picks the `<option>` whose text is `text`.
    pub async fn select(&self, e: &Element, text: &str) {
        let ok = self
            .run(
                "const s = arguments[0]; const o = [...s.options].find(o => o.textContent === arguments[1]); \
                 if (!o) return false; s.value = o.value; s.dispatchEvent(new Event('change', {bubbles: true})); return true;",
                json!([{ ELEMENT: e.0 }, text]),
            )
            .await;
        assert_eq!(ok, true, "no option {text:?}");
    }

    pub async fn text(&self, e: &Element) -> String {
        self.call("GET", &format!("/element/{}/text", e.0), None).await.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` in the page with `args` and returns its value.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    /// Runs `script` as an async function body (it may `await`) and returns its value.
    pub async fn run_async(&self, script: &str, args: Value) -> Value {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1]; \
             (async (...args) => {{ {script} }})(...Array.from(arguments).slice(0, -1)) \
               .then(done, e => done({{ error: String(e) }}));"
        );
        self.call("POST", "/execute/async", Some(json!({ "script": wrapped, "args": args }))).await
    }

    /// Waits until `script` returns true (`what` names it in the failure).
    pub async fn until(&self, what: &str, script: &str, args: Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.run(script, args.clone()).await == true {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not true within {WAIT:?}\n{}", self.body_text().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text (for failure messages).
    pub async fn body_text(&self) -> String {
        self.run("return document.body ? document.body.innerText : ''", json!([]))
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// The browser console's entries since the last call: `(level, message)`.
    pub async fn console(&self) -> Vec<(String, String)> {
        let v = self.call("POST", "/se/log", Some(json!({"type": "browser"}))).await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or_default().to_owned(),
                            e["message"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG of the window as `name`.png under the test's target
    /// folder (`target/tmp/gui-screenshots`, never committed); returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).expect("a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/gui-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

/// `s` as an XPath string literal.
fn xpath_literal(s: &str) -> String {
    if !s.contains('\'') {
        format!("'{s}'")
    } else if !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("concat('{}')", s.replace('\'', "', \"'\", '"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session ends its Chromium (killing chromedriver alone
        // would leave it running); a plain blocking request, bounded.
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.addr
            );
            if s.write_all(req.as_bytes()).is_ok() {
                let mut head = [0u8; 12];
                let _ = s.read_exact(&mut head);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
