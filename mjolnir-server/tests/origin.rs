//! A page of another site cannot open a WebSocket to the server (cross-site WebSocket
//! hijacking): the upgrade of a browser whose `Origin` is not allowed is refused with 403
//! before upgrading. Native clients, which send no `Origin`, are accepted.

mod support;

use axum::http::HeaderName;
use futures_util::{SinkExt, StreamExt};
use mjolnir_server::identity::{Identity, TrustedProxies, parse_proxy};
use mjolnir_server::origin::AllowedOrigins;
use mjolnir_server::server::Running;
use serde_json::{Value, json};
use support::{BANK_SCHEMA, TestDb, app_with_schema};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};

/// Opens `/ws` with these extra headers and says hello. `Ok` with the welcome, or `Err`
/// with the HTTP status and body that refused the upgrade.
async fn connect(
    server: &Running,
    headers: &[(&'static str, &str)],
) -> Result<Value, (u16, String)> {
    let mut request = server.ws_url().into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(*name, value.parse().unwrap());
    }
    let mut ws = match connect_async(request).await {
        Ok((ws, _)) => ws,
        Err(Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            return Err((
                response.status().as_u16(),
                String::from_utf8_lossy(body).into_owned(),
            ));
        }
        Err(e) => panic!("connecting: {e}"),
    };
    let hello = json!({"type": "hello", "protocol": 1, "client_id": "c"});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a reply in time");
        if let Message::Text(t) = frame.unwrap().unwrap() {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "welcome", "{v}");
            return Ok(v);
        }
    }
}

/// Asserts that `origin` is refused with 403 and a body saying why.
async fn assert_refused(server: &Running, origin: &str, why: &str) {
    let (status, body) = connect(server, &[("origin", origin)]).await.unwrap_err();
    assert_eq!(status, 403, "{origin}: {body}");
    assert!(
        body.starts_with("Mjölnir refused this WebSocket: ") && body.contains(why),
        "{origin}: {body}"
    );
}

async fn start(
    label: &str,
    origins: AllowedOrigins,
    identity: Identity,
) -> (TestDb, tempfile::TempDir, Running) {
    let db = TestDb::new(label).await;
    let app = app_with_schema(BANK_SCHEMA);
    let server = db
        .start_with(app.path(), |c| {
            c.origins = origins;
            c.identity = identity;
        })
        .await;
    (db, app, server)
}

#[tokio::test]
async fn serve_accepts_pages_of_its_own_host_only() {
    let (_db, _app, server) = start(
        "origin_same_host",
        AllowedOrigins::serve(vec![]),
        Identity::Anonymous,
    )
    .await;
    let own = format!("http://{}", server.addr);
    connect(&server, &[("origin", &own)]).await.unwrap();
    connect(&server, &[])
        .await
        .expect("a native client sends no origin");

    assert_refused(
        &server,
        "https://evil.example",
        "not the origin of this server",
    )
    .await;
    let other_port = format!("http://127.0.0.1:{}", server.addr.port() ^ 1);
    assert_refused(&server, &other_port, "not the origin of this server").await;
    assert_refused(&server, "null", "opaque").await;
    let metrics = server.state.metrics.render();
    assert!(
        metrics.contains("mjolnir_refused_origins_total 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn listed_origins_replace_the_servers_own() {
    let (_db, _app, server) = start(
        "origin_listed",
        AllowedOrigins::serve(vec!["https://app.example.com".parse().unwrap()]),
        Identity::Anonymous,
    )
    .await;
    connect(&server, &[("origin", "https://app.example.com")])
        .await
        .unwrap();
    let own = format!("http://{}", server.addr);
    assert_refused(&server, &own, "--allowed-origin").await;
    assert_refused(&server, "https://evil.example", "--allowed-origin").await;
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_host_is_the_host() {
    let proxy = |net: &str| Identity::ProxyHeader {
        name: HeaderName::from_static("x-forwarded-user"),
        proxies: TrustedProxies::new([parse_proxy(net).unwrap()]),
    };
    let through_proxy = [
        ("origin", "https://app.example.com"),
        ("x-forwarded-host", "app.example.com"),
        ("x-forwarded-user", "alice"),
    ];
    let (_db, _app, server) = start(
        "origin_proxy",
        AllowedOrigins::serve(vec![]),
        proxy("127.0.0.1"),
    )
    .await;
    let welcome = connect(&server, &through_proxy).await.unwrap();
    assert_eq!(welcome["user"], "alice");

    let (_db, _app, server) = start(
        "origin_not_proxy",
        AllowedOrigins::serve(vec![]),
        proxy("10.0.0.0/8"),
    )
    .await;
    let (status, body) = connect(&server, &through_proxy).await.unwrap_err();
    assert_eq!(
        status, 403,
        "anyone else's X-Forwarded-Host is ignored: {body}"
    );
}

#[tokio::test]
async fn dev_accepts_loopback_pages_and_the_listed_ones() {
    let (_db, _app, server) = start(
        "origin_dev",
        AllowedOrigins::Loopback(vec!["http://192.168.1.5:8080".parse().unwrap()]),
        Identity::TrustClaim,
    )
    .await;
    let own = format!("http://{}", server.addr);
    for origin in [
        own.as_str(),
        "http://localhost:5173",
        "http://127.0.0.2:8080",
        "http://[::1]:3000",
        "http://192.168.1.5:8080",
    ] {
        connect(&server, &[("origin", origin)])
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e:?}"));
    }
    connect(&server, &[]).await.unwrap();
    for origin in [
        "https://evil.example",
        "http://192.168.1.6:8080",
        "http://localhost.evil.example",
    ] {
        assert_refused(&server, origin, "accepts pages from localhost").await;
    }
    assert_refused(&server, "null", "opaque").await;
}
