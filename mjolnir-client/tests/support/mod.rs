//! A scripted WebSocket server on 127.0.0.1 that plays one side of an exchange, so the
//! client's behaviour can be tested before (and apart from) the real server.

#![allow(dead_code)] // Each test file uses its own subset.

use futures_util::{SinkExt, StreamExt};
use mjolnir_core::protocol::{Entry, ServerMessage, close_code};
use mjolnir_core::{ClientMessage, Key, PROTOCOL_VERSION, Version};
use serde_json::Value;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{WebSocketStream, accept_async_with_config};

pub type ServerWs = WebSocketStream<TcpStream>;

/// Every test finishes within this, or fails.
pub const BOUND: Duration = Duration::from_secs(10);

pub async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, test)
        .await
        .expect("the test finishes in time")
}

/// Serves one connection with `script`; returns the url to connect to and the script's
/// task, whose panics the test sees when it awaits the task.
pub async fn serve_one<F, Fut>(script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    serve_one_with(WebSocketConfig::default(), script).await
}

/// [`serve_one`] with the server's WebSocket limits set by `config`.
pub async fn serve_one_with<F, Fut>(config: WebSocketConfig, script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = accept_async_with_config(tcp, Some(config)).await.unwrap();
        script(ws).await;
    });
    (url, task)
}

/// The next text frame, parsed; `None` once the client closed or went away.
pub async fn next_msg(ws: &mut ServerWs) -> Option<ClientMessage> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => {
                return Some(ClientMessage::parse(text.as_str()).expect("a client message"));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The next text frame, unparsed.
pub async fn next_text(ws: &mut ServerWs) -> String {
    match ws.next().await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

pub async fn send(ws: &mut ServerWs, msg: ServerMessage) {
    ws.send(Message::text(msg.to_json())).await.unwrap();
}

/// Sends a close frame and waits for the client's side of the connection to end.
pub async fn close(ws: &mut ServerWs, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    ws.send(Message::Close(Some(frame))).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

/// Answers the hello with a welcome as instance "test"; returns the hello's client id.
pub async fn welcome(ws: &mut ServerWs) -> String {
    let Some(ClientMessage::Hello {
        protocol,
        client_id,
        user,
    }) = next_msg(ws).await
    else {
        panic!("expected a hello");
    };
    assert_eq!(protocol, PROTOCOL_VERSION);
    send(
        ws,
        ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            user,
            instance: "test".into(),
            tables: Default::default(),
        },
    )
    .await;
    client_id
}

pub fn entry(key: &Key, version: u64, value: Option<Value>) -> Entry {
    Entry {
        key: key.clone(),
        version: Version(version),
        value,
    }
}

/// Refuses the hello like a server that speaks another protocol version.
pub async fn refuse_protocol(ws: &mut ServerWs) {
    use mjolnir_core::ErrorKind;
    use mjolnir_core::protocol::ErrorReply;
    next_msg(ws).await.expect("a hello");
    send(
        ws,
        ServerMessage::Error {
            id: None,
            error: ErrorReply::new(ErrorKind::ProtocolVersion, "speak 2"),
        },
    )
    .await;
    close(ws, close_code::PROTOCOL_VERSION, "unsupported protocol").await;
}
