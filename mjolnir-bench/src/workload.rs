//! What one transfer does, shared by every system so that they all run the same workload.

use clap::ValueEnum;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Accounts in the bank (`app/migrations/0001_accounts.sql` seeds exactly these).
pub const ACCOUNTS: i32 = 1000;

/// The hot account of [`Workload::Hot`].
pub const HOT_ACCOUNT: i32 = 1;

/// Units moved by one transfer.
pub const AMOUNT: i32 = 1;

/// How the two accounts of a transfer are chosen.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Two distinct accounts, uniformly at random: conflicts are rare.
    Uniform,
    /// Every transfer touches [`HOT_ACCOUNT`], in a random direction: every pair of
    /// concurrent transfers conflicts, which is where OCC is weakest.
    Hot,
}

impl Workload {
    /// The `(from, to)` accounts of the next transfer.
    pub fn pick(self, rng: &mut impl Rng) -> (i32, i32) {
        match self {
            Workload::Uniform => {
                let from = rng.random_range(1..=ACCOUNTS);
                // Draw from the other 999 and skip `from`, so both are uniform and distinct.
                let to = rng.random_range(1..ACCOUNTS);
                (from, if to >= from { to + 1 } else { to })
            }
            Workload::Hot => {
                let other = rng.random_range(HOT_ACCOUNT + 1..=ACCOUNTS);
                if rng.random_bool(0.5) {
                    (HOT_ACCOUNT, other)
                } else {
                    (other, HOT_ACCOUNT)
                }
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Uniform => "uniform",
            Workload::Hot => "hot",
        }
    }
}

/// The transfer's decision, the same in every system: move [`AMOUNT`] if `from` has it.
pub fn enough(from_balance: i64) -> bool {
    from_balance >= i64::from(AMOUNT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn pairs_are_distinct_and_in_range() {
        let mut rng = StdRng::seed_from_u64(7);
        for workload in [Workload::Uniform, Workload::Hot] {
            for _ in 0..10_000 {
                let (from, to) = workload.pick(&mut rng);
                assert_ne!(from, to);
                assert!((1..=ACCOUNTS).contains(&from) && (1..=ACCOUNTS).contains(&to));
                if workload == Workload::Hot {
                    assert!(from == HOT_ACCOUNT || to == HOT_ACCOUNT);
                }
            }
        }
    }

    #[test]
    fn uniform_reaches_both_ends() {
        let mut rng = StdRng::seed_from_u64(8);
        let seen: std::collections::HashSet<i32> = (0..50_000)
            .flat_map(|_| {
                let (a, b) = Workload::Uniform.pick(&mut rng);
                [a, b]
            })
            .collect();
        assert!(seen.contains(&1) && seen.contains(&ACCOUNTS));
    }
}
