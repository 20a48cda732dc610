//! Why a session gets the route it gets: every route that could serve its
//! kind, in the order the router ranks them, each with whether it matches
//! and, if not, which of its fields did not. A linear walk over the routes,
//! for the Admin API's route tester (`GET /router/match`) and as the
//! reference the compiled tables are tested against; never on the data path.

use std::net::SocketAddr;

use strait_model::{Config, RouteIdx, SniPattern};

use crate::{ConnKind, Facts, Rank, clause_rank, clauses, priority, serves};

/// One route the router considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub route: RouteIdx,
    /// The rank of its best matching clause, or of its best clause when none
    /// matches (where it would have stood).
    pub rank: Rank,
    pub matched: bool,
    /// The fields none of whose entries matched: `sources`,
    /// `destinations`, `snis` (empty when it matched).
    pub mismatched: Vec<&'static str>,
}

/// Whether `pattern` accepts the server name `sni` (already lower case,
/// without a trailing dot).
pub fn sni_matches(pattern: &SniPattern, sni: Option<&str>) -> bool {
    match (pattern, sni) {
        // `*` constrains nothing, as in the compiled tables.
        (SniPattern::Any, _) => true,
        (_, None) => false,
        (SniPattern::Exact(x), Some(s)) => s == x,
        // `*.x`: any name that ends in `.x`; `x.*`: any that begins with `x.`.
        (SniPattern::Suffix(x), Some(s)) => {
            s.len() > x.len() && s.ends_with(x.as_str()) && s.as_bytes()[s.len() - x.len() - 1] == b'.'
        }
        (SniPattern::Prefix(x), Some(s)) => {
            s.len() > x.len() && s.starts_with(x.as_str()) && s.as_bytes()[x.len()] == b'.'
        }
    }
}

fn addr_matches(e: Option<&strait_model::Endpoint>, a: SocketAddr) -> bool {
    e.is_none_or(|e| e.matches(a.ip(), a.port()))
}

/// Every route that serves `kind`, best first; the first that matched is
/// the one [`Router::find`](crate::Router::find) returns.
pub fn explain(config: &Config, kind: ConnKind, facts: &Facts<'_>) -> Vec<Candidate> {
    let normalised = facts.sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase());
    let sni = normalised.as_deref();
    let mut out = Vec::new();
    for (order, route) in config.routes.iter().enumerate() {
        if !route.protocols.is_stream() || !serves(route, kind) {
            continue;
        }
        if route.service.is_some_and(|s| !config.services[s.0].enabled) {
            continue;
        }
        let prio = priority(route);
        let mut best: Option<Rank> = None;
        let mut best_any: Option<Rank> = None;
        for (s, d, n) in clauses(route) {
            let rank = clause_rank(prio, order, s, d, n);
            best_any = best_any.max(Some(rank));
            if addr_matches(s, facts.src) && addr_matches(d, facts.dst) && n.is_none_or(|p| sni_matches(p, sni)) {
                best = best.max(Some(rank));
            }
        }
        let Some(rank) = best.or(best_any) else { continue };
        let mut mismatched = Vec::new();
        if best.is_none() {
            if !route.sources.is_empty() && !route.sources.iter().any(|e| addr_matches(Some(e), facts.src)) {
                mismatched.push("sources");
            }
            if !route.destinations.is_empty() && !route.destinations.iter().any(|e| addr_matches(Some(e), facts.dst)) {
                mismatched.push("destinations");
            }
            if !route.snis.is_empty() && !route.snis.iter().any(|p| sni_matches(p, sni)) {
                mismatched.push("snis");
            }
        }
        out.push(Candidate { route: RouteIdx(order), rank, matched: best.is_some(), mismatched });
    }
    // Matching candidates are ranked as the router ranks them; the others
    // where they would have stood.
    out.sort_by_key(|c| std::cmp::Reverse(c.rank));
    out
}

/// The route [`explain`] finds: the first candidate that matched.
pub fn winner(candidates: &[Candidate]) -> Option<(RouteIdx, Rank)> {
    candidates.iter().find(|c| c.matched).map(|c| (c.route, c.rank))
}
