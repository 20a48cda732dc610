//! The web UI (`admin_gui_listen`): a build-free set of JavaScript modules
//! embedded in the binary and served with a Content-Security-Policy that
//! lets the page reach only itself and the Admin API.
//!
//! By default the UI talks to the Admin API on its own origin, under
//! `/api`: the same handlers, in process, behind the same token check, so
//! no CORS is needed. With `admin_gui_api_url` the browser goes to that URL
//! instead, and the Admin API answers CORS for it (see `AdminState::cors`).
//! Nothing is fetched from the network at run time.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::{AdminState, ApiError, MAX_BODY, api};

/// One embedded file: its path under `/assets/`, media type and bytes.
struct Asset {
    name: &'static str,
    media: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $media:expr) => {
        Asset { name: $name, media: $media, body: include_bytes!(concat!("../gui/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `crates/admin/gui/` (a test checks the folder and this list agree).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("chart.js", JS),
    asset!("entities.js", JS),
    asset!("overview.js", JS),
    asset!("live.js", JS),
    asset!("config.js", JS),
];

/// How the UI finds the Admin API.
#[derive(Debug, Clone, Default)]
pub struct GuiOptions {
    /// `admin_gui_api_url` (without a trailing `/`) and its origin; `None`:
    /// the UI's own origin, under `/api`.
    pub api_url: Option<(String, String)>,
    /// The Admin API's own addresses as URLs, for the "curl" hints.
    pub admin_urls: Vec<String>,
    /// `database = "off"`: the entity pages are read-only.
    pub dbless: bool,
    /// `wasm = on`: filter chains exist.
    pub wasm: bool,
}

/// The web UI as an axum router.
pub fn router(state: Arc<AdminState>, options: GuiOptions) -> Router {
    let options = Arc::new(options);
    Router::new().fallback(move |request: axum::extract::Request| {
        let (state, options) = (state.clone(), options.clone());
        async move {
            let (parts, body) = request.into_parts();
            let mut reply = match parts.uri.path() {
                p if options.api_url.is_none() && (p == "/api" || p.starts_with("/api/")) => {
                    if let Err(why) = same_origin(&parts.headers, &parts.uri) {
                        return ApiError::message(StatusCode::FORBIDDEN, why).into_response();
                    }
                    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
                        return ApiError::message(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
                            .into_response();
                    };
                    let uri = without_prefix(&parts.uri);
                    api::handle(state, parts.method, uri, parts.headers, body).await
                }
                path => page(&parts.method, path, &options),
            };
            secure(reply.headers_mut(), &options);
            reply
        }
    })
}

/// The UI's `/api` answers only its own pages: a request another site's
/// page makes (a form post, a `no-cors` fetch: no CORS stops those being
/// sent) is refused. Browsers say where a request comes from in
/// `Sec-Fetch-Site` and, for writes, `Origin`; clients that are not
/// browsers (curl) send neither.
fn same_origin(h: &HeaderMap, uri: &Uri) -> Result<(), &'static str> {
    const REFUSED: &str = "the web UI's API answers only the web UI's own pages";
    let text = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    // A page cannot forge this header, and it survives reverse proxies:
    // when a browser sent it, it is the answer.
    if let Some(site) = text("sec-fetch-site") {
        return if matches!(site, "same-origin" | "none") { Ok(()) } else { Err(REFUSED) };
    }
    let Some(origin) = text("origin") else { return Ok(()) };
    let authority = origin.split_once("://").map_or("", |(_, a)| a);
    // Behind a reverse proxy the browser's host may arrive forwarded.
    let forwarded = text("x-forwarded-host").into_iter().flat_map(|v| v.split(',')).map(str::trim);
    let mut hosts = text("host").into_iter().chain(forwarded).chain(uri.authority().map(|a| a.as_str()));
    if hosts.any(|h| authority.eq_ignore_ascii_case(h)) { Ok(()) } else { Err(REFUSED) }
}

/// `/api/x?y` → `/x?y`.
fn without_prefix(uri: &Uri) -> Uri {
    let rest = uri.path_and_query().map_or("/", |pq| pq.as_str()).strip_prefix("/api").unwrap_or("/");
    let rest = if rest.is_empty() || rest.starts_with('?') { format!("/{rest}") } else { rest.to_owned() };
    rest.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

fn page(method: &Method, path: &str, options: &GuiOptions) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET, HEAD")], "method not allowed").into_response();
    }
    if path == "/gui.json" {
        let api = options.api_url.as_ref().map_or("/api", |(url, _)| url.as_str());
        return axum::Json(json!({
            "api": api,
            "admin_urls": options.admin_urls,
            "dbless": options.dbless,
            "wasm": options.wasm,
            "version": env!("CARGO_PKG_VERSION"),
        }))
        .into_response();
    }
    let name = match path {
        "/favicon.ico" => "favicon.svg",
        p => match p.strip_prefix("/assets/") {
            Some(n) => n,
            // A page's own path (`/sessions`, as Kong Manager's): the app
            // routes by it; anything that looks like a file is not a page.
            None if p == "/index.html" => "index.html",
            None if p != "/api"
                && !p.starts_with("/api/")
                && !p.rsplit('/').next().unwrap_or_default().contains('.') =>
            {
                "index.html"
            }
            None => return (StatusCode::NOT_FOUND, "not found").into_response(),
        },
    };
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => ([(header::CONTENT_TYPE, a.media)], a.body).into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// The headers every answer carries: the page may load only its own files
/// and talk only to itself and the Admin API; it may not be framed.
fn secure(h: &mut HeaderMap, options: &GuiOptions) {
    let connect = match &options.api_url {
        Some((_, origin)) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src {connect}; \
         form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change with the binary: always revalidate.
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-cache"));
}

/// Serves the web UI on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    options: GuiOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state, options)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_folder_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gui");
        let mut files: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        listed.sort();
        assert_eq!(files, listed, "crates/admin/gui and gui::ASSETS differ");
    }

    #[test]
    fn only_the_uis_own_pages_reach_its_api() {
        let with = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            same_origin(&h, &Uri::from_static("/api/services"))
        };
        assert!(with(&[]).is_ok(), "curl");
        assert!(
            with(&[("sec-fetch-site", "same-origin"), ("origin", "http://127.0.0.1:8002"), ("host", "127.0.0.1:8002")])
                .is_ok()
        );
        assert!(with(&[("sec-fetch-site", "none")]).is_ok(), "typed in the address bar");
        assert!(with(&[("sec-fetch-site", "cross-site")]).is_err());
        assert!(with(&[("sec-fetch-site", "same-site")]).is_err(), "another port of the same host");
        assert!(with(&[("origin", "http://evil.example"), ("host", "127.0.0.1:8002")]).is_err());
        assert!(with(&[("origin", "null"), ("host", "127.0.0.1:8002")]).is_err());
        // Behind a proxy that rewrote Host: the browser's own header decides.
        assert!(
            with(&[("sec-fetch-site", "same-origin"), ("origin", "https://ui.example"), ("host", "10.0.0.5:8002")])
                .is_ok()
        );
        assert!(
            with(&[
                ("origin", "https://ui.example"),
                ("host", "10.0.0.5:8002"),
                ("x-forwarded-host", "ui.example, lb")
            ])
            .is_ok()
        );
    }

    #[test]
    fn the_api_prefix_is_taken_off() {
        for (from, to) in
            [("/api", "/"), ("/api/", "/"), ("/api/services?size=2", "/services?size=2"), ("/api?x=1", "/?x=1")]
        {
            assert_eq!(without_prefix(&from.parse().unwrap()).to_string(), to, "{from}");
        }
    }

    #[test]
    fn the_policy_names_only_the_admin_api() {
        let mut h = HeaderMap::new();
        let options = GuiOptions {
            api_url: Some(("https://api.example:8444/kong".into(), "https://api.example:8444".into())),
            ..GuiOptions::default()
        };
        secure(&mut h, &options);
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("connect-src 'self' https://api.example:8444;"), "{csp}");
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
    }
}
