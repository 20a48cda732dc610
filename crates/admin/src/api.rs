//! Kong's Admin API paths, dispatched by hand so that 404 and 405 answers,
//! nested endpoints and Kong's disabled endpoints behave exactly as Kong's.
//!
//! Collections: `GET/POST /{kind}`; entities: `GET/PUT/PATCH/DELETE
//! /{kind}/{id or key}`; nested: `/{parent}/{key}/{child}[/{key}]` for the
//! foreign keys Kong exposes; plus `/`, `/status`, `/config`,
//! `/plugins/enabled`, `/upstreams/{u}/targets/all`, and the upstream
//! health endpoints (see `health.rs`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use strait_control::{Applied, Control, Current, EditResult, config_hash, id_of, now, replace_all};
use strait_model::{EntityKind, export};

use crate::error::ApiError;
use crate::health;
use crate::sessions;
use crate::{AdminState, form};

use EntityKind as K;

/// The field other than `id` that addresses an entity in a path.
fn endpoint_key(kind: EntityKind) -> Option<&'static str> {
    match kind {
        K::Services | K::Routes | K::Snis | K::Upstreams | K::FilterChains => Some("name"),
        K::Targets => Some("target"),
        K::Plugins => Some("instance_name"),
        K::Certificates | K::CaCertificates => None,
    }
}

/// `(parent kind, child kind)` → the child's foreign-key field.
fn nested_fk(parent: EntityKind, child: EntityKind) -> Option<&'static str> {
    match (parent, child) {
        (K::Services, K::Routes) | (K::Services, K::Plugins) | (K::Services, K::FilterChains) => Some("service"),
        (K::Routes, K::Plugins) | (K::Routes, K::FilterChains) => Some("route"),
        (K::Certificates, K::Snis) => Some("certificate"),
        (K::Upstreams, K::Targets) => Some("upstream"),
        _ => None,
    }
}

/// A path segment naming a kind of entity (`filter-chains`, as Kong's path).
fn kind(segment: &str) -> Result<EntityKind, ApiError> {
    EntityKind::from_admin_path(segment).ok_or_else(ApiError::not_found)
}

/// `parent/child` names a nested collection.
fn nested(parent: &str, child: &str) -> Option<(EntityKind, EntityKind, &'static str)> {
    let (p, c) = (EntityKind::from_admin_path(parent)?, EntityKind::from_admin_path(child)?);
    nested_fk(p, c).map(|fk| (p, c, fk))
}

pub(crate) type Reply = Result<Response, ApiError>;

fn json_reply(status: StatusCode, v: Value) -> Reply {
    Ok((status, axum::Json(v)).into_response())
}

/// Entry point for every request.
pub(crate) async fn handle(
    state: Arc<AdminState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = &state.token {
        let given = headers.get("kong-admin-token").map(|v| v.as_bytes());
        if !given.is_some_and(|g| same_secret(g, token.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    let path = uri.path().to_owned();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            form_urlencoded::parse(format!("x={s}").as_bytes()).next().map_or(s.to_owned(), |(_, v)| v.into_owned())
        })
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    // Kept as sent: a multipart boundary is case-sensitive.
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let req = Req { state: &state, method: &method, query: &query, body: &body, content_type: &ct };
    // Writes look entities up by name or id before they edit: on a shared
    // store, first catch up with what other nodes wrote, so an entity created
    // elsewhere a moment ago is found here. (If the database is down the
    // write fails later with Kong's database error.)
    if method != Method::GET && method != Method::HEAD && state.control.store().is_some_and(|s| s.is_shared()) {
        let _ = state.control.sync().await;
    }
    match route(&req, &segs).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Compares a token in time that depends only on the lengths, not on
/// where the first difference is.
fn same_secret(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len() && given.iter().zip(token).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

struct Req<'a> {
    state: &'a AdminState,
    method: &'a Method,
    query: &'a [(String, String)],
    body: &'a Bytes,
    content_type: &'a str,
}

impl Req<'_> {
    fn control(&self) -> &Arc<Control> {
        &self.state.control
    }

    fn q(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The request body as a JSON object (JSON or form-encoded, as Kong accepts).
    fn object(&self) -> Result<Map<String, Value>, ApiError> {
        if self.body.is_empty() {
            return Ok(Map::new());
        }
        if self.content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
            return Ok(form::to_json(self.body));
        }
        if let Some(boundary) = form::multipart_boundary(self.content_type) {
            return form::multipart_to_json(self.body, &boundary).map_err(ApiError::bad_body);
        }
        match serde_json::from_slice::<Value>(self.body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ApiError::bad_body("Cannot parse JSON body: expected an object")),
            Err(_) => Err(ApiError::bad_body("Cannot parse JSON body")),
        }
    }
}

