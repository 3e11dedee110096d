//! `Client::run` is an adapter over the core's client engine: concurrent runs are
//! pipelined and fail together, the engine's cache decides what is read, each run's own
//! policy decides its retries, and the end of the connection fails whatever waits.

mod support;

use mjolnir_client::{Client, ClientError, ClientOptions, RetryPolicy, Tx, TxAbort};
use mjolnir_core::protocol::{ServerMessage, close_code};
use mjolnir_core::{ClientMessage, Key, TxnId, Version};
use serde_json::json;
use support::{ServerWs, bounded, close, entry, next_msg, send, serve_one, welcome};

fn counter() -> Key {
    Key::kv("counter")
}

/// Adds one to the counter; returns what it read.
async fn increment(tx: &mut Tx) -> Result<i64, TxAbort> {
    let n = tx.get(counter()).await?.and_then(|v| v.as_i64()).unwrap();
    tx.put(counter(), json!(n + 1));
    Ok(n)
}

/// Expects a read of `keys` and answers each at `version` with `value`.
async fn answer_read(ws: &mut ServerWs, keys: &[Key], version: u64, value: i64) {
    match next_msg(ws).await {
        Some(ClientMessage::Read { id, keys: asked }) => {
            assert_eq!(asked, keys);
            let entries = keys
                .iter()
                .map(|k| entry(k, version, Some(json!(value))))
                .collect();
            send(ws, ServerMessage::Values { id, entries }).await;
        }
        other => panic!("expected a read of {keys:?}, got {other:?}"),
    }
}

