//! The one percentile definition every figure of the tool uses.
//!
//! A [`Distribution`] is a log-linear histogram: values below 1024 are kept exactly, larger ones
//! in 1024 buckets per power of two, so each is known to within 0.1 % whatever its range, and
//! the memory is fixed (about 450 KiB of counters) however many values go in: a replay of a
//! million snapshot calls holds no more than one of ten.
//!
//! Percentiles are nearest-rank: the smallest value with at least p % of the values at or
//! below it. The value reported is its bucket's upper edge, capped at the exact maximum: never
//! below the true value, at most 0.1 % above it.

const SUB_BITS: u32 = 10;
const SUB: u64 = 1 << SUB_BITS;
/// Exact buckets for 0..SUB, then SUB buckets for each power of two from 2^SUB_BITS to 2^63.
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * SUB) as usize;

#[derive(Clone, Debug, Default)]
pub struct Distribution {
    /// Allocated on the first value: most runs of most commands never record one.
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let shift = e - SUB_BITS;
    let mantissa = v >> shift;
    (SUB + u64::from(shift) * SUB + (mantissa - SUB)) as usize
}

/// The largest value that falls into bucket `i`.
fn upper_edge(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let mantissa = SUB + (i - SUB) % SUB;
    ((mantissa + 1) << shift).wrapping_sub(1)
}

impl Distribution {
    pub fn record(&mut self, v: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        self.counts[bucket(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// The exact largest value (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Nearest-rank percentile, `p` in 0..=100 (0 when empty).
    pub fn percentile(&self, p: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.n as f64).ceil().clamp(1.0, self.n as f64) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_edge(i).min(self.max);
            }
        }
        self.max
    }

    /// (upper edge, count) of every non-empty bucket, in increasing order.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| (upper_edge(i).min(self.max), c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values_within_a_thousandth() {
        for v in [0, 1, 1023, 1024, 1025, 4_412_345, 123_456_789_012, u64::MAX / 3, u64::MAX] {
            let i = bucket(v);
            assert!(i < BUCKETS, "{v}");
            let hi = upper_edge(i);
            assert!(hi >= v, "{v}: edge {hi}");
            assert!((hi - v) as f64 <= v as f64 / 1000.0, "{v}: edge {hi}");
            if i > 0 {
                assert!(upper_edge(i - 1) < v, "{v} belongs to an earlier bucket");
            }
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut d = Distribution::default();
        for v in 1..=100 {
            d.record(v);
        }
        assert_eq!((d.percentile(50.0), d.percentile(99.0), d.percentile(100.0)), (50, 99, 100));
        assert_eq!((d.count(), d.max()), (100, 100));
        let mut d = Distribution::default();
        d.record(7);
        assert_eq!(d.percentile(99.0), 7);
        assert_eq!(Distribution::default().percentile(50.0), 0);
        // Large values: within 0.1 %, never below, capped at the exact maximum.
        let mut d = Distribution::default();
        for v in [3_000_000, 1_000_000, 2_000_000] {
            d.record(v);
        }
        let p50 = d.percentile(50.0);
        assert!((2_000_000..=2_002_000).contains(&p50), "{p50}");
        assert_eq!(d.percentile(100.0), 3_000_000);
    }
}
