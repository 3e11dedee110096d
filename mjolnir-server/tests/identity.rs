//! Who a connection acts for behind `mjolnir serve`: the authenticating proxy's header, never
//! the hello's claim (the browser runtime claims the page's `?user=`, which only
//! `mjolnir dev` believes).

mod support;

use futures_util::{SinkExt, StreamExt};
use mjolnir_server::identity::Identity;
use serde_json::{Value, json};
use support::{BANK_SCHEMA, TestDb, app_with_schema};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Says hello claiming `claim` over a connection whose upgrade carries `header`, and returns
/// the server's first frame: a message, or the close code.
async fn hello(url: &str, header: Option<&str>, claim: &str) -> Result<Value, u16> {
    let mut request = url.into_client_request().unwrap();
    if let Some(user) = header {
        request
            .headers_mut()
            .insert("X-Forwarded-User", user.parse().unwrap());
    }
    let (mut ws, _) = connect_async(request).await.unwrap();
    let hello = json!({"type": "hello", "protocol": 1, "client_id": "c", "user": claim});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a reply in time");
        match frame.unwrap().unwrap() {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "welcome" {
                    return Ok(v);
                }
            }
            Message::Close(f) => return Err(f.map_or(0, |f| f.code.into())),
            _ => {}
        }
    }
}

#[tokio::test]
async fn behind_a_proxy_the_header_names_the_user_and_the_claim_is_ignored() {
    let db = TestDb::new("identity_header").await;
    let app = app_with_schema(BANK_SCHEMA);
    let server = db
        .start_with(app.path(), |c| {
            c.identity = Identity::Header("X-Forwarded-User".into());
        })
        .await;
    let url = server.ws_url();

    let welcome = hello(&url, Some("alice"), "bob").await.unwrap();
    assert_eq!(
        welcome["user"], "alice",
        "a ?user=bob claim does not make alice bob"
    );

    let refused = hello(&url, None, "bob").await.unwrap_err();
    assert_eq!(
        refused, 4001,
        "no header, no user: the handshake is refused"
    );
}
