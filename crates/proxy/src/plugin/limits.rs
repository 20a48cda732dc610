//! `connection-limit` (concurrent sessions per key) and
//! `connection-rate-limit` (new sessions per key, a token bucket): L4 limits
//! Kong does not have. Both refuse before the upstream is contacted.
//!
//! Counts live in the plugin instance's state, which survives configuration
//! changes. The maps are split into shards, each behind a mutex held for a
//! few instructions; a session holds its count as a guard in its context, so
//! the count is released however the session ends.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Conf, ConfigureCx, Instance, Plugin, Session, Status, Verdict};

const SHARDS: usize = 16;

/// What sessions are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBy {
    Ip,
    Route,
    Service,
    Global,
}

impl LimitBy {
    fn read(conf: &mut Conf<'_>) -> LimitBy {
        match conf.one_of("limit_by", "ip", &["ip", "route", "service", "global"]) {
            "route" => LimitBy::Route,
            "service" => LimitBy::Service,
            "global" => LimitBy::Global,
            _ => LimitBy::Ip,
        }
    }

    fn key(self, s: &Session) -> Key {
        match self {
            LimitBy::Ip => Key::Ip(s.client().ip().to_canonical()),
            LimitBy::Route => s.route().map_or(Key::Global, |r| Key::Entity(r.meta.id)),
            LimitBy::Service => s.service().map_or(Key::Global, |x| Key::Entity(x.meta.id)),
            LimitBy::Global => Key::Global,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    Entity(Uuid),
    Global,
}

fn shard_of(key: &Key) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- connection-limit ----

#[derive(Debug)]
pub struct ConnectionLimit;

#[derive(Debug)]
pub struct LimitConfig {
    max_sessions: u32,
    limit_by: LimitBy,
}

/// Open sessions per key.
#[derive(Debug, Default)]
pub struct Counts {
    shards: [Mutex<HashMap<Key, u32>>; SHARDS],
}

struct LimitInstance {
    config: LimitConfig,
    counts: Arc<Counts>,
}

/// A session's place in the count, given back when the session ends.
struct Held {
    counts: Arc<Counts>,
    key: Key,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut shard = lock(&self.counts.shards[shard_of(&self.key)]);
        if let Some(n) = shard.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

impl Plugin for ConnectionLimit {
    type Config = LimitConfig;

    fn name(&self) -> &'static str {
        "connection-limit"
    }

    fn priority(&self) -> i32 {
        950
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<LimitConfig> {
        let max = conf.required_integer("max_sessions", 1..=i64::from(u32::MAX));
        let limit_by = LimitBy::read(conf);
        let max_sessions = u32::try_from(max?).ok()?;
        conf.is_ok().then_some(LimitConfig { max_sessions, limit_by })
    }

    fn configure(&self, config: LimitConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, String> {
        Ok(Arc::new(LimitInstance { config, counts: cx.state::<Counts>() }))
    }
}

impl Instance for LimitInstance {
    fn preread(&self, s: &mut Session) -> Verdict {
        let key = self.config.limit_by.key(s);
        {
            let mut shard = lock(&self.counts.shards[shard_of(&key)]);
            let n = shard.entry(key).or_insert(0);
            if *n >= self.config.max_sessions {
                let open = *n;
                if open == 0 {
                    shard.remove(&key);
                }
                drop(shard);
                s.add_log_field(
                    "connection_limit",
                    json!({ "limit": self.config.max_sessions, "open": open, "rejected": true }),
                );
                return Verdict::reject(Status::Unavailable, None);
            }
            *n += 1;
        }
        s.ctx().insert(Held { counts: self.counts.clone(), key });
        Verdict::Continue
    }
}

// ---- connection-rate-limit ----

#[derive(Debug)]
pub struct ConnectionRateLimit;

#[derive(Debug)]
pub struct RateConfig {
    /// Sessions per window, also the burst.
    rate: f64,
    window: Duration,
    limit_by: LimitBy,
    delay: bool,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets per key.
#[derive(Debug, Default)]
pub struct Buckets {
    shards: [Mutex<HashMap<Key, Bucket>>; SHARDS],
}

impl Buckets {
    /// Takes a token. `Some(wait)` when one is (or will be, after `wait`,
    /// with `delay`) available; `None` when refused.
    fn take(&self, key: Key, c: &RateConfig, now: Instant) -> Option<Duration> {
        let per_sec = c.rate / c.window.as_secs_f64();
        let cap = c.rate.max(1.0);
        let mut shard = lock(&self.shards[shard_of(&key)]);
        if shard.len() > 4096 {
            // Forget keys whose bucket has refilled: they are as good as new.
            shard.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * per_sec < cap);
        }
        let b = shard.entry(key).or_insert(Bucket { tokens: cap, last: now });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * per_sec).min(cap);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Some(Duration::ZERO);
        }
        if !c.delay {
            return None;
        }
        // Reserve the next token; refuse when the queue would exceed a window.
        let wait = Duration::from_secs_f64((1.0 - b.tokens) / per_sec);
        if wait > c.window {
            return None;
        }
        b.tokens -= 1.0;
        Some(wait)
    }
}

struct RateInstance {
    config: RateConfig,
    buckets: Arc<Buckets>,
}

impl Plugin for ConnectionRateLimit {
    type Config = RateConfig;

    fn name(&self) -> &'static str {
        "connection-rate-limit"
    }

    fn priority(&self) -> i32 {
        940
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<RateConfig> {
        let rate = conf.positive_number("rate", None);
        let window = match conf.one_of("window", "second", &["second", "minute"]) {
            "minute" => Duration::from_secs(60),
            _ => Duration::from_secs(1),
        };
        let limit_by = LimitBy::read(conf);
        let delay = conf.one_of("action", "reject", &["reject", "delay"]) == "delay";
        let rate = rate?;
        conf.is_ok().then_some(RateConfig { rate, window, limit_by, delay })
    }

    fn configure(&self, config: RateConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, String> {
        Ok(Arc::new(RateInstance { config, buckets: cx.state::<Buckets>() }))
    }
}

impl Instance for RateInstance {
    fn preread(&self, s: &mut Session) -> Verdict {
        let key = self.config.limit_by.key(s);
        match self.buckets.take(key, &self.config, Instant::now()) {
            Some(wait) if wait.is_zero() => Verdict::Continue,
            Some(wait) => {
                s.add_log_field("connection_rate_limit", json!({ "delayed_ms": wait.as_millis() as u64 }));
                Verdict::Delay(wait)
            }
            None => {
                s.add_log_field("connection_rate_limit", json!({ "rate": self.config.rate, "rejected": true }));
                Verdict::reject(Status::Unavailable, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_the_rate_and_delays_within_a_window() {
        let b = Buckets::default();
        let c = RateConfig { rate: 2.0, window: Duration::from_secs(1), limit_by: LimitBy::Global, delay: false };
        let t0 = Instant::now();
        assert_eq!(b.take(Key::Global, &c, t0), Some(Duration::ZERO));
        assert_eq!(b.take(Key::Global, &c, t0), Some(Duration::ZERO));
        assert_eq!(b.take(Key::Global, &c, t0), None);
        // Half a second gives one token back at 2 per second.
        assert_eq!(b.take(Key::Global, &c, t0 + Duration::from_millis(500)), Some(Duration::ZERO));
        // Another key has its own bucket.
        assert_eq!(b.take(Key::Ip([10, 0, 0, 1].into()), &c, t0), Some(Duration::ZERO));

        let d = RateConfig { delay: true, ..c };
        let b = Buckets::default();
        b.take(Key::Global, &d, t0);
        b.take(Key::Global, &d, t0);
        assert_eq!(b.take(Key::Global, &d, t0), Some(Duration::from_millis(500)));
        assert_eq!(b.take(Key::Global, &d, t0), Some(Duration::from_millis(1000)));
        // The next would wait longer than a window: refused.
        assert_eq!(b.take(Key::Global, &d, t0), None);
    }
}