/// Kong mounts the filter chains' endpoints only to refuse them while
/// `wasm` is off.
fn wasm_gated(segs: &[&str]) -> bool {
    segs.contains(&"filter-chains") || matches!(segs, ["routes", _, "filters", _])
}

async fn route(req: &Req<'_>, segs: &[&str]) -> Reply {
    let m = req.method;
    if wasm_gated(segs) && req.control().options().filters.is_none() {
        return Err(ApiError::bad_body("this endpoint is only available when wasm is enabled"));
    }
    match segs {
        [] => only(m, &[Method::GET]).and_then(|_| root(req)),
        ["status"] => {
            only(m, &[Method::GET])?;
            status(req).await
        }
        ["clustering", "status"] => {
            only(m, &[Method::GET])?;
            let node = strait_control::cluster::Node {
                id: req.state.info.node_id.clone(),
                hostname: req.state.info.hostname.clone(),
            };
            json_reply(StatusCode::OK, strait_control::cluster::status(req.control(), &node).await)
        }
        ["metrics"] => {
            only(m, &[Method::GET])?;
            Ok((
                [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                metrics_text(req.state),
            )
                .into_response())
        }
        ["config"] => match *m {
            Method::GET => get_config(req),
            Method::POST => post_config(req).await,
            _ => Err(ApiError::method_not_allowed()),
        },
        ["sessions"] => match *m {
            Method::GET => sessions::list(&req.state.sessions, req.query),
            Method::DELETE => sessions::kill_matching(&req.state.sessions, req.query),
            _ => Err(ApiError::method_not_allowed()),
        },
        ["sessions", "events"] => {
            only(m, &[Method::GET])?;
            sessions::events(&req.state.sessions, req.query)
        }
        ["sessions", id] => match *m {
            Method::GET => sessions::get(&req.state.sessions, id),
            Method::DELETE => sessions::kill(&req.state.sessions, id),
            _ => Err(ApiError::method_not_allowed()),
        },
        ["router", "match"] => {
            only(m, &[Method::GET])?;
            sessions::router_match(&req.state.tester, req.query)
        }
        ["openapi.json"] => only(m, &[Method::GET]).and_then(|_| json_reply(StatusCode::OK, crate::schema::openapi())),
        ["schemas", "filters", name] => {
            only(m, &[Method::GET])?;
            let schema = req
                .control()
                .options()
                .filters
                .as_ref()
                .and_then(|f| f.schema(name))
                .ok_or_else(|| ApiError::message(StatusCode::NOT_FOUND, &format!("Filter '{name}' not found")))?;
            json_reply(StatusCode::OK, schema)
        }
        ["schemas", entity] => {
            only(m, &[Method::GET])?;
            json_reply(StatusCode::OK, strait_model::entity_schema(schema_kind(entity)?, req.control().options()))
        }
        ["schemas", entity, "validate"] => {
            only(m, &[Method::POST])?;
            let kind = schema_kind(entity)?;
            let obj = req.object()?;
            req.control().check(|doc| push(doc, kind, obj).map(Some)).await?;
            json_reply(StatusCode::OK, json!({ "message": "schema validation successful" }))
        }
        ["schemas", "plugins", name] => {
            only(m, &[Method::GET])?;
            let schema = req
                .control()
                .plugins()
                .registry()
                .schema(name)
                .ok_or_else(|| ApiError::message(StatusCode::NOT_FOUND, &format!("No plugin named '{name}'")))?;
            json_reply(StatusCode::OK, schema)
        }
        ["plugins", "enabled"] => {
            only(m, &[Method::GET])?;
            json_reply(StatusCode::OK, json!({ "enabled_plugins": enabled_plugins(req.control()) }))
        }
        // Disabled in Kong (answered as not found): targets live under
        // their upstream; an SNI's certificate is reached via /certificates.
        ["targets"] | ["targets", _] | ["targets", _, "upstream"] | ["snis", _, "certificate"] => {
            Err(ApiError::not_found())
        }
        ["upstreams", u, "health"] => {
            only(m, &[Method::GET])?;
            let cur = req.control().current();
            let up = find(&cur, K::Upstreams, u, None).and_then(health::uuid_of).ok_or_else(ApiError::not_found)?;
            let h = req.control().upstreams().health(up).ok_or_else(ApiError::not_found)?;
            let balancer = req.q("balancer_health").is_some_and(|v| v == "1" || v == "true");
            json_reply(StatusCode::OK, health::report(&h, &req.state.info.node_id, balancer))
        }
        ["upstreams", u, "targets", t, rest @ ..]
            if matches!(rest, ["healthy"] | ["unhealthy"] | [_, "healthy"] | [_, "unhealthy"]) =>
        {
            // Kong 3 uses PUT; older Kong used POST, still accepted.
            only(m, &[Method::PUT, Method::POST])?;
            let cur = req.control().current();
            let up_doc = find(&cur, K::Upstreams, u, None).ok_or_else(ApiError::not_found)?;
            let up = health::uuid_of(up_doc).ok_or_else(ApiError::not_found)?;
            let target = find(&cur, K::Targets, t, Some(("upstream", id_of(up_doc))))
                .and_then(health::uuid_of)
                .ok_or_else(ApiError::not_found)?;
            let (address, healthy) = match rest {
                [state] => (None, *state == "healthy"),
                [addr, state] => (Some(*addr), *state == "healthy"),
                _ => return Err(ApiError::not_found()),
            };
            health::set(req.control().upstreams().set_health(up, &target.to_string(), address, healthy))
        }
        ["upstreams", u, "targets", t, "drain"] => {
            let cur = req.control().current();
            let up_doc = find(&cur, K::Upstreams, u, None).ok_or_else(ApiError::not_found)?;
            let up = health::uuid_of(up_doc).ok_or_else(ApiError::not_found)?;
            let target = find(&cur, K::Targets, t, Some(("upstream", id_of(up_doc))))
                .and_then(health::uuid_of)
                .ok_or_else(ApiError::not_found)?
                .to_string();
            let targets = &req.state.targets;
            match *m {
                Method::POST => {
                    let (timeout, then) = sessions::drain_request(&req.object()?, req.query)?;
                    sessions::drain_reply(targets.drain(up, &target, timeout, then), StatusCode::OK)
                }
                Method::GET => sessions::drain_reply(targets.view(up, &target), StatusCode::OK),
                Method::DELETE => {
                    targets.undrain(up, &target).map_err(|_| ApiError::not_found())?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(ApiError::method_not_allowed()),
            }
        }
        ["upstreams", u, "targets", "all"] => {
            only(m, &[Method::GET])?;
            let cur = req.control().current();
            let parent = find(&cur, K::Upstreams, u, None).ok_or_else(ApiError::not_found)?;
            list(req, &cur, K::Targets, Some(("upstream", id_of(parent))))
        }
        ["routes", r, "filters", which @ ("all" | "enabled" | "disabled")] => {
            only(m, &[Method::GET])?;
            let cur = req.control().current();
            let route = find(&cur, K::Routes, r, None).ok_or_else(ApiError::not_found)?;
            json_reply(StatusCode::OK, json!({ "filters": route_filters(&cur, route, which) }))
        }
        ["filter-chains", fc, link @ ("route" | "service")] => {
            let cur = req.control().current();
            let chain = find(&cur, K::FilterChains, fc, None).ok_or_else(ApiError::not_found)?;
            let target = if *link == "route" { K::Routes } else { K::Services };
            let id = fk_id(chain, link).ok_or_else(ApiError::not_found)?.to_owned();
            match *m {
                Method::GET => {
                    let found = find(&cur, target, &id, None).ok_or_else(ApiError::not_found)?;
                    json_reply(StatusCode::OK, present(&cur, target, found))
                }
                Method::PATCH | Method::PUT => entity(req, target, &id, None).await,
                _ => Err(ApiError::method_not_allowed()),
            }
        }
        [k] if EntityKind::from_admin_path(k).is_some() => {
            let kind = kind(k)?;
            match *m {
                Method::GET => list(req, &req.control().current(), kind, None),
                Method::POST => create(req, kind, None).await,
                _ => Err(ApiError::method_not_allowed()),
            }
        }
        [k, key] if EntityKind::from_admin_path(k).is_some() => entity(req, kind(k)?, key, None).await,
        [k @ ("certificates" | "ca_certificates"), c, "x509"] => {
            only(m, &[Method::GET])?;
            let cur = req.control().current();
            let cert = find(&cur, kind(k)?, c, None).ok_or_else(ApiError::not_found)?;
            let pem = cert.get("cert").and_then(Value::as_str).ok_or_else(ApiError::not_found)?;
            let info = strait_model::pem::describe(pem)
                .map_err(|e| ApiError::message(StatusCode::INTERNAL_SERVER_ERROR, &e))?;
            json_reply(
                StatusCode::OK,
                json!({
                    "id": id_of(cert),
                    "subject": info.subject,
                    "issuer": info.issuer,
                    "not_before": info.not_before,
                    "not_after": info.not_after,
                    "sans": info.sans,
                    "serial": info.serial,
                    "chain_length": info.chain_length,
                }),
            )
        }
        ["certificates", c, "services"] => {
            only(m, &[Method::GET])?;
            let cur = req.control().current();
            let cert = find(&cur, K::Certificates, c, None).ok_or_else(ApiError::not_found)?;
            list(req, &cur, K::Services, Some(("client_certificate", id_of(cert))))
        }
        ["routes", r, "service"] | ["services", r, "client_certificate"] => {
            only(m, &[Method::GET])?;
            let (kind, field, target) = if segs[0] == "routes" {
                (K::Routes, "service", K::Services)
            } else {
                (K::Services, "client_certificate", K::Certificates)
            };
            let cur = req.control().current();
            let e = find(&cur, kind, r, None).ok_or_else(ApiError::not_found)?;
            let id = e.get(field).and_then(|f| f.get("id")).and_then(Value::as_str).ok_or_else(ApiError::not_found)?;
            let found = find(&cur, target, id, None).ok_or_else(ApiError::not_found)?;
            json_reply(StatusCode::OK, present(&cur, target, found))
        }
        [parent, pkey, child] if nested(parent, child).is_some() => {
            let (parent, child, fk) = nested(parent, child).ok_or_else(ApiError::not_found)?;
            let cur = req.control().current();
            let p = find(&cur, parent, pkey, None).ok_or_else(ApiError::not_found)?;
            let pid = id_of(p).to_owned();
            match *m {
                Method::GET => list(req, &cur, child, Some((fk, &pid))),
                Method::POST => create(req, child, Some((fk, pid))).await,
                _ => Err(ApiError::method_not_allowed()),
            }
        }
        [parent, pkey, child, ckey] if nested(parent, child).is_some() => {
            let (parent, child, fk) = nested(parent, child).ok_or_else(ApiError::not_found)?;
            let cur = req.control().current();
            let p = find(&cur, parent, pkey, None).ok_or_else(ApiError::not_found)?;
            let pid = id_of(p).to_owned();
            entity(req, child, ckey, Some((fk, pid))).await
        }
        _ => Err(ApiError::not_found()),
    }
}

/// The plugin names the `plugins` setting enables, and the Wasm filters
/// (each may be configured as a plugin, as in Kong 3.9).
fn enabled_plugins(control: &Control) -> Vec<String> {
    let options = control.options();
    let names = &options.plugins;
    let mut out: Vec<String> = if names.bundled {
        strait_model::BUNDLED_PLUGINS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        Vec::new()
    };
    out.extend(names.custom.iter().cloned());
    if let Some(filters) = &options.filters {
        out.extend(filters.names());
    }
    out
}

/// `/schemas/{entity}` names an entity as a declarative file does
/// (`filter_chains`) or as its path (`filter-chains`).
fn schema_kind(segment: &str) -> Result<EntityKind, ApiError> {
    EntityKind::parse(segment).or_else(|| EntityKind::from_admin_path(segment)).ok_or_else(ApiError::not_found)
}

/// Kong's `/routes/{r}/filters/{all|enabled|disabled}`: the filters of the
/// route's service's chain, then of the route's own; a filter is enabled
/// when it and its chain are.
fn route_filters(cur: &Current, route: &Value, which: &str) -> Vec<Value> {
    let chains = cur.list(K::FilterChains);
    let mut scopes = Vec::new();
    if let Some(service) = fk_id(route, "service") {
        scopes.push(("service", service.to_owned()));
    }
    scopes.push(("route", id_of(route).to_owned()));
    let mut out = Vec::new();
    for (from, id) in scopes {
        let Some(chain) = chains.iter().find(|c| fk_id(c, from) == Some(id.as_str())) else { continue };
        let chain_on = chain.get("enabled").and_then(Value::as_bool).unwrap_or(true);
        for f in chain.get("filters").and_then(Value::as_array).into_iter().flatten() {
            let enabled = chain_on && f.get("enabled").and_then(Value::as_bool).unwrap_or(true);
            if (which == "enabled" && !enabled) || (which == "disabled" && enabled) {
                continue;
            }
            out.push(json!({
                "name": f.get("name").cloned().unwrap_or(Value::Null),
                "config": f.get("config").cloned().unwrap_or(Value::Null),
                "enabled": enabled,
                "from": from,
                "filter_chain": { "id": id_of(chain), "name": chain.get("name").cloned().unwrap_or(Value::Null) },
            }));
        }
    }
    out
}

fn only(m: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(m) { Ok(()) } else { Err(ApiError::method_not_allowed()) }
}

fn fk_id<'a>(e: &'a Value, field: &str) -> Option<&'a str> {
    e.get(field).and_then(|f| f.get("id")).and_then(Value::as_str)
}

