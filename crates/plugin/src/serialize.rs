//! The JSON log entry of a session, with the fields of Kong's stream
//! serializer (`kong.log.serialize`) plus Strait's close reason, and the
//! fields plugins added.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use strait_model::export;

use crate::Session;

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The session's log entry; `Value::Null` before the session ended.
pub fn serialize(s: &Session) -> Value {
    let Some(r) = s.record() else {
        return Value::Null;
    };
    let mut session = json!({
        "received": r.bytes_received,
        "sent": r.bytes_sent,
        "status": r.status.code(),
        "server_port": s.server().port(),
    });
    if let Some(tls) = s.tls() {
        session["tls"] = json!({
            "version": tls.version,
            "cipher": tls.cipher,
            "client_verify": tls.client_verify,
        });
    }
    if let Some((from, to)) = r.datagrams {
        session["datagrams"] = json!({ "received": from, "sent": to });
    }
    // A Strait extension: binary upgrades the session crossed.
    if r.moves > 0 {
        session["moves"] = json!(r.moves);
    }
    let tries: Vec<Value> = r
        .tries
        .iter()
        .map(|t| {
            let mut v = json!({
                "ip": t.addr.ip().to_string(),
                "port": t.addr.port(),
                "balancer_start": epoch_ms(t.started),
                "balancer_latency": t.took.as_millis() as u64,
            });
            if let Some(e) = &t.error {
                v["state"] = json!("failed");
                v["error"] = json!(e);
            }
            v
        })
        .collect();
    let config = s.config();
    let mut entry = json!({
        "session": session,
        // What the upstream sent (relayed to the client) and received.
        "upstream": { "received": r.bytes_sent, "sent": r.bytes_received },
        "latencies": {
            "kong": r.connected_after.map_or(Value::Null, |d| json!(d.as_millis() as u64)),
            "session": r.duration.as_millis() as u64,
        },
        "tries": tries,
        "route": s.route().map_or(Value::Null, |x| export::route(config, x)),
        "service": s.service().map_or(Value::Null, |x| export::service(config, x)),
        "client_ip": r.client.ip().to_string(),
        "started_at": epoch_ms(r.started),
        "consumer": null,
        "authenticated_entity": null,
        "workspace_name": "default",
        "close_reason": r.reason.as_str(),
        "strait": {
            "listener": &*r.listener,
            "protocol": r.protocol.as_str(),
            "client_port": r.client.port(),
            "sni": r.sni,
            "upstream": r.upstream.map(|a| a.to_string()),
            "proxied_by": r.proxied.as_ref().map(|p| p.by.to_string()),
            "detail": r.detail,
        },
    });
    if let Some(obj) = entry.as_object_mut() {
        for (k, v) in s.log_fields() {
            obj.insert(k.clone(), v.clone());
        }
    }
    entry
}
