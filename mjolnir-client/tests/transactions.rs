//! `Client::run`: retried on conflict with the values the conflict reply carried (no
//! read again), never on a rejection, never sent when aborted, and validated (sent with
//! no writes) when read-only, as the browser runtime's transactions are. What a run has
//! read stays in the engine's cache, so later runs read it without a round trip.

mod support;

use mjolnir_client::{Client, ClientError, Committed, RetryPolicy, Tx, TxAbort};
use mjolnir_core::protocol::{ErrorReply, ServerMessage};
use mjolnir_core::{ClientMessage, ErrorKind, Key, ReadSet, TxnId, Version, WriteOp, WriteSet};
use serde_json::{Value, json};
use support::{ServerWs, bounded, entry, next_msg, send, serve_one, welcome};

fn counter() -> Key {
    Key::kv("counter")
}

/// Expects a read of the counter and answers it.
async fn answer_read(ws: &mut ServerWs, version: u64, value: i64) {
    match next_msg(ws).await {
        Some(ClientMessage::Read { id, keys }) => {
            assert_eq!(keys, vec![counter()]);
            let entries = vec![entry(&counter(), version, Some(json!(value)))];
            send(ws, ServerMessage::Values { id, entries }).await;
        }
        other => panic!("expected a read, got {other:?}"),
    }
}

/// Expects the commit of an increment from `value` read at `version`; returns its txn id.
async fn expect_increment(ws: &mut ServerWs, version: u64, value: i64) -> TxnId {
    match next_msg(ws).await {
        Some(ClientMessage::Commit {
            txn,
            reads,
            writes,
            first,
            ..
        }) => {
            assert!(
                first,
                "each attempt's commit is the first send of its txn id"
            );
            assert_eq!(
                reads,
                [(counter(), Version(version))]
                    .into_iter()
                    .collect::<ReadSet>()
            );
            let mut expected = WriteSet::new();
            expected.push(
                counter(),
                WriteOp::Put {
                    value: json!(value + 1),
                },
            );
            assert_eq!(writes, expected);
            txn
        }
        other => panic!("expected a commit, got {other:?}"),
    }
}

async fn conflict(ws: &mut ServerWs, txn: TxnId, version: u64, value: i64) {
    let stale = vec![entry(&counter(), version, Some(json!(value)))];
    send(ws, ServerMessage::Conflict { txn, stale }).await;
}

/// The transaction under test: read the counter (twice: the second read is served from
/// the attempt's cache), add one, and check the attempt sees its own write.
async fn increment(tx: &mut Tx) -> Result<i64, TxAbort> {
    let n = tx.get(counter()).await?.and_then(|v| v.as_i64()).unwrap();
    assert_eq!(
        tx.get_many(vec![counter(), counter()]).await?,
        vec![Some(json!(n)); 2]
    );
    tx.put(counter(), json!(n + 1));
    assert_eq!(tx.get(counter()).await?, Some(json!(n + 1)));
    Ok(n)
}

