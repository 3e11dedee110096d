//! What a run measures, and the one-line JSON record it leaves for the report.

use crate::workload::Workload;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Latencies are recorded in microseconds, up to a minute, with 3 significant digits.
const MAX_LATENCY_US: u64 = 60_000_000;

/// The measurements of one client (or of several, merged).
#[derive(Debug)]
pub struct Recorder {
    /// Latency of each committed transfer, retries included, in µs.
    latency: Histogram<u64>,
    /// Transfers that committed.
    pub committed: u64,
    /// Commit attempts, the committed ones included.
    pub attempts: u64,
    /// Attempts that ended in an OCC conflict.
    pub conflicts: u64,
    /// Transfers given up, or failed for any other reason.
    pub failed: u64,
    /// The most attempts any committed transfer needed: starvation shows here first.
    pub max_attempts: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant bounds are valid"),
            committed: 0,
            attempts: 0,
            conflicts: 0,
            failed: 0,
            max_attempts: 0,
        }
    }
}

impl Recorder {
    /// One transfer that committed after `attempts` attempts (`attempts - 1` conflicts).
    pub fn committed(&mut self, latency: Duration, attempts: u64) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
        self.committed += 1;
        self.attempts += attempts;
        self.conflicts += attempts.saturating_sub(1);
        self.max_attempts = self.max_attempts.max(attempts);
    }

    /// One transfer that did not commit, after `attempts` attempts that all conflicted.
    pub fn failed(&mut self, attempts: u64) {
        self.failed += 1;
        self.attempts += attempts;
        self.conflicts += attempts;
        self.max_attempts = self.max_attempts.max(attempts);
    }

    /// A transfer begun in the window that ended after it: counted nowhere else, but its
    /// attempts belong to the starvation check.
    pub fn straggler(&mut self, attempts: u64) {
        self.max_attempts = self.max_attempts.max(attempts);
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds merge");
        self.committed += other.committed;
        self.attempts += other.attempts;
        self.conflicts += other.conflicts;
        self.failed += other.failed;
        self.max_attempts = self.max_attempts.max(other.max_attempts);
    }

    fn percentile_us(&self, q: f64) -> u64 {
        if self.latency.is_empty() {
            0
        } else {
            self.latency.value_at_quantile(q)
        }
    }
}

/// The systems compared.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// pgbench running the transfer as a SQL script: the raw ceiling of the database.
    Pgbench,
    /// `mjolnir serve`/`dev`, over its WebSocket protocol with the native client.
    Mjolnir,
    /// The hand-written axum + sqlx endpoint, one POST per transfer.
    Endpoint,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Pgbench => "pgbench",
            System::Mjolnir => "mjolnir",
            System::Endpoint => "endpoint",
        }
    }
}

/// Which run this was: everything the report groups by.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunLabel {
    pub system: System,
    pub workload: Workload,
    pub clients: u32,
    /// The server's `synchronous_commit` during the run (`on` or `off`).
    pub sync: String,
    pub round: u32,
}

/// One line of the results file: what was measured, under the label of its benchmark
/// ([`RunLabel`] for the transfers, `queries::QueryLabel` for the queries).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult<L = RunLabel> {
    #[serde(flatten)]
    pub label: L,
    /// The measured window (warm-up excluded).
    pub seconds: f64,
    pub committed: u64,
    pub tps: f64,
    pub attempts: u64,
    pub conflicts: u64,
    /// conflicts / attempts.
    pub abort_rate: f64,
    pub failed: u64,
    pub max_attempts: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// CPU time per committed transfer in the window, when the run was told the processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us: Option<crate::cpu::PerTransfer>,
    /// Mjölnir only: the share of the window its commit lanes were busy (1.0: one lane all
    /// the time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_lane_busy: Option<f64>,
}

impl<L> RunResult<L> {
    pub fn new(label: L, window: Duration, rec: &Recorder) -> RunResult<L> {
        let seconds = window.as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let (tps, abort_rate) = (
            rec.committed as f64 / seconds,
            if rec.attempts == 0 {
                0.0
            } else {
                rec.conflicts as f64 / rec.attempts as f64
            },
        );
        RunResult {
            label,
            seconds,
            committed: rec.committed,
            tps,
            attempts: rec.attempts,
            conflicts: rec.conflicts,
            abort_rate,
            failed: rec.failed,
            max_attempts: rec.max_attempts,
            p50_us: rec.percentile_us(0.50),
            p99_us: rec.percentile_us(0.99),
            cpu_us: None,
            commit_lane_busy: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_attempts_beyond_the_first() {
        let mut a = Recorder::default();
        a.committed(Duration::from_millis(1), 1);
        a.committed(Duration::from_millis(3), 4);
        let mut b = Recorder::default();
        b.failed(2);
        a.merge(&b);
        assert_eq!(
            (a.committed, a.attempts, a.conflicts, a.failed),
            (2, 7, 5, 1)
        );
        assert_eq!(a.max_attempts, 4);
        let r = RunResult::new(
            RunLabel {
                system: System::Mjolnir,
                workload: Workload::Hot,
                clients: 2,
                sync: "on".to_owned(),
                round: 1,
            },
            Duration::from_secs(2),
            &a,
        );
        assert!((r.tps - 1.0).abs() < 1e-9);
        assert!((r.abort_rate - 5.0 / 7.0).abs() < 1e-9);
        assert!(r.p50_us >= 999 && r.p99_us >= 2990);
    }
}
