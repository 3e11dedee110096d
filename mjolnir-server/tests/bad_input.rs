//! Bad input gets a typed error or a documented close code, loses nothing, and never
//! disturbs other clients.

mod support;

use mjolnir_client::{Client, ClientError, CommitOutcome, Unsolicited};
use mjolnir_core::protocol::{ServerMessage, close_code};
use mjolnir_core::{ErrorKind, Key, ReadSet, WriteOp, WriteSet};
use serde_json::{Value, json};
use std::time::Duration;
use support::{TestDb, app_with_schema, obj, writes};

fn one_write(key: Key, op: WriteOp) -> WriteSet {
    writes(vec![(key, op)])
}

const SCHEMA: &str = "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, qty integer NOT NULL CHECK (qty >= 0));
                      INSERT INTO items VALUES (1, 'hammer', 1), (2, 'anvil', 5);";

async fn next_unsolicited(c: &Client) -> Unsolicited {
    tokio::time::timeout(Duration::from_secs(10), c.next_unsolicited())
        .await
        .expect("an answer in time")
        .expect("a frame")
}

async fn expect_error(c: &Client, code: ErrorKind) {
    match next_unsolicited(c).await {
        Unsolicited::Message(ServerMessage::Error { error, .. }) => {
            assert_eq!(error.code, code, "{error:?}")
        }
        other => panic!("expected a {code:?} error, got {other:?}"),
    }
}

async fn rejected(outcome: CommitOutcome) -> ErrorKind {
    match outcome {
        CommitOutcome::Rejected(e) => e.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn qty(db: &TestDb, id: i32) -> i32 {
    sqlx::query_as::<_, (i32,)>("SELECT qty FROM items WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool().await)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn malformed_and_unknown_frames_get_typed_errors_and_the_connection_lives_on() {
    let db = TestDb::new("malformed").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let c = Client::connect(&server.ws_url(), Some("u")).await.unwrap();

    c.send_raw("{this is not json".into()).await.unwrap();
    expect_error(&c, ErrorKind::Malformed).await;
    c.send_raw(r#"{"type":"teleport","to":"asgard"}"#.into())
        .await
        .unwrap();
    expect_error(&c, ErrorKind::UnknownMessage).await;
    c.send_raw(r#"{"type":"read","id":"one","keys":[]}"#.into())
        .await
        .unwrap();
    expect_error(&c, ErrorKind::Malformed).await;
    c.send_raw(r#"{"type":"hello","protocol":1,"client_id":"again"}"#.into())
        .await
        .unwrap();
    expect_error(&c, ErrorKind::Handshake).await;

    let entries = c
        .read(vec![Key::row("items", 1)])
        .await
        .expect("the connection still works");
    assert_eq!(entries[0].value.as_ref().unwrap()["name"], "hammer");
}

/// A commit refused for what it says, not for its syntax (a key read twice, a version sent
/// as a number), still names its txn, and a read its id: the refusal is answered by name,
/// so that a client with several requests in flight knows which one failed.
#[tokio::test]
async fn a_refused_commit_or_read_is_answered_by_its_name() {
    let db = TestDb::new("named").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let c = Client::connect(&server.ws_url(), Some("u")).await.unwrap();
    let commits = [
        (
            "t-twice",
            r#"{"type":"commit","txn":"t-twice","reads":[
                {"key":{"kind":"row","table":"items","pk":1},"version":"0"},
                {"key":{"kind":"row","table":"items","pk":1},"version":"0"}],
               "writes":[{"key":{"kind":"row","table":"items","pk":1},"op":"update","set":{"qty":0}}]}"#,
        ),
        (
            "t-number",
            r#"{"type":"commit","txn":"t-number","reads":[
                {"key":{"kind":"row","table":"items","pk":1},"version":0}],
               "writes":[{"key":{"kind":"row","table":"items","pk":1},"op":"update","set":{"qty":0}}]}"#,
        ),
    ];
    for (txn, text) in commits {
        c.send_raw(text.into()).await.unwrap();
        match next_unsolicited(&c).await {
            Unsolicited::Message(ServerMessage::Rejected { txn: named, error }) => {
                assert_eq!(named.0, txn);
                assert_eq!(error.code, ErrorKind::Malformed, "{error:?}");
            }
            other => panic!("{txn}: expected a rejection naming it, got {other:?}"),
        }
    }
    c.send_raw(r#"{"type":"read","id":7,"keys":[{"kind":"row","table":"items"}]}"#.into())
        .await
        .unwrap();
    match next_unsolicited(&c).await {
        Unsolicited::Message(ServerMessage::Error { id, error }) => {
            assert_eq!(id, Some(7));
            assert_eq!(error.code, ErrorKind::Malformed, "{error:?}");
        }
        other => panic!("expected an error naming read 7, got {other:?}"),
    }
    assert_eq!(qty(&db, 1).await, 1, "nothing was applied");
}

#[tokio::test]
async fn a_wrong_protocol_version_is_refused_with_its_close_code() {
    let db = TestDb::new("protocol").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text(
        r#"{"type":"hello","protocol":999,"client_id":"x"}"#.into(),
    ))
    .await
    .unwrap();
    let mut saw_error = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                let msg = ServerMessage::parse(&t).unwrap();
                assert!(
                    matches!(&msg, ServerMessage::Error { error, .. } if error.code == ErrorKind::ProtocolVersion),
                    "{msg:?}"
                );
                saw_error = true;
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), close_code::PROTOCOL_VERSION);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_error);
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection() {
    let db = TestDb::new("oversize").await;
    let app = app_with_schema(SCHEMA);
    let server = db
        .start_with(app.path(), |c| c.knobs.max_message_bytes = 64 * 1024)
        .await;
    let big = Client::connect(&server.ws_url(), Some("big"))
        .await
        .unwrap();
    let other = Client::connect(&server.ws_url(), Some("other"))
        .await
        .unwrap();

    let huge = format!(
        r#"{{"type":"read","id":1,"keys":[{{"kind":"kv","key":"{}"}}]}}"#,
        "x".repeat(200 * 1024)
    );
    let _ = big.send_raw(huge).await;
    match next_unsolicited(&big).await {
        Unsolicited::Closed { code, .. } => assert_eq!(code, Some(1009)),
        other => panic!("expected close 1009, got {other:?}"),
    }
    assert!(matches!(
        big.read(vec![Key::row("items", 1)]).await,
        Err(ClientError::Disconnected)
    ));
    other
        .read(vec![Key::row("items", 1)])
        .await
        .expect("other clients are unaffected");
}

