//! Kong's Admin API and the status API for Strait, over axum: Kong's paths,
//! bodies and error shapes, in front of the control plane (`strait-control`).
//!
//! Every write goes through the control plane's single writer; reads take
//! the current configuration without locks. This crate is where the control
//! plane's typed errors become Kong's HTTP answers (`error.rs`). Nothing
//! here is on the data path.

pub mod api;
pub mod error;
mod form;
pub mod gui;
mod health;
pub mod schema;
mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use strait_control::Control;
use strait_proxy::Stats;

pub use error::ApiError;

/// Largest request body accepted (a whole `POST /config` of many routes fits).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Facts about this node shown by `/`.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node_id: String,
    pub hostname: String,
    pub database: String,
    pub stream_listen: Vec<String>,
    pub admin_listen: Vec<String>,
}

/// This process among the generations an upgrade chain made, for `/status`.
#[derive(Debug, Default)]
pub struct Generation {
    /// 1 for a process started by hand; each upgrade adds one.
    pub number: u64,
    /// When this generation started (ms since the epoch).
    pub started_at: i64,
    /// The upgrade that made this generation, if one did.
    pub upgrade: Option<UpgradeCounts>,
}

/// How the upgrade that made this generation went; the counts grow while
/// the earlier generation hands over and drains.
#[derive(Debug, Default)]
pub struct UpgradeCounts {
    /// Sessions the earlier generation handed over, relaying.
    pub moved: std::sync::atomic::AtomicU64,
    /// Sessions that stayed with it and ended there.
    pub drained: std::sync::atomic::AtomicU64,
    /// Sessions it closed at its `drain_timeout`.
    pub closed: std::sync::atomic::AtomicU64,
    /// The earlier generation has exited.
    pub finished: std::sync::atomic::AtomicBool,
}

/// What request handlers share.
#[derive(Debug)]
pub struct AdminState {
    pub control: Arc<Control>,
    pub stats: Arc<Stats>,
    /// When set, requests must carry it in `Kong-Admin-Token`.
    pub token: Option<String>,
    pub info: NodeInfo,
    pub generation: Arc<Generation>,
    /// The open sessions (`/sessions`).
    pub sessions: Arc<strait_proxy::live::Registry>,
    /// `/router/match`.
    pub tester: strait_proxy::RouteTester,
    /// `/upstreams/{u}/targets/{t}/drain`.
    pub targets: Arc<strait_proxy::targets::Targets>,
    /// Cross-origin requests from the web UI, allowed only when it is served
    /// from another origin (`admin_gui_api_url`); `None` answers no CORS.
    pub cors: Option<Cors>,
}

/// Which origins the Admin API lets a browser call it from.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// `admin_gui_url`'s origins (as browsers send them: lowercase, no
    /// default port). When set, the only ones allowed.
    pub origins: Vec<String>,
    /// Without `admin_gui_url`: the UI as it is reached directly — these
    /// hosts (its listeners' own addresses, loopback names, the Admin API
    /// URL's host) on these ports (its listeners').
    pub ui_hosts: Vec<String>,
    pub ui_ports: Vec<u16>,
}

impl Cors {
    /// Whether a request whose `Origin` is `origin` may be answered to it.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        if !self.origins.is_empty() {
            return self.origins.contains(&origin);
        }
        // `null` (a sandboxed frame, a file), other schemes, other hosts
        // and other ports are refused.
        let Some((scheme, authority)) = origin.split_once("://") else { return false };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().ok()),
            _ => (authority, None),
        };
        let port = port.or(match scheme {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        });
        matches!(scheme, "http" | "https")
            && port.is_some_and(|p| self.ui_ports.contains(&p))
            && self.ui_hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

/// The origin to answer CORS to, if the request's is allowed.
fn cors_origin<'a>(state: &AdminState, origin: Option<&'a str>) -> Option<&'a str> {
    let origin = origin?;
    state.cors.as_ref()?.allows(origin).then_some(origin)
}