/// `host` → `host:8000`, as Kong addresses targets.
fn target_key(key: &str) -> String {
    if key.starts_with('[') {
        if key.contains("]:") { key.to_owned() } else { format!("{key}:8000") }
    } else if key.contains(':') {
        key.to_owned()
    } else {
        format!("{key}:8000")
    }
}

/// Finds an entity by id or endpoint key, optionally within a parent.
fn find<'a>(cur: &'a Current, kind: EntityKind, key: &str, scope: Option<(&str, &str)>) -> Option<&'a Value> {
    let in_scope = |e: &&Value| scope.is_none_or(|(fk, pid)| fk_id(e, fk) == Some(pid));
    let list = cur.list(kind);
    if let Some(e) = list.iter().filter(in_scope).find(|e| id_of(e) == key) {
        return Some(e);
    }
    if kind == K::Certificates {
        // Kong also addresses a certificate by one of its SNIs.
        let cert_id = cur.list(K::Snis).iter().find(|s| s.get("name").and_then(Value::as_str) == Some(key))?;
        let cid = fk_id(cert_id, "certificate")?;
        return list.iter().find(|e| id_of(e) == cid);
    }
    let field = endpoint_key(kind)?;
    let key = if kind == K::Targets { target_key(key) } else { key.to_owned() };
    list.iter().filter(in_scope).find(|e| e.get(field).and_then(Value::as_str) == Some(key.as_str()))
}

