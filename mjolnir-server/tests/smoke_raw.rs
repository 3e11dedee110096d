//! The protocol spoken by hand, frame by frame: a read, a commit, a push to another instance.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{BANK_SCHEMA, TestDb, app_with_schema};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a reply in time");
        match msg.unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_commit_on_one_instance_is_pushed_by_another() {
    let db = TestDb::new("smoke").await;
    let app = app_with_schema(&format!(
        "{BANK_SCHEMA} INSERT INTO accounts VALUES (1, 100), (2, 100);"
    ));
    let a = db.start(app.path()).await;
    let b = db.start(app.path()).await;

    let (mut alice, _) = connect_async(a.ws_url()).await.unwrap();
    let (mut watcher, _) = connect_async(b.ws_url()).await.unwrap();
    send(
        &mut alice,
        json!({"type": "hello", "protocol": 1, "client_id": "c1", "user": "alice"}),
    )
    .await;
    assert_eq!(recv(&mut alice).await["type"], "welcome");
    send(
        &mut watcher,
        json!({"type": "hello", "protocol": 1, "client_id": "c2"}),
    )
    .await;
    assert_eq!(recv(&mut watcher).await["type"], "welcome");

    let k1 = json!({"kind": "row", "table": "accounts", "pk": 1});
    let k2 = json!({"kind": "row", "table": "accounts", "pk": 2});
    send(&mut watcher, json!({"type": "read", "id": 1, "keys": [k2]})).await;
    let values = recv(&mut watcher).await;
    assert_eq!(
        values["entries"][0]["value"],
        json!({"id": 2, "balance": 100}),
        "{values}"
    );

    send(
        &mut alice,
        json!({"type": "read", "id": 7, "keys": [k1, k2]}),
    )
    .await;
    let values = recv(&mut alice).await;
    assert_eq!(values["type"], "values", "{values}");
    assert_eq!(values["id"], 7);
    let v1 = values["entries"][0]["version"].clone();
    let v2 = values["entries"][1]["version"].clone();
    assert_eq!(
        v1, "0",
        "seed rows written by a migration were never committed through Mjölnir"
    );

    send(
        &mut alice,
        json!({"type": "commit", "txn": "c1:1",
        "reads": [{"key": k1, "version": v1}, {"key": k2, "version": v2}],
        "writes": [{"key": k1, "op": "update", "set": {"balance": 90}},
                   {"key": k2, "op": "update", "set": {"balance": 110}}]}),
    )
    .await;
    let reply = loop {
        let m = recv(&mut alice).await;
        if m["type"] != "push" {
            break m;
        }
    };
    assert_eq!(reply["type"], "committed", "{reply}");

    let push = recv(&mut watcher).await;
    assert_eq!(push["type"], "push", "{push}");
    assert_eq!(
        push["changes"],
        json!([{"key": k2, "version": reply["version"], "value": {"id": 2, "balance": 110}}])
    );

    // The same reads again are stale now.
    send(
        &mut alice,
        json!({"type": "commit", "txn": "c1:2",
        "reads": [{"key": k1, "version": v1}],
        "writes": [{"key": k1, "op": "update", "set": {"balance": 0}}]}),
    )
    .await;
    let reply = loop {
        let m = recv(&mut alice).await;
        if m["type"] != "push" {
            break m;
        }
    };
    assert_eq!(reply["type"], "conflict", "{reply}");
    assert_eq!(reply["stale"][0]["value"]["balance"], 90);
}
