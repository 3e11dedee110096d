//! Mjölnir, driven over its WebSocket protocol by the native client: one connection per
//! simulated client, each running its transfers one after another, each transfer a
//! `Client::run` transaction (read both rows in one round trip, buffer two updates,
//! commit).
//!
//! `Client::run` is a job of the core's client engine, which caches what it reads. The
//! connections are opened with a cache that keeps nothing between transactions
//! (`cache_capacity: 0`), so a transfer still reads both accounts from the server, commits
//! once, and then unsubscribes from them (the engine evicts them as the run settles; this
//! replaces the `unsubscribe` the load generator used to send itself). What changed with
//! the engine is the retry after a conflict: the first goes at once on the values the
//! conflict reply carried, as before; a later one, after its back-off, no longer reads the
//! accounts again, since they stay cached (and subscribed, so pushes keep them current)
//! while the transfer is in progress. The cache lags the database by a push's latency, so
//! such a retry conflicts somewhat more often than one after a fresh read (about 80%
//! against 70% of them in the hot workload at 8 clients), while the first attempts and the
//! immediate retries conflict less: transfers/s stayed within noise of the old client, the
//! median latency fell and the hot workload's p99 grew.
//!
//! With `--keep-subscriptions` the connections get the client's default cache instead: the
//! accounts a transfer read stay cached and subscribed after it, so later transfers read
//! them from the cache, without a round trip, and every commit is pushed to every
//! connection that holds the accounts it wrote.

use crate::driver::{Outcome, Worker};
use crate::workload::{AMOUNT, enough};
use anyhow::Context;
use mjolnir_client::{Client, ClientError, ClientOptions, RetryPolicy, TxAbort};
use mjolnir_core::Key;
use serde_json::{Map, Value, json};

/// The retry policy of the benchmark: the client's default backoff, but attempts enough
/// that a hot-spot transfer practically never gives up, so starvation shows as a large
/// attempt count rather than as an error.
fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1000,
        base_delay_ms: 2,
        max_delay_ms: 200,
    }
}

#[derive(Debug)]
pub struct MjolnirWorker {
    client: Client,
    policy: RetryPolicy,
}

impl MjolnirWorker {
    /// Opens `clients` connections to `url` (`ws://host:port/ws`).
    ///
    /// `keep_subscriptions`: keep the keys each transfer read cached and subscribed (the
    /// client's default). Without unsubscribing, every connection ends up subscribed to
    /// all 1,000 accounts and every commit is pushed to every connection, which measures
    /// the push fan-out more than the commit path.
    pub async fn connect_all(
        url: &str,
        clients: u32,
        keep_subscriptions: bool,
    ) -> anyhow::Result<Vec<MjolnirWorker>> {
        let options = if keep_subscriptions {
            ClientOptions::default()
        } else {
            ClientOptions { cache_capacity: 0 }
        };
        let mut workers = Vec::new();
        for _ in 0..clients {
            let client = Client::connect_with(url, None, options.clone())
                .await
                .with_context(|| format!("connecting to {url}"))?;
            workers.push(MjolnirWorker {
                client,
                policy: policy(),
            });
        }
        Ok(workers)
    }
}

fn account(id: i32) -> Key {
    Key::row("accounts", i64::from(id))
}

fn balance_set(balance: i64) -> Map<String, Value> {
    let mut set = Map::new();
    set.insert("balance".to_owned(), json!(balance));
    set
}

impl Worker for MjolnirWorker {
    async fn transfer(&mut self, from: i32, to: i32) -> anyhow::Result<Outcome> {
        let result = self
            .client
            .run(&self.policy, async move |tx| {
                let rows = tx.get_many(vec![account(from), account(to)]).await?;
                let balance = |row: &Option<Value>| {
                    row.as_ref()
                        .and_then(|r| r["balance"].as_i64())
                        .ok_or_else(|| TxAbort::User("an account is missing".to_owned()))
                };
                let (from_balance, to_balance) = (balance(&rows[0])?, balance(&rows[1])?);
                if enough(from_balance) {
                    let amount = i64::from(AMOUNT);
                    tx.update(account(from), balance_set(from_balance - amount));
                    tx.update(account(to), balance_set(to_balance + amount));
                }
                Ok(())
            })
            .await;
        match result {
            Ok(done) => Ok(Outcome::Done {
                attempts: u64::from(done.attempts),
            }),
            Err(ClientError::TooManyConflicts { attempts, .. }) => Ok(Outcome::GaveUp {
                attempts: u64::from(attempts),
            }),
            Err(err) => Err(err.into()),
        }
    }
}
