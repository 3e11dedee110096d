//! Who a connection acts for behind `mjolnir serve`: the authenticating proxy's header, and
//! only from the proxy's address; never the hello's claim (the browser runtime claims the
//! page's `?user=`, which only `mjolnir dev` believes). Without a proxy, no one.
//!
//! The tests connect from 127.0.0.1: trusting 127.0.0.1 makes them the proxy, trusting
//! 10.0.0.0/8 makes them anyone else who reaches the port.

mod support;

use axum::http::HeaderName;
use futures_util::{SinkExt, StreamExt};
use mjolnir_server::identity::{Identity, TrustedProxies, parse_proxy};
use serde_json::{Value, json};
use support::{BANK_SCHEMA, TestDb, app_with_schema};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The handshake was refused: the close code and the error message sent before it.
#[derive(Debug)]
struct Refused {
    code: u16,
    message: String,
}

/// Says hello claiming `claim` over a connection whose upgrade carries one
/// `X-Forwarded-User` header per value of `header`, and returns the welcome.
async fn hello(url: &str, header: &[&str], claim: &str) -> Result<Value, Refused> {
    let mut request = url.into_client_request().unwrap();
    for user in header {
        request
            .headers_mut()
            .append("X-Forwarded-User", user.parse().unwrap());
    }
    let (mut ws, _) = connect_async(request).await.unwrap();
    let hello = json!({"type": "hello", "protocol": 1, "client_id": "c", "user": claim});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    let mut message = String::new();
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
                if v["type"] == "error" {
                    assert_eq!(v["error"]["code"], "unauthenticated", "{v}");
                    message = v["error"]["message"].as_str().unwrap_or("").to_owned();
                }
            }
            Message::Close(f) => {
                return Err(Refused {
                    code: f.map_or(0, |f| f.code.into()),
                    message,
                });
            }
            _ => {}
        }
    }
}

/// `X-Forwarded-User` believed from `proxies`.
fn proxy_header(proxies: &[&str]) -> Identity {
    Identity::ProxyHeader {
        name: HeaderName::from_static("x-forwarded-user"),
        proxies: TrustedProxies::new(proxies.iter().map(|p| parse_proxy(p).unwrap())),
    }
}

#[tokio::test]
async fn from_a_trusted_proxy_the_header_names_the_user_and_the_claim_is_ignored() {
    let db = TestDb::new("identity_header").await;
    let app = app_with_schema(BANK_SCHEMA);
    let server = db
        .start_with(app.path(), |c| c.identity = proxy_header(&["127.0.0.1"]))
        .await;
    let url = server.ws_url();

    let welcome = hello(&url, &["alice"], "bob").await.unwrap();
    assert_eq!(
        welcome["user"], "alice",
        "a ?user=bob claim does not make alice bob"
    );

    let refused = hello(&url, &[], "bob").await.unwrap_err();
    assert_eq!(
        refused.code, 4001,
        "no header, no user: the handshake is refused"
    );
}

#[tokio::test]
async fn the_header_from_an_untrusted_peer_is_refused() {
    let db = TestDb::new("identity_untrusted").await;
    let app = app_with_schema(BANK_SCHEMA);
    let server = db
        .start_with(app.path(), |c| c.identity = proxy_header(&["10.0.0.0/8"]))
        .await;

    let refused = hello(&server.ws_url(), &["alice"], "alice")
        .await
        .unwrap_err();
    assert_eq!(refused.code, 4001, "{refused:?}");
    assert!(
        refused.message.contains("127.0.0.1 is not a trusted proxy"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn an_empty_or_repeated_header_is_refused() {
    let db = TestDb::new("identity_odd_header").await;
    let app = app_with_schema(BANK_SCHEMA);
    let server = db
        .start_with(app.path(), |c| c.identity = proxy_header(&["127.0.0.1"]))
        .await;
    let url = server.ws_url();

    let empty = hello(&url, &[""], "alice").await.unwrap_err();
    assert_eq!(empty.code, 4001, "{empty:?}");
    assert!(empty.message.contains("is empty"), "{empty:?}");

    for twice in [["eve", "alice"], ["alice", "alice"]] {
        let refused = hello(&url, &twice, "alice").await.unwrap_err();
        assert_eq!(refused.code, 4001, "{twice:?}: {refused:?}");
        assert!(
            refused.message.contains("more than one"),
            "{twice:?}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn without_a_proxy_every_connection_is_anonymous() {
    let db = TestDb::new("identity_anonymous").await;
    let app = app_with_schema(BANK_SCHEMA);
    let server = db
        .start_with(app.path(), |c| c.identity = Identity::Anonymous)
        .await;
    let url = server.ws_url();

    for header in [&["alice"][..], &[]] {
        let welcome = hello(&url, header, "bob").await.unwrap();
        assert_eq!(
            welcome["user"],
            Value::Null,
            "neither the header {header:?} nor the claim names the user: {welcome}"
        );
    }
}
