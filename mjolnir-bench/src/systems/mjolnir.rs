//! Mjölnir, driven over its WebSocket protocol by the native client: one connection per
//! simulated client, each transfer a `Client::run` transaction (read both rows in one round
//! trip, buffer two updates, commit; a conflict re-runs it, at once from the values the
//! conflict reply carried, or after a back-off with a fresh read).

use crate::driver::{Outcome, Worker};
use crate::workload::{AMOUNT, enough};
use anyhow::Context;
use mjolnir_client::{Client, ClientError, RetryPolicy, TxAbort};
use mjolnir_core::{ClientMessage, Key};
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
    /// Keep the keys each transfer read subscribed (the client's default). Without
    /// unsubscribing, every connection ends up subscribed to all 1,000 accounts and every
    /// commit is pushed to every connection, which measures the push fan-out more than the
    /// commit path.
    keep_subscriptions: bool,
}

impl MjolnirWorker {
    /// Opens `clients` connections to `url` (`ws://host:port/ws`).
    pub async fn connect_all(
        url: &str,
        clients: u32,
        keep_subscriptions: bool,
    ) -> anyhow::Result<Vec<MjolnirWorker>> {
        let mut workers = Vec::new();
        for _ in 0..clients {
            let client = Client::connect(url, None)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            workers.push(MjolnirWorker {
                client,
                policy: policy(),
                keep_subscriptions,
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
        if !self.keep_subscriptions {
            let keys = vec![account(from), account(to)];
            self.client
                .send_raw(ClientMessage::Unsubscribe { keys }.to_json())
                .await?;
        }
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
