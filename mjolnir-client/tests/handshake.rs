//! Connecting: the welcome is required, and a refusal is reported as the server gave it.

mod support;

use mjolnir_client::{Client, ClientError};
use mjolnir_core::ErrorKind;
use mjolnir_core::protocol::close_code;
use support::{bounded, close, next_msg, refuse_protocol, serve_one, welcome};

#[tokio::test]
async fn a_welcome_gives_the_confirmed_user_and_instance() {
    bounded(async {
        let (url, server) = serve_one(async |mut ws| {
            welcome(&mut ws).await;
            assert!(next_msg(&mut ws).await.is_none(), "the client only closes");
        })
        .await;
        let client = Client::connect(&url, Some("alice")).await.unwrap();
        assert_eq!(client.user(), Some("alice"));
        assert_eq!(client.instance(), "test");
        assert!(client.next_txn_id().0.starts_with(client.client_id()));
        assert_ne!(client.next_txn_id(), client.next_txn_id());
        client.close().await;
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_refused_hello_returns_the_servers_error() {
    bounded(async {
        let (url, server) = serve_one(async |mut ws| refuse_protocol(&mut ws).await).await;
        match Client::connect(&url, None).await {
            Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorKind::ProtocolVersion),
            other => panic!("expected the server's error, got {other:?}"),
        }
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_close_instead_of_a_welcome_returns_its_code_and_reason() {
    bounded(async {
        let (url, server) = serve_one(async |mut ws| {
            next_msg(&mut ws).await.expect("a hello");
            close(&mut ws, close_code::HANDSHAKE, "who are you").await;
        })
        .await;
        match Client::connect(&url, Some("mallory")).await {
            Err(ClientError::Closed { code, reason }) => {
                assert_eq!(code, Some(close_code::HANDSHAKE));
                assert_eq!(reason, "who are you");
            }
            other => panic!("expected the close, got {other:?}"),
        }
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn nobody_listening_is_a_connect_error() {
    bounded(async {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = Client::connect(&format!("ws://127.0.0.1:{port}/ws"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
    })
    .await;
}