/// An entity as the Admin API shows it (certificates with their SNI names).
fn present(cur: &Current, kind: EntityKind, e: &Value) -> Value {
    if kind == K::Certificates {
        let id = id_of(e);
        if let Some(i) = cur.config.certificates.iter().position(|c| c.meta.id.to_string() == id) {
            return export::certificate(&cur.config, strait_model::CertificateIdx(i), true);
        }
    }
    e.clone()
}

fn tags_match(e: &Value, filter: Option<&str>) -> bool {
    let Some(filter) = filter else { return true };
    let tags: Vec<&str> = e
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if filter.contains('/') {
        filter.split('/').any(|t| tags.contains(&t))
    } else {
        filter.split(',').all(|t| tags.contains(&t))
    }
}

/// Kong's `size` of a list page: 1 to 1000, 100 when not given.
pub(crate) fn page_size(given: Option<&str>) -> Result<usize, ApiError> {
    match given {
        None => Ok(100),
        Some(s) => s.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(ApiError::invalid_size),
    }
}

fn list(req: &Req<'_>, cur: &Current, kind: EntityKind, scope: Option<(&str, &str)>) -> Reply {
    let size = page_size(req.q("size"))?;
    let after = match req.q("offset") {
        None => None,
        Some(o) => Some(i64::from_str_radix(o, 16).map_err(|_| ApiError::invalid_offset(o))?),
    };
    let tags = req.q("tags");
    if tags.is_some_and(|t| t.contains(',') && t.contains('/')) {
        return Err(ApiError::bad_body("invalid option (tags: cannot mix ',' and '/')"));
    }
    let mut matching = cur.list(kind).iter().filter(|e| {
        scope.is_none_or(|(fk, pid)| fk_id(e, fk) == Some(pid))
            && tags_match(e, tags)
            && after.is_none_or(|a| cur.seq(kind, id_of(e)) > a)
    });
    let page: Vec<Value> = matching.by_ref().take(size).map(|e| present(cur, kind, e)).collect();
    let more = matching.next().is_some();
    let mut body = json!({ "data": page, "next": null });
    if more {
        if let Some(last) = page.last() {
            let offset = format!("{:x}", cur.seq(kind, id_of(last)));
            let base = req_path(kind, scope);
            let mut next = format!("{base}?offset={offset}&size={size}");
            if let Some(t) = tags {
                next.push_str("&tags=");
                next.extend(form_urlencoded::byte_serialize(t.as_bytes()));
            }
            body["offset"] = json!(offset);
            body["next"] = json!(next);
        }
    }
    json_reply(StatusCode::OK, body)
}