#[tokio::test]
async fn run_retries_conflicts_only_and_sends_nothing_it_need_not() {
    bounded(async {
        let (url, server) = serve_one(async |mut ws| {
            welcome(&mut ws).await;

            // A conflict, then a commit under a new txn id of the value the conflict
            // reply gave, with no read in between.
            answer_read(&mut ws, 1, 1).await;
            let first = expect_increment(&mut ws, 1, 1).await;
            conflict(&mut ws, first.clone(), 2, 5).await;
            let second = expect_increment(&mut ws, 2, 5).await;
            assert_ne!(first, second, "a retry is a new attempt with a new id");
            send(
                &mut ws,
                ServerMessage::Committed {
                    txn: second,
                    version: Version(3),
                },
            )
            .await;

            // Read-only, from the cache (the commit left the counter at 6, version 3): no
            // read, only its validation, a commit with no writes.
            match next_msg(&mut ws).await {
                Some(ClientMessage::Commit {
                    txn, reads, writes, ..
                }) => {
                    assert_eq!(reads, [(counter(), Version(3))].into_iter().collect());
                    assert!(writes.is_empty());
                    let version = Version(3);
                    send(&mut ws, ServerMessage::Committed { txn, version }).await;
                }
                other => panic!("expected a read-only commit, got {other:?}"),
            }

            // Rejected: one commit, no retry.
            let txn = expect_increment(&mut ws, 3, 6).await;
            let error = ErrorReply::new(ErrorKind::Forbidden, "not yours").with_key(counter());
            send(&mut ws, ServerMessage::Rejected { txn, error }).await;

            // Three conflicts use up three attempts. The second goes at once, the third
            // after a back-off; neither reads: each conflict reply refreshed the cache.
            let txn = expect_increment(&mut ws, 3, 6).await;
            conflict(&mut ws, txn, 4, 7).await;
            let txn = expect_increment(&mut ws, 4, 7).await;
            conflict(&mut ws, txn, 5, 8).await;
            let txn = expect_increment(&mut ws, 5, 8).await;
            conflict(&mut ws, txn, 7, 10).await;

            // Aborted by the closure: it read the cache, so nothing is sent.

            assert!(next_msg(&mut ws).await.is_none(), "nothing more is sent");
        })
        .await;
        let client = Client::connect(&url, Some("u")).await.unwrap();

        // Spawned, with an `async move` closure owning its captures, to prove such a run
        // can move between threads (the load generator's case).
        let retried = tokio::spawn({
            let client = client.clone();
            async move {
                let (key, step) = (counter(), 0);
                let policy = RetryPolicy::default();
                client
                    .run(&policy, async move |tx| {
                        assert_eq!(key, counter());
                        Ok(increment(tx).await? + step)
                    })
                    .await
            }
        });
        let done = retried.await.unwrap().unwrap();
        assert_eq!(
            done,
            Committed {
                value: 5,
                version: Some(Version(3)),
                attempts: 2
            }
        );

        let read_only = client
            .run(&RetryPolicy::default(), async |tx| {
                Ok(tx.get(counter()).await?)
            })
            .await
            .unwrap();
        assert_eq!(
            read_only,
            Committed {
                value: Some(json!(6)),
                version: Some(Version(3)),
                attempts: 1
            }
        );

        match client
            .run(&RetryPolicy::default(), async |tx| increment(tx).await)
            .await
        {
            Err(ClientError::Rejected(e)) => assert_eq!(e.code, ErrorKind::Forbidden),
            other => panic!("expected the rejection, got {other:?}"),
        }

        let thrice = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        match client.run(&thrice, async |tx| increment(tx).await).await {
            Err(ClientError::TooManyConflicts { attempts: 3, key }) => assert_eq!(key, counter()),
            other => panic!("expected too many conflicts, got {other:?}"),
        }

        let aborted = client
            .run(&RetryPolicy::default(), async |tx| {
                let n = tx.get(counter()).await?;
                tx.put(counter(), Value::Null);
                Err::<(), _>(TxAbort::User(format!("saw {n:?}")))
            })
            .await;
        assert!(
            matches!(&aborted, Err(ClientError::Aborted(why)) if why == "saw Some(Number(10))"),
            "{aborted:?}"
        );

        client.close().await;
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_read_error_ends_the_run_as_the_servers_error() {
    bounded(async {
        let (url, server) = serve_one(async |mut ws| {
            welcome(&mut ws).await;
            let Some(ClientMessage::Read { id, .. }) = next_msg(&mut ws).await else {
                panic!("expected a read")
            };
            let error = ErrorReply::new(ErrorKind::UnknownTable, "no such table");
            send(
                &mut ws,
                ServerMessage::Error {
                    id: Some(id),
                    error,
                },
            )
            .await;
            assert!(next_msg(&mut ws).await.is_none());
        })
        .await;
        let client = Client::connect(&url, None).await.unwrap();
        let got = client
            .run(&RetryPolicy::default(), async |tx| {
                Ok(tx.get(Key::row("weapons", 1)).await?)
            })
            .await;
        assert!(
            matches!(&got, Err(ClientError::Server(e)) if e.code == ErrorKind::UnknownTable),
            "{got:?}"
        );
        client.close().await;
        server.await.unwrap();
    })
    .await;
}