/// The next message, which must be a commit.
async fn next_commit(ws: &mut ServerWs) -> ClientMessage {
    match next_msg(ws).await {
        Some(commit @ ClientMessage::Commit { .. }) => commit,
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn txn_of(commit: &ClientMessage) -> TxnId {
    let ClientMessage::Commit { txn, .. } = commit else {
        panic!("a commit")
    };
    txn.clone()
}

async fn committed(ws: &mut ServerWs, txn: TxnId, version: u64) {
    let version = Version(version);
    send(ws, ServerMessage::Committed { txn, version }).await;
}

/// The server reads and commits the counter once, so that the client caches it at
/// version 1 with the value 1.
async fn first_increment(ws: &mut ServerWs) {
    answer_read(ws, &[counter()], 0, 0).await;
    let commit = next_commit(ws).await;
    committed(ws, txn_of(&commit), 1).await;
}

#[tokio::test]
async fn concurrent_runs_are_chained_and_a_conflict_runs_the_later_one_again_after_it() {
    bounded(async {
        let (url, server) = serve_one(async |mut ws| {
            welcome(&mut ws).await;
            first_increment(&mut ws).await;

            // Both runs read the cache and commit at once: the second reads what the first
            // writes, as a dependency on it, and follows it.
            let a = next_commit(&mut ws).await;
            let b = next_commit(&mut ws).await;
            let ClientMessage::Commit {
                reads,
                deps,
                follows,
                ..
            } = &b
            else {
                unreachable!()
            };
            assert!(reads.is_empty(), "{b:?}");
            assert_eq!(deps[0].after, txn_of(&a));
            assert_eq!(deps[0].value, Some(json!(2)));
            assert_eq!(follows.as_ref(), Some(&txn_of(&a)));

            // Someone else moved the counter to 10: the first conflicts, and the second
            // is refused with it, as the server does with a commit whose predecessor fails.
            let stale = vec![entry(&counter(), 5, Some(json!(10)))];
            send(
                &mut ws,
                ServerMessage::Conflict {
                    txn: txn_of(&a),
                    stale,
                },
            )
            .await;
            let stale = Vec::new();
            send(
                &mut ws,
                ServerMessage::Conflict {
                    txn: txn_of(&b),
                    stale,
                },
            )
            .await;

            // Both run again, chained again: whichever of their tasks runs first reads the
            // conflict's value, the other what that one writes.
            let a2 = next_commit(&mut ws).await;
            let b2 = next_commit(&mut ws).await;
            let ClientMessage::Commit { reads, .. } = &a2 else {
                unreachable!()
            };
            assert_eq!(reads.get(&counter()), Some(Version(5)));
            let ClientMessage::Commit { follows, deps, .. } = &b2 else {
                unreachable!()
            };
            assert_eq!(follows.as_ref(), Some(&txn_of(&a2)));
            assert_eq!(deps[0].value, Some(json!(11)));
            committed(&mut ws, txn_of(&a2), 6).await;
            committed(&mut ws, txn_of(&b2), 7).await;
            assert!(next_msg(&mut ws).await.is_none(), "nothing more is sent");
        })
        .await;
        let client = Client::connect(&url, None).await.unwrap();
        let policy = RetryPolicy::default();
        client
            .run(&policy, async |tx| increment(tx).await)
            .await
            .unwrap();

        let (a, b) = tokio::join!(
            client.run(&policy, async |tx| increment(tx).await),
            client.run(&policy, async |tx| increment(tx).await),
        );
        let mut done = [a.unwrap(), b.unwrap()];
        done.sort_by_key(|d| d.value);
        let got = done.map(|d| (d.value, d.version, d.attempts));
        assert_eq!(got, [(10, Some(Version(6)), 2), (11, Some(Version(7)), 2)]);
        client.close().await;
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn each_run_retries_by_its_own_policy() {
    bounded(async {
        let (url, server) = serve_one(async |mut ws| {
            welcome(&mut ws).await;
            first_increment(&mut ws).await;
            for version in 2..5 {
                let commit = next_commit(&mut ws).await;
                let stale = vec![entry(&counter(), version, Some(json!(version)))];
                let txn = txn_of(&commit);
                send(&mut ws, ServerMessage::Conflict { txn, stale }).await;
            }
            let commit = next_commit(&mut ws).await;
            committed(&mut ws, txn_of(&commit), 5).await;
            assert!(next_msg(&mut ws).await.is_none());
        })
        .await;
        let client = Client::connect(&url, None).await.unwrap();
        let default = RetryPolicy::default();
        client
            .run(&default, async |tx| increment(tx).await)
            .await
            .unwrap();

        let once = RetryPolicy {
            max_attempts: 1,
            ..default
        };
        match client.run(&once, async |tx| increment(tx).await).await {
            Err(ClientError::TooManyConflicts { attempts: 1, key }) => assert_eq!(key, counter()),
            other => panic!("one attempt only, got {other:?}"),
        }
        // The default policy (ten attempts) goes on after two conflicts, the second
        // retry after a back-off.
        let done = client.run(&default, async |tx| increment(tx).await).await;
        let done = done.unwrap();
        assert_eq!((done.value, done.attempts), (4, 3));
        client.close().await;
        server.await.unwrap();
    })
    .await;
}

/// The load generator's setting: nothing stays cached between runs, so each reads what it
/// needs in one round trip, commits once, and unsubscribes when it is over.
#[tokio::test]
async fn a_cache_that_keeps_nothing_reads_each_run_once_and_unsubscribes_after_it() {
    bounded(async {
        let (a, b) = (Key::kv("a"), Key::kv("b"));
        let (url, server) = serve_one({
            let both = vec![a.clone(), b.clone()];
            async move |mut ws| {
                welcome(&mut ws).await;
                for round in 1..=2 {
                    answer_read(&mut ws, &both, round, 5).await;
                    let commit = next_commit(&mut ws).await;
                    committed(&mut ws, txn_of(&commit), round + 1).await;
                    match next_msg(&mut ws).await {
                        Some(ClientMessage::Unsubscribe { mut keys }) => {
                            keys.sort();
                            assert_eq!(keys, both);
                        }
                        other => panic!("expected an unsubscribe, got {other:?}"),
                    }
                }
                assert!(next_msg(&mut ws).await.is_none());
            }
        })
        .await;
        let options = ClientOptions { cache_capacity: 0 };
        let client = Client::connect_with(&url, None, options).await.unwrap();
        for _ in 0..2 {
            let (a, b) = (a.clone(), b.clone());
            let done = client
                .run(&RetryPolicy::default(), async move |tx| {
                    let got = tx.get_many(vec![a.clone(), b.clone()]).await?;
                    tx.put(
                        a.clone(),
                        json!(got[0].as_ref().unwrap().as_i64().unwrap() - 1),
                    );
                    tx.put(b.clone(), json!(6));
                    Ok(())
                })
                .await
                .unwrap();
            assert_eq!(done.attempts, 1);
        }
        client.close().await;
        server.await.unwrap();
    })
    .await;
}

/// The engine's reads and the raw API's share the connection, and each gets its own reply
/// although both number their reads from 1.
#[tokio::test]
async fn raw_reads_and_the_engines_reads_each_get_their_own_reply() {
    bounded(async {
        let (raw, cooked) = (Key::kv("raw"), Key::kv("cooked"));
        let (url, server) = serve_one({
            let cooked = cooked.clone();
            async move |mut ws| {
                welcome(&mut ws).await;
                let mut reads = Vec::new();
                while reads.len() < 2 {
                    match next_msg(&mut ws).await {
                        Some(ClientMessage::Read { id, keys }) => reads.push((id, keys)),
                        other => panic!("expected two reads, got {other:?}"),
                    }
                }
                assert_ne!(reads[0].0, reads[1].0);
                // The engine's first, then the raw one.
                reads.sort_by_key(|(_, keys)| keys[0] != cooked);
                for ((id, keys), value) in reads.into_iter().zip([1, 2]) {
                    let entries = vec![entry(&keys[0], 1, Some(json!(value)))];
                    send(&mut ws, ServerMessage::Values { id, entries }).await;
                }
                let read_only = next_commit(&mut ws).await;
                committed(&mut ws, txn_of(&read_only), 1).await;
                assert!(next_msg(&mut ws).await.is_none());
            }
        })
        .await;
        let client = Client::connect(&url, None).await.unwrap();
        let policy = RetryPolicy::default();
        let (got_raw, got_cooked) = tokio::join!(
            client.read(vec![raw.clone()]),
            client.run(&policy, async |tx| { Ok(tx.get(cooked.clone()).await?) }),
        );
        assert_eq!(got_raw.unwrap(), vec![entry(&raw, 1, Some(json!(2)))]);
        assert_eq!(got_cooked.unwrap().value, Some(json!(1)));
        client.close().await;
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_end_of_the_connection_fails_waiting_runs_with_disconnected() {
    bounded(async {
        let (url, server) = serve_one(async |mut ws| {
            welcome(&mut ws).await;
            first_increment(&mut ws).await;
            // One run's commit and another's read are never answered.
            let mut waiting = 0;
            while waiting < 2 {
                match next_msg(&mut ws).await {
                    Some(ClientMessage::Commit { .. } | ClientMessage::Read { .. }) => {
                        waiting += 1;
                    }
                    other => panic!("expected a commit and a read, got {other:?}"),
                }
            }
            close(&mut ws, close_code::FEED_LOST, "feed lost").await;
        })
        .await;
        let client = Client::connect(&url, None).await.unwrap();
        let policy = RetryPolicy::default();
        client
            .run(&policy, async |tx| increment(tx).await)
            .await
            .unwrap();

        let (committing, fetching) = tokio::join!(
            client.run(&policy, async |tx| increment(tx).await),
            client.run(&policy, async |tx| {
                let other = tx.get(Key::kv("other")).await?;
                Ok(other)
            }),
        );
        assert!(
            matches!(committing, Err(ClientError::Disconnected)),
            "{committing:?}"
        );
        assert!(
            matches!(fetching, Err(ClientError::Disconnected)),
            "{fetching:?}"
        );
        let later = client.run(&policy, async |tx| increment(tx).await).await;
        assert!(matches!(later, Err(ClientError::Disconnected)), "{later:?}");
        server.await.unwrap();
    })
    .await;
}