fn req_path(kind: EntityKind, scope: Option<(&str, &str)>) -> String {
    let path = kind.admin_path();
    match scope {
        None => format!("/{path}"),
        Some(("service", id)) => format!("/services/{id}/{path}"),
        Some(("route", id)) => format!("/routes/{id}/{path}"),
        Some(("certificate", id)) => format!("/certificates/{id}/{path}"),
        Some(("upstream", id)) => format!("/upstreams/{id}/{path}"),
        Some(("client_certificate", id)) => format!("/certificates/{id}/services"),
        Some((_, _)) => format!("/{path}"),
    }
}

/// Children a declarative file may nest but an Admin API body may not.
fn reject_nested(kind: EntityKind, obj: &Map<String, Value>) -> Result<(), ApiError> {
    let nested: &[&str] = match kind {
        K::Services => &["routes", "plugins", "filter_chains"],
        K::Routes => &["plugins", "filter_chains"],
        K::Upstreams => &["targets"],
        _ => &[],
    };
    let bad: Map<String, Value> = nested
        .iter()
        .filter(|k| obj.get(**k).is_some_and(|v| !v.is_null()))
        .map(|k| ((*k).to_owned(), json!("unknown field")))
        .collect();
    if bad.is_empty() { Ok(()) } else { Err(ApiError::schema(bad)) }
}

