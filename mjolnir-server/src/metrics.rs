//! Prometheus metrics, served at `/metrics` in the text format.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;

/// The counters every instance keeps. Each instance reports its own; a Prometheus server
/// adds them up across instances.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub commits: Counter,
    /// Conflicts, labelled with the table of each stale key (`kv` for the key/value store).
    pub conflicts: Family<Labels, Counter>,
    /// Refused commits and requests, labelled with the error code.
    pub rejections: Family<Labels, Counter>,
    /// Re-sent commits answered from the deduplication record.
    pub duplicates: Counter,
    /// Seconds from receiving a commit to knowing its outcome.
    pub commit_latency: Histogram,
    /// Transactions per group-commit batch (1: committed alone while batching is on).
    pub commit_batch_size: Histogram,
    /// Reads per batch (see `store/lanes.rs`).
    pub read_batch_size: Histogram,
    /// Seconds the commit lanes spent running batches: near the seconds elapsed (times the
    /// lanes), the lanes are the bottleneck.
    pub commit_lane_busy: Counter<f64, AtomicU64>,
    /// The same for the read lanes.
    pub read_lane_busy: Counter<f64, AtomicU64>,
    /// Commits waiting for a lane: under load, the next batch.
    pub commits_queued: Gauge,
    /// Reads waiting for a lane.
    pub reads_queued: Gauge,
    /// Transactions decided by the set-based path of group commit.
    pub set_based_commits: Counter,
    /// Conflicts answered from the instance's recent commits, without the database.
    pub known_stale_commits: Counter,
    pub open_connections: Gauge,
    pub pushes: Counter,
    /// Subscribed queries run again because a commit may have changed their result (once
    /// per query and user).
    pub query_reruns: Counter,
    pub slow_consumers: Counter,
    /// WebSocket upgrades refused for their page's origin (see `origin.rs`).
    pub refused_origins: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mjolnir");
        let m = Metrics {
            commits: Counter::default(),
            conflicts: Family::default(),
            rejections: Family::default(),
            duplicates: Counter::default(),
            // 100 µs to about 3 s.
            commit_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 1 to 64 (the default largest batch) and beyond.
            commit_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            read_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            commit_lane_busy: Counter::default(),
            read_lane_busy: Counter::default(),
            commits_queued: Gauge::default(),
            reads_queued: Gauge::default(),
            set_based_commits: Counter::default(),
            known_stale_commits: Counter::default(),
            open_connections: Gauge::default(),
            pushes: Counter::default(),
            query_reruns: Counter::default(),
            slow_consumers: Counter::default(),
            refused_origins: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("commits", "Committed transactions", m.commits.clone());
        registry.register(
            "conflicts",
            "Stale reads that made a commit conflict, by table",
            m.conflicts.clone(),
        );
        registry.register(
            "rejections",
            "Refused commits and requests, by error code",
            m.rejections.clone(),
        );
        registry.register(
            "duplicate_commits",
            "Re-sent commits answered with their first outcome",
            m.duplicates.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "Time to decide a commit",
            m.commit_latency.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Transactions per group-commit batch",
            m.commit_batch_size.clone(),
        );
        registry.register(
            "read_batch_size",
            "Reads per batched read",
            m.read_batch_size.clone(),
        );
        registry.register(
            "commit_lane_busy_seconds",
            "Seconds the commit lanes spent running batches",
            m.commit_lane_busy.clone(),
        );
        registry.register(
            "read_lane_busy_seconds",
            "Seconds the read lanes spent running batches",
            m.read_lane_busy.clone(),
        );
        registry.register(
            "set_based_commits",
            "Transactions decided by the set-based path of group commit",
            m.set_based_commits.clone(),
        );
        registry.register(
            "known_stale_commits",
            "Conflicts answered from the instance's recent commits, without the database",
            m.known_stale_commits.clone(),
        );
        registry.register(
            "commits_queued",
            "Commits waiting for a lane",
            m.commits_queued.clone(),
        );
        registry.register(
            "reads_queued",
            "Reads waiting for a lane",
            m.reads_queued.clone(),
        );
        registry.register(
            "open_connections",
            "Open WebSocket connections",
            m.open_connections.clone(),
        );
        registry.register("pushes", "Push messages sent to clients", m.pushes.clone());
        registry.register(
            "query_reruns",
            "Subscribed queries run again after a commit that may change them, per query and user (per query for a table open to every user)",
            m.query_reruns.clone(),
        );
        registry.register(
            "slow_consumers",
            "Connections closed for not reading their pushes",
            m.slow_consumers.clone(),
        );
        registry.register(
            "refused_origins",
            "WebSocket upgrades refused for the origin of their page",
            m.refused_origins.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn conflict(&self, table: &str) {
        self.conflicts
            .get_or_create(&vec![("table", table.to_owned())])
            .inc();
    }

    pub fn rejection(&self, code: mjolnir_core::ErrorKind) {
        let code = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.rejections.get_or_create(&vec![("code", code)]).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.commits.inc();
        m.conflict("users");
        m.rejection(mjolnir_core::ErrorKind::Forbidden);
        m.commit_latency.observe(0.002);
        let text = m.render();
        assert!(text.contains("mjolnir_commits_total 1"), "{text}");
        assert!(
            text.contains("mjolnir_conflicts_total{table=\"users\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mjolnir_rejections_total{code=\"forbidden\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mjolnir_commit_latency_seconds_count 1"),
            "{text}"
        );
    }
}
