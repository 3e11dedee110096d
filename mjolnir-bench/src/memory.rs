//! The server's memory: its resident set with many idle connections, and with many keys
//! subscribed (each key a client reads is subscribed until it unsubscribes, so pushes
//! can reach it). Read from `/proc/PID/status` of the running `mjolnir` process.

use anyhow::Context;
use mjolnir_client::Client;
use mjolnir_core::{Key, Pk};
use std::time::Duration;

/// Keys per read request: well under the server's limit per request (1,000).
const KEYS_PER_READ: usize = 500;

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// Opens `connections` connections, measures, then has them read `keys` distinct keys
/// between them (rows of `accounts`, present or not: a missing row is subscribed too) and
/// measures again. Returns a Markdown section.
pub async fn measure(url: &str, pid: u32, connections: u32, keys: u64) -> anyhow::Result<String> {
    // Let the server settle after whatever ran before.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid)?;
    let mut clients = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        clients.push(Client::connect(url, None).await.context("connecting")?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid)?;

    let per_client = keys.div_ceil(u64::from(connections.max(1)));
    let mut next = 1_000_000_i64; // past the 1,000 real accounts: nobody else touches these
    for client in &clients {
        let mine: Vec<Key> = (0..per_client)
            .map(|i| Key::row("accounts", Pk::Int(next + i as i64)))
            .collect();
        next += per_client as i64;
        for chunk in mine.chunks(KEYS_PER_READ) {
            client.read(chunk.to_vec()).await.context("reading")?;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let subscribed = rss_kib(pid)?;
    let total_keys = per_client * u64::from(connections);
    drop(clients);

    let mib = |kib: u64| kib as f64 / 1024.0;
    let per = |delta: u64, n: u64| delta as f64 * 1024.0 / n.max(1) as f64;
    Ok(format!(
        "## The server's memory\n\n\
         Measured by `mjolnir-bench memory` against the running `mjolnir` (resident set from \
         `/proc/PID/status`, after each step has settled for 1 s).\n\n\
         | State | RSS | Added per item |\n|---|---:|---:|\n\
         | before | {:.1} MiB | |\n\
         | {connections} idle connections | {:.1} MiB | {:.0} bytes per connection |\n\
         | + {total_keys} subscribed keys ({per_client} per connection) | {:.1} MiB | {:.0} bytes per key |\n",
        mib(before),
        mib(idle),
        per(idle.saturating_sub(before), u64::from(connections)),
        mib(subscribed),
        per(subscribed.saturating_sub(idle), total_keys),
    ))
}