#[tokio::test]
async fn unknown_tables_columns_wrong_types_and_key_changes_are_refused_and_nothing_is_half_applied()
 {
    let db = TestDb::new("schema_errors").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let c = Client::connect(&server.ws_url(), Some("u")).await.unwrap();

    match c.read(vec![Key::row("weapons", 1)]).await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorKind::UnknownTable),
        other => panic!("expected unknown_table, got {other:?}"),
    }
    match c.read(vec![Key::row("items", "one")]).await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorKind::WrongType),
        other => {
            panic!("a text key for an integer primary key: expected wrong_type, got {other:?}")
        }
    }

    let entries = c
        .read(vec![Key::row("items", 1), Key::row("items", 2)])
        .await
        .unwrap();
    let reads: ReadSet = entries.iter().map(|e| (e.key.clone(), e.version)).collect();
    let update = |id: i64, set: Value| (Key::row("items", id), WriteOp::Update { set: obj(set) });
    let cases: Vec<(WriteSet, ErrorKind)> = vec![
        (
            one_write(Key::row("weapons", 1), WriteOp::Delete),
            ErrorKind::UnknownTable,
        ),
        (
            one_write(
                update(1, json!({"colour": "grey"})).0,
                update(1, json!({"colour": "grey"})).1,
            ),
            ErrorKind::UnknownColumn,
        ),
        (
            one_write(
                update(1, json!({"qty": "lots"})).0,
                update(1, json!({"qty": "lots"})).1,
            ),
            ErrorKind::WrongType,
        ),
        (
            one_write(update(1, json!({"id": 3})).0, update(1, json!({"id": 3})).1),
            ErrorKind::PrimaryKeyChange,
        ),
        (
            one_write(Key::row("items", 1), WriteOp::Put { value: json!(1) }),
            ErrorKind::InvalidWrite,
        ),
        (
            one_write(
                Key::kv("k"),
                WriteOp::Update {
                    set: obj(json!({"a": 1})),
                },
            ),
            ErrorKind::InvalidWrite,
        ),
        // A good write and a bad one: neither may land.
        (
            {
                let mut w = WriteSet::new();
                let (k, op) = update(2, json!({"qty": 4}));
                w.push(k, op);
                let (k, op) = update(1, json!({"qty": -1}));
                w.push(k, op);
                w
            },
            ErrorKind::ConstraintViolation,
        ),
        (
            one_write(
                Key::row("items", 9),
                WriteOp::Update {
                    set: obj(json!({"qty": 1})),
                },
            ),
            ErrorKind::NotFound,
        ),
        (
            one_write(
                Key::row("items", 2),
                WriteOp::Insert {
                    row: obj(json!({"name": "dup", "qty": 1})),
                },
            ),
            ErrorKind::ConstraintViolation,
        ),
    ];
    for (writes, code) in cases {
        let outcome = c
            .commit(c.next_txn_id(), reads.clone(), writes.clone())
            .await
            .unwrap();
        assert_eq!(rejected(outcome).await, code, "writes: {writes:?}");
    }
    assert_eq!(qty(&db, 1).await, 1);
    assert_eq!(
        qty(&db, 2).await,
        5,
        "the good half of a refused commit must not land"
    );
    let metrics = server.state.metrics.render();
    assert!(
        metrics.contains("mjolnir_rejections_total{code=\"wrong_type\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reads_is_answered_in_bounded_steps_while_others_commit() {
    let db = TestDb::new("flood").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let flooder = Client::connect(&server.ws_url(), Some("flood"))
        .await
        .unwrap();
    let worker = Client::connect(&server.ws_url(), Some("work"))
        .await
        .unwrap();

    const FLOOD: usize = 3000;
    let flood = {
        let flooder = flooder.clone();
        tokio::spawn(async move {
            let reads =
                (0..FLOOD).map(|_| flooder.read(vec![Key::row("items", 1), Key::row("items", 2)]));
            futures_util::future::join_all(reads).await
        })
    };
    // Meanwhile another client commits ten times, each promptly.
    for i in 0..10 {
        let started = std::time::Instant::now();
        let entries = worker.read(vec![Key::row("items", 2)]).await.unwrap();
        let reads: ReadSet = entries.iter().map(|e| (e.key.clone(), e.version)).collect();
        let w = one_write(
            Key::row("items", 2),
            WriteOp::Update {
                set: obj(json!({"name": format!("anvil {i}")})),
            },
        );
        let outcome = worker.commit(worker.next_txn_id(), reads, w).await.unwrap();
        assert!(
            matches!(outcome, CommitOutcome::Committed(_)),
            "{outcome:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a flood on one connection must not stall another"
        );
    }
    let answers = tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("flood answered")
        .unwrap();
    assert_eq!(answers.len(), FLOOD);
    assert!(
        answers.iter().all(Result::is_ok),
        "every read of the flood is answered"
    );
}
