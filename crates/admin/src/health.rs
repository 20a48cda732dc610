//! The upstream health endpoints: `GET /upstreams/{u}/health` (per target
//! and per address, with the reason for each state) and the manual
//! overrides `PUT /upstreams/{u}/targets/{t}[/{address}]/healthy|unhealthy`.
//!
//! Health is this node's view, kept by the proxy, not stored configuration.

use std::time::UNIX_EPOCH;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use strait_upstream::{SetHealthError, UpstreamHealth};
use uuid::Uuid;

use crate::api::Reply;
use crate::error::ApiError;

/// Kong's health listing, with Strait's per-address details added.
pub(crate) fn report(h: &UpstreamHealth, node_id: &str, balancer: bool) -> Value {
    if balancer {
        return json!({ "data": {
            "id": h.id.to_string(),
            "health": h.health,
            "details": {
                "healthy": h.health != "UNHEALTHY",
                "threshold": h.threshold,
                "weight": {
                    "total": h.total_weight,
                    "available": h.available_weight,
                    "unavailable": h.total_weight - h.available_weight,
                },
            },
        }});
    }
    let data: Vec<Value> = h
        .targets
        .iter()
        .map(|t| {
            let addresses: Vec<Value> = t
                .addresses
                .iter()
                .map(|a| {
                    json!({
                        "ip": a.addr.ip().to_string(),
                        "port": a.addr.port(),
                        "health": a.health,
                        "weight": a.weight,
                        "reason": a.reason,
                        "since": a.since.and_then(|s| s.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                        "active_sessions": a.active_sessions,
                        "sessions": a.sessions,
                        "connect_time_ewma_ms": a.connect_time_ewma.as_secs_f64() * 1000.0,
                    })
                })
                .collect();
            json!({
                "id": t.id.map(|i| i.to_string()),
                "created_at": t.created_at,
                "updated_at": t.updated_at,
                "tags": if t.tags.is_empty() { Value::Null } else { json!(t.tags) },
                "upstream": { "id": h.id.to_string() },
                "target": t.target,
                "weight": t.weight,
                "health": t.health,
                "data": { "addresses": addresses, "dns": t.dns_source, "dns_error": t.dns_error },
            })
        })
        .collect();
    json!({ "node_id": node_id, "total": data.len(), "data": data, "next": Value::Null })
}

/// Answers a manual override: 204, or 404 when the address is not one of
/// the target's (or the target has none yet: its name does not resolve).
pub(crate) fn set(result: Result<(), SetHealthError>) -> Reply {
    match result {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e @ SetHealthError::NoHealthchecker(_)) => Err(ApiError::message(StatusCode::BAD_REQUEST, &e.to_string())),
        Err(SetHealthError::NoAddress) => {
            Err(ApiError::message(StatusCode::NOT_FOUND, "the target has no resolved address to set"))
        }
        Err(_) => Err(ApiError::not_found()),
    }
}

/// The id of an entity document.
pub(crate) fn uuid_of(doc: &Value) -> Option<Uuid> {
    doc.get("id")?.as_str()?.parse().ok()
}
