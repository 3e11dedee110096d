//! Many requests in flight on one connection: replies reach their own request whatever
//! their order, and an ended connection fails whatever still waits.

mod support;

use futures_util::{SinkExt, StreamExt};
use mjolnir_client::{Client, ClientError, CommitOutcome, Unsolicited};
use mjolnir_core::protocol::{ErrorReply, ServerMessage, close_code};
use mjolnir_core::{ClientMessage, ErrorKind, Key, ReadSet, Version, WriteOp, WriteSet};
use serde_json::json;
use support::{
    bounded, close, entry, next_msg, next_text, send, serve_one, serve_one_with, welcome,
};
use tokio::sync::{broadcast, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test]
async fn pipelined_replies_reach_their_own_requests_and_a_server_close_fails_the_rest() {
    bounded(async {
        let (a, b) = (Key::kv("a"), Key::kv("b"));
        let (url, server) = serve_one({
            let (a, b) = (a.clone(), b.clone());
            async move |mut ws| {
                welcome(&mut ws).await;
                // Take all three requests before answering any, then answer out of order.
                let mut reads = Vec::new();
                let mut commit = None;
                while reads.len() < 2 || commit.is_none() {
                    match next_msg(&mut ws).await.expect("three requests") {
                        ClientMessage::Read { id, keys } => reads.push((id, keys)),
                        ClientMessage::Commit { txn, writes, .. } => {
                            assert_eq!(writes.len(), 1);
                            commit = Some(txn);
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                let id_of = |k: &Key| {
                    reads
                        .iter()
                        .find(|(_, keys)| keys == std::slice::from_ref(k))
                        .unwrap()
                        .0
                };
                let (id_a, id_b) = (id_of(&a), id_of(&b));
                assert_ne!(id_a, id_b);
                send(
                    &mut ws,
                    ServerMessage::Values {
                        id: id_b,
                        entries: vec![entry(&b, 2, Some(json!("bee")))],
                    },
                )
                .await;
                send(
                    &mut ws,
                    ServerMessage::Committed {
                        txn: commit.unwrap(),
                        version: Version(8),
                    },
                )
                .await;
                send(
                    &mut ws,
                    ServerMessage::Push {
                        version: Version(8),
                        changes: vec![entry(&a, 8, Some(json!(8)))],
                    },
                )
                .await;
                send(
                    &mut ws,
                    ServerMessage::Values {
                        id: id_a,
                        entries: vec![entry(&a, 1, Some(json!("ay")))],
                    },
                )
                .await;

                // Garbage gets an anonymous error, and a reply nobody asked for is stray.
                assert_eq!(next_text(&mut ws).await, "{garbage");
                let malformed = ErrorReply::new(ErrorKind::Malformed, "not json");
                send(
                    &mut ws,
                    ServerMessage::Error {
                        id: None,
                        error: malformed,
                    },
                )
                .await;
                send(
                    &mut ws,
                    ServerMessage::Values {
                        id: 4242,
                        entries: vec![],
                    },
                )
                .await;

                // The last read is never answered: the server goes away instead.
                assert!(matches!(
                    next_msg(&mut ws).await,
                    Some(ClientMessage::Read { .. })
                ));
                close(&mut ws, close_code::FEED_LOST, "feed lost").await;
            }
        })
        .await;

        let client = Client::connect(&url, Some("u")).await.unwrap();
        let mut pushes = client.pushes();
        let mut writes = WriteSet::new();
        writes.push(a.clone(), WriteOp::Put { value: json!(8) });
        let txn = client.next_txn_id();
        let (got_a, got_b, outcome) = tokio::join!(
            client.read(vec![a.clone()]),
            client.read(vec![b.clone()]),
            client.commit(txn, ReadSet::new(), writes),
        );
        assert_eq!(got_a.unwrap(), vec![entry(&a, 1, Some(json!("ay")))]);
        assert_eq!(got_b.unwrap(), vec![entry(&b, 2, Some(json!("bee")))]);
        assert_eq!(outcome.unwrap(), CommitOutcome::Committed(Version(8)));
        assert_eq!(
            pushes.recv().await.unwrap(),
            (Version(8), vec![entry(&a, 8, Some(json!(8)))])
        );

        client.send_raw("{garbage".into()).await.unwrap();
        match client.next_unsolicited().await {
            Some(Unsolicited::Message(ServerMessage::Error { id: None, error })) => {
                assert_eq!(error.code, ErrorKind::Malformed);
            }
            other => panic!("expected the anonymous error, got {other:?}"),
        }
        assert_eq!(
            client.next_unsolicited().await,
            Some(Unsolicited::Message(ServerMessage::Values {
                id: 4242,
                entries: vec![]
            }))
        );

        assert!(matches!(
            client.read(vec![Key::kv("c")]).await,
            Err(ClientError::Disconnected)
        ));
        assert_eq!(
            client.next_unsolicited().await,
            Some(Unsolicited::Closed {
                code: Some(close_code::FEED_LOST),
                reason: "feed lost".into()
            })
        );
        assert_eq!(client.next_unsolicited().await, None);
        // Everything after the end fails at once.
        assert!(matches!(
            client.read(vec![a.clone()]).await,
            Err(ClientError::Disconnected)
        ));
        let late = client
            .commit(client.next_txn_id(), ReadSet::new(), WriteSet::new())
            .await;
        assert!(matches!(late, Err(ClientError::Disconnected)));
        assert!(matches!(
            client.send_raw("{}".into()).await,
            Err(ClientError::Disconnected)
        ));
        assert!(matches!(
            pushes.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        assert!(matches!(
            client.pushes().recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn closing_locally_sends_what_was_queued_and_fails_pending_requests() {
    bounded(async {
        let (got_read, read_seen) = oneshot::channel();
        let (url, server) = serve_one(async move |mut ws| {
            welcome(&mut ws).await;
            assert!(matches!(
                next_msg(&mut ws).await,
                Some(ClientMessage::Read { .. })
            ));
            got_read.send(()).unwrap();
            // The raw frame sent just before the close still arrives, then the close.
            assert_eq!(next_text(&mut ws).await, "last words");
            assert!(next_msg(&mut ws).await.is_none());
        })
        .await;

        let client = Client::connect(&url, None).await.unwrap();
        let pending = tokio::spawn({
            let client = client.clone();
            async move { client.read(vec![Key::kv("never")]).await }
        });
        read_seen.await.unwrap();
        client.send_raw("last words".into()).await.unwrap();
        client.close().await;
        assert!(matches!(
            pending.await.unwrap(),
            Err(ClientError::Disconnected)
        ));
        assert!(matches!(
            client.read(vec![Key::kv("x")]).await,
            Err(ClientError::Disconnected)
        ));
        assert!(matches!(
            client.next_unsolicited().await,
            Some(Unsolicited::Closed { code: None, .. })
        ));
        assert_eq!(client.next_unsolicited().await, None);
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_connection() {
    bounded(async {
        let (url, server) = serve_one(async |mut ws| {
            welcome(&mut ws).await;
            assert!(next_msg(&mut ws).await.is_none());
        })
        .await;
        let client = Client::connect(&url, None).await.unwrap();
        let other = client.clone();
        drop(client);
        drop(other);
        server.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_reads_each_get_their_own_answer() {
    bounded(async {
        const N: usize = 1000;
        let (url, server) = serve_one(async |mut ws| {
            welcome(&mut ws).await;
            let mut asked = Vec::new();
            for _ in 0..N {
                match next_msg(&mut ws).await {
                    Some(ClientMessage::Read { id, keys }) => asked.push((id, keys)),
                    other => panic!("expected a read, got {other:?}"),
                }
            }
            // Answer in reverse, each with the version its key names.
            for (id, keys) in asked.into_iter().rev() {
                let entries = keys
                    .iter()
                    .map(|k| {
                        let Key::Kv { key } = k else { panic!() };
                        entry(k, key.parse().unwrap(), None)
                    })
                    .collect();
                send(&mut ws, ServerMessage::Values { id, entries }).await;
            }
            assert!(next_msg(&mut ws).await.is_none());
        })
        .await;
        let client = Client::connect(&url, None).await.unwrap();
        let reads = (0..N).map(|i| {
            let client = client.clone();
            async move { (i, client.read(vec![Key::kv(i.to_string())]).await) }
        });
        for (i, got) in futures_util::future::join_all(reads).await {
            let got = got.unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(
                got[0].version,
                Version(i as u64),
                "read {i} got another read's answer"
            );
        }
        client.close().await;
        server.await.unwrap();
    })
    .await;
}

/// Like a server with a frame limit: it refuses the frame, sends 1009 and drops the
/// socket while the client may still be writing. The client must report the code, not
/// just the broken write.
#[tokio::test]
async fn an_oversized_frame_refused_by_the_server_reports_its_close_code() {
    for size in [200 << 10, 4 << 20] {
        bounded(async {
            let limit = WebSocketConfig::default()
                .max_message_size(Some(64 << 10))
                .max_frame_size(Some(64 << 10));
            let (url, server) = serve_one_with(limit, async |mut ws| {
                welcome(&mut ws).await;
                match ws.next().await {
                    Some(Err(tungstenite::Error::Capacity(_))) => {}
                    other => panic!("expected the frame to be too big, got {other:?}"),
                }
                let frame = CloseFrame {
                    code: CloseCode::Size,
                    reason: "too big".into(),
                };
                let _ = ws.send(Message::Close(Some(frame))).await;
                // Dropped with the rest of the frame unread.
            })
            .await;
            let client = Client::connect(&url, None).await.unwrap();
            let _ = client.send_raw("x".repeat(size)).await;
            assert_eq!(
                client.next_unsolicited().await,
                Some(Unsolicited::Closed {
                    code: Some(1009),
                    reason: "too big".into()
                }),
                "after a frame of {size} bytes"
            );
            assert!(matches!(
                client.read(vec![Key::kv("a")]).await,
                Err(ClientError::Disconnected)
            ));
            server.await.unwrap();
        })
        .await;
    }
}
