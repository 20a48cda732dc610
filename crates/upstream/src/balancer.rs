//! The balancing algorithms' precomputed tables, pure and unit-tested:
//! the smooth weighted round-robin schedule and the consistent-hashing ring.
//!
//! Both are built once per change of an upstream's addresses or health, so
//! a pick is one atomic increment (round-robin) or one hash and one index
//! (consistent hashing), with no lock and no allocation.

/// Longest round-robin schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 1 << 16;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// nginx's smooth weighted round-robin, unrolled into a sequence of indices:
/// weights 5,1,1 give `a a b a c a a` rather than `a a a a a b c`.
pub(crate) fn schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let mut w: Vec<u64> = weights.iter().map(|w| u64::from(w / g)).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in w.iter_mut().filter(|x| **x > 0) {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: u64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

/// 64-bit FNV-1a with a final mix: stable across builds and platforms, so
/// a client hashes to the same slot after a restart.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The consistent-hashing ring: `slots` entries, each owned by the member
/// with the highest weighted rendezvous score for that slot. A member's
/// score for a slot never depends on the other members, so adding one moves
/// only the slots it wins (about weight/total of them) and removing one
/// moves only the slots it owned.
pub(crate) fn ring(keys: &[u64], weights: &[u32], slots: u32) -> Vec<u32> {
    if keys.is_empty() || weights.iter().all(|w| *w == 0) {
        return Vec::new();
    }
    (0..slots)
        .map(|slot| {
            let mut best = (f64::NEG_INFINITY, 0u32);
            for (i, (key, w)) in keys.iter().zip(weights).enumerate() {
                if *w == 0 {
                    continue;
                }
                // A uniform value in (0, 1); the score is w / -ln(u).
                let h = mix(key ^ mix(u64::from(slot).wrapping_add(0x9e37_79b9_7f4a_7c15)));
                let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                let score = f64::from(*w) / -u.ln();
                if score > best.0 {
                    best = (score, i as u32);
                }
            }
            best.1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(seq: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for i in seq {
            c[*i as usize] += 1;
        }
        c
    }

    #[test]
    fn schedule_is_weighted_and_smooth() {
        let s = schedule(&[5, 1, 1]);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&schedule(&[300, 100, 0]), 3), vec![3, 1, 0], "reduced by the gcd");
        assert!(schedule(&[0, 0]).is_empty());
        let big = schedule(&[65535, 65534, 3]);
        assert!(big.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(counts(&big, 3)[2] >= 1, "a small weight keeps at least one turn");
    }

    #[test]
    fn ring_follows_weights_and_moves_few_slots() {
        let keys: Vec<u64> = (0..4u64).map(|i| hash64(&i.to_le_bytes())).collect();
        let r = ring(&keys[..3], &[100, 100, 200], 10_000);
        let c = counts(&r, 3);
        assert!((2200..2800).contains(&c[0]) && (4600..5400).contains(&c[2]), "{c:?}");
        // Adding a fourth member of equal weight takes about a fifth of the slots.
        let r2 = ring(&keys, &[100, 100, 200, 100], 10_000);
        let moved = r.iter().zip(&r2).filter(|(a, b)| a != b).count();
        assert!(r.iter().zip(&r2).all(|(a, b)| a == b || *b == 3), "slots only move to the new member");
        assert!((1600..2400).contains(&moved), "moved {moved}");
        // A weight of 0 owns nothing.
        assert!(ring(&keys[..2], &[0, 5], 100).iter().all(|i| *i == 1));
    }
}