/// Stamps a new entity and appends it to its list.
fn push(doc: &mut Value, kind: EntityKind, mut obj: Map<String, Value>) -> Result<(EntityKind, String), ApiError> {
    reject_nested(kind, &obj)?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) if uuid::Uuid::parse_str(s).is_ok() => s.to_ascii_lowercase(),
        Some(Value::String(_)) => {
            return Err(ApiError::schema(Map::from_iter([("id".to_owned(), json!("expected a valid UUID"))])));
        }
        Some(_) => return Err(ApiError::schema(Map::from_iter([("id".to_owned(), json!("expected a string"))]))),
    };
    let t = now();
    obj.insert("id".into(), json!(id));
    obj.entry("created_at").or_insert(json!(t));
    obj.insert("updated_at".into(), json!(t));
    list_mut(doc, kind).push(Value::Object(obj));
    Ok((kind, id))
}

fn list_mut(doc: &mut Value, kind: EntityKind) -> &mut Vec<Value> {
    let kind = kind.as_str();
    if !doc.get(kind).is_some_and(Value::is_array) {
        doc[kind] = json!([]);
    }
    match doc.get_mut(kind).and_then(Value::as_array_mut) {
        Some(a) => a,
        None => unreachable!("just made an array"),
    }
}

fn writable(req: &Req<'_>) -> Result<(), ApiError> {
    if req.control().writable() { Ok(()) } else { Err(ApiError::read_only()) }
}

async fn create(req: &Req<'_>, kind: EntityKind, parent: Option<(&str, String)>) -> Reply {
    writable(req)?;
    let mut obj = req.object()?;
    if let Some((fk, pid)) = &parent {
        obj.insert((*fk).to_owned(), json!({ "id": pid }));
    }
    let applied = req.control().apply(|doc| push(doc, kind, obj).map(Some)).await?;
    respond_entity(&applied, StatusCode::CREATED)
}

/// Answers with the entity a change wrote.
fn respond_entity(applied: &Applied, status: StatusCode) -> Reply {
    let (kind, id) = applied.target.as_ref().ok_or_else(ApiError::not_found)?;
    let cur = &applied.current;
    let e = cur.list(*kind).iter().find(|e| id_of(e) == id).ok_or_else(ApiError::not_found)?;
    json_reply(status, present(cur, *kind, e))
}