/// The Admin API as an axum router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .fallback(move |request: axum::extract::Request| {
            let state = state.clone();
            async move {
                use axum::http::{HeaderValue, Method, StatusCode, header};
                let (parts, body) = request.into_parts();
                let origin = parts.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
                let allow = cors_origin(&state, origin).and_then(|o| HeaderValue::from_str(o).ok());
                if parts.method == Method::OPTIONS
                    && let Some(allow) = &allow
                {
                    // A browser's preflight: what the web UI sends.
                    return (
                        StatusCode::NO_CONTENT,
                        [
                            (header::ACCESS_CONTROL_ALLOW_ORIGIN, allow.clone()),
                            (
                                header::ACCESS_CONTROL_ALLOW_METHODS,
                                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"),
                            ),
                            (
                                header::ACCESS_CONTROL_ALLOW_HEADERS,
                                HeaderValue::from_static("Content-Type, Kong-Admin-Token"),
                            ),
                            (header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600")),
                            (header::VARY, HeaderValue::from_static("Origin")),
                        ],
                    )
                        .into_response();
                }
                // Read at most MAX_BODY; larger bodies get Kong's error shape.
                let mut reply = match axum::body::to_bytes(body, MAX_BODY).await {
                    Ok(body) => api::handle(state, parts.method, parts.uri, parts.headers, body).await,
                    Err(_) => {
                        ApiError::message(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large").into_response()
                    }
                };
                if let Some(allow) = allow {
                    reply.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
                    reply.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
                }
                reply
            }
        })
        .layer(DefaultBodyLimit::disable())
}

/// The status API (`status_listen`): `GET /status` and `GET /metrics`,
/// read-only and without the admin token, as Kong's.
pub fn status_router(state: Arc<AdminState>) -> Router {
    Router::new().fallback(move |request: axum::extract::Request| {
        let state = state.clone();
        async move {
            use axum::http::{Method, StatusCode, header};
            if request.method() != Method::GET && request.method() != Method::HEAD {
                return ApiError::message(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed").into_response();
            }
            match request.uri().path().trim_end_matches('/') {
                "/metrics" => {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], api::metrics_text(&state))
                        .into_response()
                }
                "/status" => axum::Json(api::status_body(&state).await).into_response(),
                _ => ApiError::message(StatusCode::NOT_FOUND, "Not found").into_response(),
            }
        }
    })
}

/// Serves the status API on `listener` until `shutdown` completes.
pub async fn serve_status(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, status_router(state)).with_graceful_shutdown(shutdown).await
}

/// Serves the Admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// Serves the Admin API over HTTPS on `listener` until `shutdown` completes.
/// Each connection is handshaken on its own task, under a deadline, so a slow
/// client cannot hold up the others.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    serve_router_tls(listener, tls, router(state), shutdown).await
}

/// Serves `app` over HTTPS on `listener` until `shutdown` completes.
pub async fn serve_router_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                _ => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin HTTPS connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_allows_the_ui_and_nothing_else() {
        let direct = Cors {
            origins: Vec::new(),
            ui_hosts: vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into(), "gw1.internal".into()],
            ui_ports: vec![8002],
        };
        assert!(direct.allows("http://gw1.internal:8002"));
        assert!(direct.allows("https://127.0.0.1:8002"));
        assert!(direct.allows("http://[::1]:8002"));
        assert!(direct.allows("http://LOCALHOST:8002"));
        for bad in
            ["null", "http://evil.example:8002", "http://gw1.internal:8003", "file://localhost:8002", "http://[::1]"]
        {
            assert!(!direct.allows(bad), "{bad}");
        }
        let listed = Cors {
            origins: vec!["https://ui.example".into(), "http://ui.example:8002".into()],
            ui_hosts: vec!["localhost".into()],
            ui_ports: vec![8002],
        };
        assert!(listed.allows("https://UI.example"));
        assert!(listed.allows("http://ui.example:8002"));
        assert!(!listed.allows("http://localhost:8002"), "the list replaces the defaults");
    }
}
