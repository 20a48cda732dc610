//! `connection-limit` (concurrent sessions per key) and
//! `connection-rate-limit` (new sessions per key): L4 limits Kong does not
//! have. Both refuse before the upstream is contacted.
//!
//! Per-route, per-service and global counts are atomics found when the
//! plugin is configured, so those sessions take no lock. Per-client-address
//! counts live in maps split into shards, each behind a mutex held for a few
//! instructions. All of it is the plugin instance's state, which survives
//! configuration changes. A session holds its place as a guard in its
//! context, so the count is released however the session ends.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strait_model::Config;
use uuid::Uuid;

use strait_plugin::{Carry, Conf, ConfigureCx, ConfigureError, Instance, Plugin, Session, Status, Verdict};

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
}

fn shard_of(ip: &IpAddr) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cells by entity id (or `None`: global), kept across snapshots.
#[derive(Debug)]
struct Cells<T>(Mutex<HashMap<Option<Uuid>, Arc<T>>>);

impl<T> Default for Cells<T> {
    fn default() -> Self {
        Cells(Mutex::new(HashMap::new()))
    }
}

impl<T: Default> Cells<T> {
    fn get(&self, id: Option<Uuid>) -> Arc<T> {
        lock(&self.0).entry(id).or_default().clone()
    }
}

/// The cells a snapshot's sessions count into, by route index.
#[derive(Debug)]
struct ByRoute<T> {
    routes: Vec<Option<Arc<T>>>,
    global: Arc<T>,
}

impl<T: Default> ByRoute<T> {
    /// Resolves the cells for `limit_by` (not `ip`) once, at configure time.
    fn resolve(cells: &Cells<T>, config: &Config, by: LimitBy) -> ByRoute<T> {
        let global = cells.get(None);
        let routes = config
            .routes
            .iter()
            .map(|r| match by {
                LimitBy::Route => Some(cells.get(Some(r.meta.id))),
                LimitBy::Service => r.service.map(|s| cells.get(Some(config.services[s.0].meta.id))),
                LimitBy::Global | LimitBy::Ip => None,
            })
            .collect();
        ByRoute { routes, global }
    }

    fn for_session(&self, s: &Session) -> &Arc<T> {
        s.route_index().and_then(|r| self.routes.get(r.0)).and_then(Option::as_ref).unwrap_or(&self.global)
    }
}

// ---- connection-limit ----

#[derive(Debug)]
pub struct ConnectionLimit;

#[derive(Debug)]
pub struct LimitConfig {
    max_sessions: u32,
    limit_by: LimitBy,
}

/// Open sessions: per entity (atomics) and per client address (sharded).
#[derive(Debug, Default)]
pub struct Counts {
    entities: Cells<AtomicU32>,
    ips: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    /// In an upgrade's next generation: places the previous generation's
    /// sessions hold in the counts above until each moves here (and the
    /// place becomes its own) or that generation exits.
    elsewhere: Mutex<Elsewhere>,
}

#[derive(Debug, Default)]
struct Elsewhere {
    entities: HashMap<Option<Uuid>, u32>,
    ips: HashMap<IpAddr, u32>,
}

fn entity_key(id: Option<Uuid>) -> String {
    id.map_or_else(|| "global".to_owned(), |id| id.to_string())
}

fn parse_entity(k: &str) -> Option<Option<Uuid>> {
    if k == "global" { Some(None) } else { Uuid::parse_str(k).ok().map(Some) }
}

/// Adds `delta` (which may be negative) to a count, never below zero.
fn shift(n: u32, delta: i64) -> u32 {
    (i64::from(n) + delta).clamp(0, i64::from(u32::MAX)) as u32
}

impl Counts {
    fn shift_ip(&self, ip: IpAddr, delta: i64) {
        let mut shard = lock(&self.ips[shard_of(&ip)]);
        let n = shard.entry(ip).or_insert(0);
        *n = shift(*n, delta);
        if *n == 0 {
            shard.remove(&ip);
        }
    }

    fn shift_entity(&self, id: Option<Uuid>, delta: i64) {
        let cell = self.entities.get(id);
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(shift(n, delta)));
    }
}