async fn entity(req: &Req<'_>, kind: EntityKind, key: &str, scope: Option<(&str, String)>) -> Reply {
    let cur = req.control().current();
    let scope_ref = scope.as_ref().map(|(f, p)| (*f, p.as_str()));
    let mut existing = find(&cur, kind, key, scope_ref).cloned();
    if existing.is_none() && *req.method == Method::PUT && scope.is_some() {
        // Kong's nested PUT upserts: an entity of another parent moves here.
        existing = find(&cur, kind, key, None).cloned();
    }
    match *req.method {
        Method::GET => {
            let e = existing.ok_or_else(ApiError::not_found)?;
            json_reply(StatusCode::OK, present(&cur, kind, &e))
        }
        Method::DELETE => {
            writable(req)?;
            let Some(e) = existing else {
                // Kong answers 204 for an entity that is already gone, but
                // 404 when a nested path names no child of that parent.
                if scope.is_some() {
                    return Err(ApiError::not_found());
                }
                return Ok(StatusCode::NO_CONTENT.into_response());
            };
            let id = id_of(&e).to_owned();
            req.control().apply(|doc| delete(doc, kind, &id)).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::PUT | Method::PATCH => {
            writable(req)?;
            let patch = *req.method == Method::PATCH;
            if patch && existing.is_none() {
                return Err(ApiError::not_found());
            }
            let mut obj = req.object()?;
            if let Some((fk, pid)) = &scope {
                obj.insert((*fk).to_owned(), json!({ "id": pid }));
            }
            let key = key.to_owned();
            let applied = req
                .control()
                .apply(|doc| {
                    let list = list_mut(doc, kind);
                    // Look again under the write lock: another write may have
                    // changed (or removed) the entity since the request began.
                    let fresh = existing
                        .as_ref()
                        .and_then(|e| list.iter().position(|x| id_of(x) == id_of(e)))
                        .map(|pos| (pos, list[pos].clone()));
                    if patch && fresh.is_none() {
                        return Err(ApiError::not_found());
                    }
                    match fresh {
                        Some((pos, old)) => {
                            let id = id_of(&old).to_owned();
                            reject_nested(kind, &obj)?;
                            if !patch && uuid::Uuid::parse_str(&key).is_err() {
                                // PUT by name: the path's key stays the entity's key.
                                if let Some(field) = endpoint_key(kind) {
                                    obj.insert(field.into(), json!(key));
                                }
                            }
                            let mut new = if patch { merge(&old, obj) } else { obj };
                            new.insert("id".into(), json!(id));
                            new.insert("created_at".into(), old.get("created_at").cloned().unwrap_or(json!(now())));
                            new.insert("updated_at".into(), json!(now()));
                            list[pos] = Value::Object(new.clone());
                            if kind == K::Certificates && new.contains_key("snis") {
                                // The `snis` shorthand replaces the certificate's SNIs.
                                list_mut(doc, K::Snis).retain(|s| fk_id(s, "certificate") != Some(id.as_str()));
                            }
                            Ok(Some((kind, id)))
                        }
                        None => {
                            // PUT creates: the path names the id or the endpoint key.
                            if uuid::Uuid::parse_str(&key).is_ok() {
                                obj.insert("id".into(), json!(key));
                            } else if let Some(field) = endpoint_key(kind) {
                                obj.insert(field.into(), json!(key));
                            } else {
                                return Err(ApiError::invalid_primary_key(&key));
                            }
                            push(doc, kind, obj).map(Some)
                        }
                    }
                })
                .await?;
            respond_entity(&applied, StatusCode::OK)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// PATCH: fields replace fields; a plugin's `config` is merged one level deep.
fn merge(old: &Value, patch: Map<String, Value>) -> Map<String, Value> {
    let mut out = old.as_object().cloned().unwrap_or_default();
    for (k, v) in patch {
        match (out.get_mut(&k), &v) {
            (Some(Value::Object(cur)), Value::Object(new)) if k == "config" => {
                for (ck, cv) in new {
                    cur.insert(ck.clone(), cv.clone());
                }
            }
            _ => {
                out.insert(k, v);
            }
        }
    }
    out
}

/// Deletes an entity: children that Kong cascades go with it; references
/// that Kong restricts refuse the delete.
fn delete(doc: &mut Value, kind: EntityKind, id: &str) -> EditResult<ApiError> {
    let refs = |doc: &Value, k: EntityKind, field: &str| {
        doc.get(k.as_str()).and_then(Value::as_array).is_some_and(|a| {
            a.iter().any(|e| match e.get(field) {
                Some(Value::Array(ids)) => ids.iter().any(|x| x.as_str() == Some(id)),
                Some(v) => v.get("id").and_then(Value::as_str) == Some(id),
                None => false,
            })
        })
    };
    let restrict: &[(EntityKind, &str)] = match kind {
        K::Services => &[(K::Routes, "service")],
        K::Certificates => &[(K::Services, "client_certificate"), (K::Upstreams, "client_certificate")],
        K::CaCertificates => &[(K::Services, "ca_certificates")],
        _ => &[],
    };
    for (k, field) in restrict {
        if refs(doc, *k, field) {
            return Err(ApiError::referenced(k.as_str(), kind.as_str()));
        }
    }
    let cascade: &[(EntityKind, &str)] = match kind {
        K::Services => &[(K::Plugins, "service"), (K::FilterChains, "service")],
        K::Routes => &[(K::Plugins, "route"), (K::FilterChains, "route")],
        K::Certificates => &[(K::Snis, "certificate")],
        K::Upstreams => &[(K::Targets, "upstream")],
        _ => &[],
    };
    for (k, field) in cascade {
        list_mut(doc, *k).retain(|e| fk_id(e, field) != Some(id));
    }
    list_mut(doc, kind).retain(|e| id_of(e) != id);
    Ok(None)
}

fn root(req: &Req<'_>) -> Reply {
    let cur = req.control().current();
    let s = &req.state.info;
    json_reply(
        StatusCode::OK,
        json!({
            "tagline": "Welcome to Strait",
            "version": env!("CARGO_PKG_VERSION"),
            "node_id": s.node_id,
            "hostname": s.hostname,
            "configuration": {
                "database": s.database,
                "stream_listen": s.stream_listen,
                "admin_listen": s.admin_listen,
            },
            "plugins": {
                "available_on_server": enabled_plugins(req.control()).into_iter().map(|p| (p, json!(true))).collect::<Map<_, _>>(),
                "enabled_in_cluster": cur.config.plugins.iter().map(|p| p.name.clone()).collect::<std::collections::BTreeSet<_>>(),
            },
            "entities": EntityKind::ALL.iter().map(|k| (k.to_string(), json!(cur.list(*k).len()))).collect::<Map<_, _>>(),
            "configuration_hash": cur.hash,
        }),
    )
}

async fn status(req: &Req<'_>) -> Reply {
    json_reply(StatusCode::OK, status_body(req.state).await)
}

/// The body of `/status` (Admin API and status API).
pub async fn status_body(state: &AdminState) -> Value {
    let cur = state.control.current();
    let st = state.stats.snapshot();
    let mut body = json!({
        "server": {
            "connections_accepted": st.accepted,
            "connections_handled": st.handled,
            "connections_active": st.active,
            "sessions_accepted": st.accepted,
            "sessions_active": st.active,
            "sessions_handled": st.handled,
        },
        "memory": { "rss_bytes": rss_bytes() },
        "configuration_hash": cur.hash,
        "configuration_version": cur.version,
        "node_id": state.info.node_id,
        "hostname": state.info.hostname,
        "generation": generation(&state.generation),
    });
    if let Some(store) = state.control.store() {
        // A shared store is watched continuously; asking it again here
        // would make `/status` wait out the connect timeout in an outage.
        let reachable = if store.is_shared() { state.control.db_reachable() } else { store.ping().await.is_ok() };
        body["database"] = json!({ "reachable": reachable });
    }
    body
}

/// The `generation` object of `/status`: which generation this process is,
/// since when, and how the upgrade that made it went.
fn generation(g: &crate::Generation) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let upgrade = g.upgrade.as_ref().map(|u| {
        json!({
            "sessions_moved": u.moved.load(Relaxed),
            "sessions_drained": u.drained.load(Relaxed),
            "sessions_closed": u.closed.load(Relaxed),
            "finished": u.finished.load(Relaxed),
        })
    });
    json!({ "number": g.number, "started_at": g.started_at, "last_upgrade": upgrade })
}

/// The Prometheus exposition (`/metrics`).
pub fn metrics_text(state: &AdminState) -> String {
    let control = &state.control;
    let mut text = control.plugins().metrics().render(state.stats.snapshot(), &control.upstreams().all_health());
    text.push_str(&sessions::metrics(&state.sessions));
    text
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn get_config(req: &Req<'_>) -> Reply {
    let cur = req.control().current();
    let text = serde_json::to_string_pretty(&cur.doc).unwrap_or_default();
    json_reply(StatusCode::OK, json!({ "config": text, "configuration_hash": cur.hash }))
}

async fn post_config(req: &Req<'_>) -> Reply {
    // A raw YAML/JSON document, or `{"config": "<text>"}` / `config=<text>` as Kong takes.
    let form_config = if req.content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        form::to_json(req.body).get("config").and_then(Value::as_str).map(str::to_owned)
    } else if let Some(boundary) = form::multipart_boundary(req.content_type) {
        // `curl -F config=@kong.yml`
        let fields = form::multipart_to_json(req.body, &boundary).map_err(ApiError::bad_body)?;
        Some(
            fields
                .get("config")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_body("missing 'config'"))?
                .to_owned(),
        )
    } else {
        None
    };
    let text = form_config.unwrap_or_else(|| String::from_utf8_lossy(req.body).into_owned());
    let mut doc = strait_model::declarative::parse_text(&text).map_err(|e| ApiError::bad_body(&e))?;
    match doc.get("config") {
        Some(Value::String(inner)) => {
            doc = strait_model::declarative::parse_text(inner).map_err(|e| ApiError::bad_body(&e))?;
        }
        // `{"config": {...}}`: the document itself, as JSON clients send it.
        Some(Value::Object(inner)) if doc.get("_format_version").is_none() => doc = Value::Object(inner.clone()),
        _ => {}
    }
    // Validate first, to compare the hash of what would be served.
    let loaded = strait_model::load_value_with(&doc, req.control().options()).map_err(|e| match e {
        strait_model::LoadError::Syntax(s) => ApiError::bad_body(&s),
        strait_model::LoadError::Invalid(errors) => {
            let flatten = matches!(req.q("flatten_errors"), Some("1") | Some("true"));
            let message = format!(
                "declarative config is invalid: {}",
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            );
            let fields = if flatten {
                json!(
                    errors
                        .iter()
                        .map(|e| json!({
                            "entity_type": e.entity,
                            "entity_name": e.name,
                            "entity_path": e.path,
                            "errors": [{ "type": if e.field == "@entity" { "entity" } else { "field" }, "field": e.field, "message": e.message }],
                        }))
                        .collect::<Vec<_>>()
                )
            } else {
                json!(errors.iter().map(ToString::to_string).collect::<Vec<_>>())
            };
            let mut err = ApiError::invalid_declarative(message, Value::Null);
            err.body[if flatten { "flattened_errors" } else { "fields" }] = fields;
            err
        }
    })?;
    let new_doc = export::to_declarative(&loaded.config);
    if matches!(req.q("check_hash"), Some("1") | Some("true")) && config_hash(&new_doc) == req.control().current().hash
    {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let applied = req.control().apply(|d| replace_all::<ApiError>(d, new_doc)).await?;
    let mut body = applied.current.doc.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("_format_version");
    }
    json_reply(StatusCode::CREATED, body)
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        for wrong in [&b"s3creT"[..], b"s3cre", b"s3crett", b"", b"x3cret"] {
            assert!(!same_secret(wrong, b"s3cret"), "{wrong:?}");
        }
    }
}
