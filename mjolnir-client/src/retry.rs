//! How long to wait before retrying a conflicted transaction.

use rand::Rng;
use std::time::Duration;

/// When [`crate::Client::run`] retries a transaction after a conflict.
///
/// The first retry goes at once: a conflict means another transaction just committed, and
/// the conflict reply carried its result, which the retry starts from, so it usually
/// succeeds. Later retries back off
/// exponentially (`base_delay`, doubling, capped at `max_delay`) because repeated conflicts
/// mean a hot key, where immediate retries only collide again. Each delay is jittered within
/// its upper half, so clients that conflicted together spread out, yet every delay keeps a
/// floor that grows with the attempt number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Zero behaves as one.
    pub max_attempts: u32,
    /// Upper bound of the delay before the second retry (the third attempt).
    pub base_delay: Duration,
    /// No delay exceeds this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt number `attempt` (1 is the first attempt, 2 the first retry).
    pub fn delay_before(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let Some(doublings) = attempt.checked_sub(3) else {
            return Duration::ZERO;
        };
        let ceiling = 2u32
            .checked_pow(doublings)
            .and_then(|factor| self.base_delay.checked_mul(factor))
            .map_or(self.max_delay, |d| d.min(self.max_delay));
        rng.random_range(ceiling / 2..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 100,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(200),
        }
    }

    fn samples(p: &RetryPolicy, attempt: u32) -> Vec<Duration> {
        let mut rng = StdRng::seed_from_u64(u64::from(attempt));
        (0..200)
            .map(|_| p.delay_before(attempt, &mut rng))
            .collect()
    }

    #[test]
    fn the_first_attempt_and_the_first_retry_do_not_wait() {
        let p = policy();
        assert!(samples(&p, 1).iter().all(Duration::is_zero));
        assert!(samples(&p, 2).iter().all(Duration::is_zero));
        assert!(samples(&p, 0).iter().all(Duration::is_zero));
    }

    #[test]
    fn delays_double_from_the_base_until_the_cap() {
        let p = policy();
        // Ceilings 2, 4, 8, …, 128, then capped at 200 ms.
        let mut ceiling = p.base_delay;
        for attempt in 3..20 {
            let s = samples(&p, attempt);
            let (lo, hi) = (s.iter().min().unwrap(), s.iter().max().unwrap());
            assert!(
                *lo >= ceiling / 2,
                "attempt {attempt}: {lo:?} below {:?}",
                ceiling / 2
            );
            assert!(
                *hi <= ceiling,
                "attempt {attempt}: {hi:?} above {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(p.max_delay);
        }
    }

    #[test]
    fn delays_are_jittered() {
        let p = policy();
        for attempt in 3..12 {
            let s = samples(&p, attempt);
            let distinct: std::collections::BTreeSet<_> = s.iter().collect();
            assert!(
                distinct.len() > 100,
                "attempt {attempt}: only {} distinct delays",
                distinct.len()
            );
        }
    }

    #[test]
    fn the_floor_grows_until_the_cap() {
        let p = policy();
        let floor = |attempt| *samples(&p, attempt).iter().min().unwrap();
        for attempt in 3..9 {
            assert!(floor(attempt + 1) > floor(attempt), "attempt {attempt}");
        }
        assert!(floor(40) >= p.max_delay / 2);
    }

    #[test]
    fn huge_attempt_numbers_stay_capped() {
        let p = policy();
        for attempt in [33, 64, 1000, u32::MAX] {
            assert!(
                samples(&p, attempt)
                    .iter()
                    .all(|d| *d <= p.max_delay && *d >= p.max_delay / 2)
            );
        }
    }

    #[test]
    fn a_cap_below_the_base_wins() {
        let p = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_millis(10),
        };
        assert!(samples(&p, 3).iter().all(|d| *d <= p.max_delay));
    }
}