impl Carry for Counts {
    fn export(&self) -> Value {
        let entities: serde_json::Map<String, Value> = lock(&self.entities.0)
            .iter()
            .map(|(id, n)| (entity_key(*id), n.load(Ordering::Acquire)))
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k, json!(n)))
            .collect();
        let mut ips = serde_json::Map::new();
        for shard in &self.ips {
            ips.extend(lock(shard).iter().map(|(ip, n)| (ip.to_string(), json!(n))));
        }
        json!({ "entities": entities, "ips": ips })
    }

    /// The previous generation's open sessions count here too, until they
    /// move or it exits; a second import replaces the first.
    fn import(&self, from: &Value) {
        let mut elsewhere = lock(&self.elsewhere);
        let read = |k: &str| from.get(k).and_then(Value::as_object).into_iter().flatten();
        let mut entities = HashMap::new();
        for (k, n) in read("entities") {
            if let (Some(id), Some(n)) = (parse_entity(k), n.as_u64()) {
                entities.insert(id, u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
        let mut ips = HashMap::new();
        for (k, n) in read("ips") {
            if let (Ok(ip), Some(n)) = (k.parse::<IpAddr>(), n.as_u64()) {
                ips.insert(ip, u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
        for (id, was) in &elsewhere.entities {
            self.shift_entity(*id, -i64::from(*was));
        }
        for (ip, was) in &elsewhere.ips {
            self.shift_ip(*ip, -i64::from(*was));
        }
        for (id, n) in &entities {
            self.shift_entity(*id, i64::from(*n));
        }
        for (ip, n) in &ips {
            self.shift_ip(*ip, i64::from(*n));
        }
        *elsewhere = Elsewhere { entities, ips };
    }

    fn settle(&self) {
        let mut elsewhere = lock(&self.elsewhere);
        for (id, n) in elsewhere.entities.drain() {
            self.shift_entity(id, -i64::from(n));
        }
        for (ip, n) in elsewhere.ips.drain() {
            self.shift_ip(ip, -i64::from(n));
        }
    }
}

struct LimitInstance {
    config: LimitConfig,
    counts: Arc<Counts>,
    cells: ByRoute<AtomicU32>,
}

/// A session's place in the count, given back when the session ends.
enum Held {
    Cell(Arc<AtomicU32>),
    Ip(Arc<Counts>, IpAddr),
}

impl Drop for Held {
    fn drop(&mut self) {
        match self {
            Held::Cell(c) => {
                c.fetch_sub(1, Ordering::AcqRel);
            }
            Held::Ip(counts, ip) => {
                let mut shard = lock(&counts.ips[shard_of(ip)]);
                if let Some(n) = shard.get_mut(ip) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        shard.remove(ip);
                    }
                }
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

    fn configure(&self, config: LimitConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
        let counts = cx.carried_state::<Counts>();
        let cells = ByRoute::resolve(&counts.entities, cx.config(), config.limit_by);
        Ok(Arc::new(LimitInstance { config, counts, cells }))
    }
}

impl LimitInstance {
    /// Takes a place, or says how many are open.
    fn take(&self, s: &Session) -> Result<Held, u32> {
        let max = self.config.max_sessions;
        if self.config.limit_by == LimitBy::Ip {
            let ip = s.client().ip().to_canonical();
            let mut shard = lock(&self.counts.ips[shard_of(&ip)]);
            let n = shard.entry(ip).or_insert(0);
            if *n >= max {
                return Err(*n);
            }
            *n += 1;
            return Ok(Held::Ip(self.counts.clone(), ip));
        }
        let cell = self.cells.for_session(s);
        cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map(|_| Held::Cell(cell.clone()))
    }
}

impl Instance for LimitInstance {
    /// A moved session is open already: it takes its place even past the
    /// limit (the previous generation gave its own back when it left).
    fn adopt(&self, s: &mut Session) {
        let mut elsewhere = lock(&self.counts.elsewhere);
        // A place counted for it while it was in the previous generation
        // becomes its own; otherwise it takes one.
        let counted = |n: Option<&mut u32>| match n {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        let held = if self.config.limit_by == LimitBy::Ip {
            let ip = s.client().ip().to_canonical();
            if !counted(elsewhere.ips.get_mut(&ip)) {
                *lock(&self.counts.ips[shard_of(&ip)]).entry(ip).or_insert(0) += 1;
            }
            Held::Ip(self.counts.clone(), ip)
        } else {
            let cell = self.cells.for_session(s);
            let key = match self.config.limit_by {
                LimitBy::Route => s.route().map(|r| r.meta.id),
                LimitBy::Service => s.service().map(|v| v.meta.id),
                LimitBy::Global | LimitBy::Ip => None,
            };
            if !counted(elsewhere.entities.get_mut(&key)) {
                cell.fetch_add(1, Ordering::AcqRel);
            }
            Held::Cell(cell.clone())
        };
        drop(elsewhere);
        s.ctx().insert(held);
    }

    fn preread(&self, s: &mut Session) -> Verdict {
        match self.take(s) {
            Ok(held) => {
                s.ctx().insert(held);
                Verdict::Continue
            }
            Err(open) => {
                s.add_log_field(
                    "connection_limit",
                    json!({ "limit": self.config.max_sessions, "open": open, "rejected": true }),
                );
                Verdict::reject(Status::Unavailable, None)
            }
        }
    }
}

// ---- connection-rate-limit ----

#[derive(Debug)]
pub struct ConnectionRateLimit;

/// A token bucket of `rate` sessions per `window` (bursts up to `rate`), run
/// as GCRA: one "theoretical arrival time" per key, so a check is one
/// compare-and-swap.
#[derive(Debug, Clone, Copy)]
pub struct RateConfig {
    rate: f64,
    /// Time between two sessions at the steady rate, ns.
    interval: u64,
    /// How far ahead of now the arrival time may run (the burst), ns.
    tolerance: u64,
    window: u64,
    limit_by: LimitBy,
    delay: bool,
}

impl RateConfig {
    fn new(rate: f64, window: Duration, limit_by: LimitBy, delay: bool) -> RateConfig {
        let window = window.as_nanos() as u64;
        // A tiny rate is a huge interval: bounded so that sums stay exact.
        const CAP: u64 = u64::MAX / 8;
        let interval = ((window as f64 / rate) as u64).clamp(1, CAP);
        let tolerance = ((interval as f64 * (rate.max(1.0) - 1.0)) as u64).min(CAP);
        RateConfig { rate, interval, tolerance, window, limit_by, delay }
    }

    /// The new arrival time and the wait before the session may go on, or
    /// `None` when refused.
    fn step(&self, tat: u64, now: u64) -> Option<(u64, u64)> {
        let next = tat.max(now).saturating_add(self.interval);
        let wait = (next - now).saturating_sub(self.tolerance.saturating_add(self.interval));
        if wait > 0 && (!self.delay || wait > self.window) {
            return None;
        }
        Some((next, wait))
    }
}

/// Nanoseconds since the first call, never 0.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

#[derive(Debug, Default)]
struct IpShard {
    tats: HashMap<IpAddr, u64>,
    pruned_at: u64,
}

/// Arrival times: per entity (atomics) and per client address (sharded).
#[derive(Debug, Default)]
pub struct Buckets {
    entities: Cells<AtomicU64>,
    ips: [Mutex<IpShard>; SHARDS],
}

impl Buckets {
    fn take_cell(cell: &AtomicU64, c: &RateConfig, now: u64) -> Option<u64> {
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            let (next, wait) = c.step(cur, now)?;
            match cell.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(wait),
                Err(seen) => cur = seen,
            }
        }
    }

    fn take_ip(&self, ip: IpAddr, c: &RateConfig, now: u64) -> Option<u64> {
        let mut shard = lock(&self.ips[shard_of(&ip)]);
        if shard.tats.len() > 4096 && now.saturating_sub(shard.pruned_at) > c.window {
            // Keys whose arrival time has passed are as good as new.
            shard.tats.retain(|_, tat| *tat > now);
            shard.pruned_at = now;
        }
        let tat = shard.tats.get(&ip).copied().unwrap_or(0);
        let (next, wait) = c.step(tat, now)?;
        shard.tats.insert(ip, next);
        Some(wait)
    }
}

/// Arrival times travel as how far ahead of now they are (the clocks of
/// two processes share no origin); those already past are as good as new.
impl Carry for Buckets {
    fn export(&self) -> Value {
        let now = now_ns();
        let entities: serde_json::Map<String, Value> = lock(&self.entities.0)
            .iter()
            .map(|(id, tat)| (entity_key(*id), tat.load(Ordering::Acquire).saturating_sub(now)))
            .filter(|(_, ahead)| *ahead > 0)
            .map(|(k, ahead)| (k, json!(ahead)))
            .collect();
        let mut ips = serde_json::Map::new();
        for shard in &self.ips {
            let shard = lock(shard);
            ips.extend(shard.tats.iter().filter(|(_, t)| **t > now).map(|(ip, t)| (ip.to_string(), json!(t - now))));
        }
        json!({ "entities": entities, "ips": ips })
    }

    /// Keeps the later of the two arrival times: sessions either
    /// generation let in count against the window.
    fn import(&self, from: &Value) {
        let now = now_ns();
        let read = |k: &str| from.get(k).and_then(Value::as_object).into_iter().flatten();
        for (k, ahead) in read("entities") {
            if let (Some(id), Some(ahead)) = (parse_entity(k), ahead.as_u64()) {
                self.entities.get(id).fetch_max(now.saturating_add(ahead), Ordering::AcqRel);
            }
        }
        for (k, ahead) in read("ips") {
            if let (Ok(ip), Some(ahead)) = (k.parse::<IpAddr>(), ahead.as_u64()) {
                let mut shard = lock(&self.ips[shard_of(&ip)]);
                let tat = shard.tats.entry(ip).or_insert(0);
                *tat = (*tat).max(now.saturating_add(ahead));
            }
        }
    }
}

struct RateInstance {
    config: RateConfig,
    buckets: Arc<Buckets>,
    cells: ByRoute<AtomicU64>,
}

impl Plugin for ConnectionRateLimit {
    type Config = RateConfig;

    fn name(&self) -> &'static str {
        "connection-rate-limit"
    }

    /// Before connection-limit, so a delayed session holds no place there.
    fn priority(&self) -> i32 {
        960
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
        conf.is_ok().then(|| RateConfig::new(rate, window, limit_by, delay))
    }

    fn configure(&self, config: RateConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
        let buckets = cx.carried_state::<Buckets>();
        let cells = ByRoute::resolve(&buckets.entities, cx.config(), config.limit_by);
        Ok(Arc::new(RateInstance { config, buckets, cells }))
    }
}

impl Instance for RateInstance {
    fn preread(&self, s: &mut Session) -> Verdict {
        let now = now_ns();
        let taken = match self.config.limit_by {
            LimitBy::Ip => self.buckets.take_ip(s.client().ip().to_canonical(), &self.config, now),
            _ => Buckets::take_cell(self.cells.for_session(s), &self.config, now),
        };
        match taken {
            Some(0) => Verdict::Continue,
            Some(wait) => {
                s.add_log_field("connection_rate_limit", json!({ "delayed_ms": wait / 1_000_000 }));
                Verdict::Delay(Duration::from_nanos(wait))
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

    const MS: u64 = 1_000_000;

    #[test]
    fn the_bucket_refills_at_the_rate_and_delays_within_a_window() {
        let c = RateConfig::new(2.0, Duration::from_secs(1), LimitBy::Global, false);
        let cell = AtomicU64::new(0);
        let t0 = 1_000 * MS;
        assert_eq!(Buckets::take_cell(&cell, &c, t0), Some(0));
        assert_eq!(Buckets::take_cell(&cell, &c, t0), Some(0));
        assert_eq!(Buckets::take_cell(&cell, &c, t0), None);
        // Half a second gives one back at 2 per second.
        assert_eq!(Buckets::take_cell(&cell, &c, t0 + 500 * MS), Some(0));
        assert_eq!(Buckets::take_cell(&cell, &c, t0 + 500 * MS), None);

        let d = RateConfig::new(2.0, Duration::from_secs(1), LimitBy::Global, true);
        let cell = AtomicU64::new(0);
        Buckets::take_cell(&cell, &d, t0);
        Buckets::take_cell(&cell, &d, t0);
        assert_eq!(Buckets::take_cell(&cell, &d, t0), Some(500 * MS));
        assert_eq!(Buckets::take_cell(&cell, &d, t0), Some(1000 * MS));
        // The next would wait longer than a window: refused.
        assert_eq!(Buckets::take_cell(&cell, &d, t0), None);
    }

    #[test]
    fn client_addresses_have_their_own_buckets_and_tiny_rates_do_not_overflow() {
        let b = Buckets::default();
        let c = RateConfig::new(1.0, Duration::from_secs(60), LimitBy::Ip, false);
        let t0 = 5 * MS;
        assert_eq!(b.take_ip([10, 0, 0, 1].into(), &c, t0), Some(0));
        assert_eq!(b.take_ip([10, 0, 0, 1].into(), &c, t0), None);
        assert_eq!(b.take_ip([10, 0, 0, 2].into(), &c, t0), Some(0));
        let tiny = RateConfig::new(1e-300, Duration::from_secs(60), LimitBy::Ip, true);
        assert_eq!(b.take_ip([10, 0, 0, 3].into(), &tiny, t0), Some(0));
        assert_eq!(b.take_ip([10, 0, 0, 3].into(), &tiny, t0), None);
    }

    #[test]
    fn counts_carried_over_hold_places_until_their_sessions_move_or_settle() {
        let old = Counts::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        old.shift_ip(ip, 2);
        let route = Some(Uuid::new_v4());
        old.shift_entity(route, 3);
        let state = old.export();
        let new = Counts::default();
        new.import(&state);
        // Imported twice (start, then hand-over): replaced, not added.
        new.import(&state);
        let ip_count = |c: &Counts| lock(&c.ips[shard_of(&ip)]).get(&ip).copied().unwrap_or(0);
        let cell = |c: &Counts| c.entities.get(route).load(Ordering::Acquire);
        assert_eq!((ip_count(&new), cell(&new)), (2, 3));
        // A session that moves takes over one of those places (as adopt does).
        *lock(&new.elsewhere).ips.get_mut(&ip).unwrap() -= 1;
        new.settle();
        assert_eq!((ip_count(&new), cell(&new)), (1, 0), "what did not move is let go");
        // Bad input is ignored field by field.
        new.import(&json!({ "entities": { "nope": 1, "global": "x" }, "ips": { "1.2.3.4": 1, "bad": 2 } }));
        assert_eq!(ip_count(&new), 1);
        new.import(&json!("garbage"));
        assert_eq!(ip_count(&new), 1, "garbage changes nothing");
    }

    #[test]
    fn rate_windows_carried_over_keep_the_later_arrival_time() {
        let c = RateConfig::new(2.0, Duration::from_secs(60), LimitBy::Global, false);
        let old = Buckets::default();
        let now = now_ns();
        let cell = old.entities.get(None);
        assert_eq!(Buckets::take_cell(&cell, &c, now), Some(0));
        assert_eq!(Buckets::take_cell(&cell, &c, now), Some(0));
        old.take_ip([10, 0, 0, 9].into(), &c, now);
        let state = old.export();
        let new = Buckets::default();
        new.import(&state);
        let carried = new.entities.get(None);
        assert_eq!(Buckets::take_cell(&carried, &c, now_ns()), None, "the window is used up here too");
        assert_eq!(new.take_ip([10, 0, 0, 9].into(), &c, now_ns()), Some(0), "one of two used for that client");
        assert_eq!(new.take_ip([10, 0, 0, 9].into(), &c, now_ns()), None);
        // A later arrival time here is not pulled back by an import.
        let before = carried.load(Ordering::Acquire);
        new.import(&json!({ "entities": { "global": 1 } }));
        assert!(carried.load(Ordering::Acquire) >= before);
    }
}
