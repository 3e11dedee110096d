//! When to re-run a handler after a conflict.

use std::time::Duration;

/// How many times a conflicting handler runs, and how long to wait between runs.
///
/// The first retry goes at once: a conflict means another transaction just committed, and
/// the conflict reply already refreshed the cache with its result, so the retry usually
/// succeeds. Repeated conflicts mean a hot key, where immediate retries only collide again,
/// so later retries back off exponentially with full jitter (a delay drawn uniformly below
/// the ceiling), which spreads clients that conflicted together the most.
///
/// The randomness comes from the caller (`Math.random()` in the browser): the core has no
/// random source, which keeps it deterministic and free of `getrandom` on wasm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs in all, the first included; zero behaves as one.
    pub max_attempts: u32,
    /// The ceiling of the delay after the second attempt; it doubles after each later one.
    pub base_delay_ms: u64,
    /// No ceiling exceeds this.
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay_ms: 2,
            max_delay_ms: 500,
        }
    }
}

impl RetryPolicy {
    /// The wait before the next run after run number `attempt` (1 is the first) conflicted,
    /// or `None` when that was the last run allowed.
    ///
    /// `jitter` is a uniform draw from [0, 1); values outside it are clamped (NaN counts as
    /// 0), so a faulty source cannot produce a delay above the ceiling.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Option<Duration> {
        if attempt >= self.max_attempts.max(1) {
            return None;
        }
        if attempt <= 1 {
            return Some(Duration::ZERO);
        }
        let ceiling = self.ceiling(attempt).as_micros();
        let ceiling = u64::try_from(ceiling).unwrap_or(u64::MAX);
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        // Float rounding could reach the ceiling itself; full jitter stays below it.
        let micros = ((ceiling as f64 * jitter) as u64).min(ceiling.saturating_sub(1));
        Some(Duration::from_micros(micros))
    }

    /// The upper bound of [`RetryPolicy::delay`] after run number `attempt`: zero after the
    /// first, then `base_delay_ms` doubling, capped at `max_delay_ms`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let Some(doublings) = attempt.checked_sub(2) else {
            return Duration::ZERO;
        };
        let ms = 2u64
            .checked_pow(doublings)
            .and_then(|factor| self.base_delay_ms.checked_mul(factor))
            .map_or(self.max_delay_ms, |ms| ms.min(self.max_delay_ms));
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JITTERS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 0.999_999];

    #[test]
    fn the_first_retry_is_immediate() {
        let p = RetryPolicy::default();
        for j in JITTERS {
            assert_eq!(p.delay(1, j), Some(Duration::ZERO));
        }
    }

    #[test]
    fn delays_grow_from_the_base_until_the_cap() {
        let p = RetryPolicy {
            max_attempts: 100,
            ..RetryPolicy::default()
        };
        let half: Vec<u128> = (2..12)
            .map(|a| p.delay(a, 0.5).unwrap().as_millis())
            .collect();
        assert_eq!(half, [1, 2, 4, 8, 16, 32, 64, 128, 250, 250]);
        for attempt in 2..100 {
            let ceiling = p.ceiling(attempt);
            assert!(ceiling <= Duration::from_millis(500));
            for j in JITTERS {
                let d = p.delay(attempt, j).unwrap();
                assert!(d < ceiling, "attempt {attempt}, jitter {j}: {d:?}");
            }
            assert!(p.delay(attempt, 0.999_999).unwrap() > ceiling * 99 / 100);
        }
        assert_eq!(p.ceiling(40), Duration::from_millis(500));
    }

    #[test]
    fn exhausted_attempts_give_up() {
        let p = RetryPolicy::default();
        assert!(p.delay(9, 0.5).is_some());
        assert_eq!(p.delay(10, 0.5), None);
        assert_eq!(p.delay(11, 0.5), None);
        let once = RetryPolicy {
            max_attempts: 0,
            ..p
        };
        assert_eq!(once.delay(1, 0.5), None);
    }

    #[test]
    fn bad_jitter_and_huge_numbers_stay_in_range() {
        let p = RetryPolicy {
            max_attempts: u32::MAX,
            base_delay_ms: u64::MAX,
            max_delay_ms: u64::MAX,
        };
        for j in [f64::NAN, -1.0, 1.0, 7.0, f64::INFINITY] {
            let d = p.delay(u32::MAX - 1, j).unwrap();
            assert!(d < p.ceiling(u32::MAX - 1));
        }
        assert_eq!(
            RetryPolicy::default().delay(5, f64::NAN),
            Some(Duration::ZERO)
        );
    }
}
