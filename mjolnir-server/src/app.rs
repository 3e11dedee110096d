//! The HTTP face of an instance: the WebSocket endpoint, metrics and the app's static files.

use crate::feed::Outgoing;
use crate::files::PublicFiles;
use crate::identity::Vouched;
use crate::session::{self, Incoming};
use crate::state::AppState;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt, future};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The WebSocket read buffer of each connection.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Where pages find the browser client: `<script src="/_mjolnir/mjolnir.js">`. A fixed path
/// on every app's origin, so a static site needs nothing but that tag; the underscore keeps
/// it out of the way of an app's own folders.
pub const CLIENT_PATH: &str = "/_mjolnir";

/// The router of one instance. `static_files` are the app directory's public files;
/// `client_dir` holds the built browser client.
pub fn router(
    state: Arc<AppState>,
    static_files: Option<PublicFiles>,
    client_dir: Option<PathBuf>,
) -> Router {
    let mut router = Router::new()
        .route("/ws", get(ws))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }));
    router = match client_dir {
        Some(dir) => router.nest_service(CLIENT_PATH, tower_http::services::ServeDir::new(dir)),
        None => router.route(&format!("{CLIENT_PATH}/{{*file}}"), get(client_missing)),
    };
    if let Some(files) = static_files {
        let files = Arc::new(files);
        router = router.fallback(move |req: Request| files.clone().serve(req));
    }
    router.with_state(state)
}

/// Without a built client the drop-in's URL still answers, with a script that says why
/// nothing works, rather than a 404 a developer would have to go looking for.
async fn client_missing() -> Response {
    const MESSAGE: &str = "Mjölnir: this server has no browser client to serve. Build it with \
                           `node js/build.mjs` (scripts/setup.sh does) or pass --client-dir.";
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("content-type", "text/javascript; charset=utf-8")],
        format!("console.error({MESSAGE:?});"),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = state.metrics.render();
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
}

async fn ws(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: WebSocketUpgrade,
) -> Response {
    let from_proxy = state.identity.is_trusted_proxy(peer.ip());
    if let Err(refusal) = state.origins.check(&headers, &uri, from_proxy) {
        state.metrics.refused_origins.inc();
        tracing::info!(%peer, %refusal, "WebSocket refused");
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("Mjölnir refused this WebSocket: {refusal}\n"),
        )
            .into_response();
    }
    // Decided now, from the request, and told the client after its hello (see identity.rs).
    let vouched = state.identity.vouch(peer.ip(), &headers);
    if let Vouched::Refused(refusal) = &vouched {
        tracing::info!(%peer, %refusal, "the connection will be refused its user");
    }
    let limit = state.knobs.max_message_bytes;
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        // The read buffer is allocated whole for every connection: tungstenite's 128 KiB
        // made an idle connection cost ~140 KiB of server memory (mjolnir-bench memory).
        // Messages are small; a larger one is still read, in more steps.
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| serve_socket(state, vouched, socket))
}

/// Translates WebSocket frames to and from the session's own frame types.
async fn serve_socket(state: Arc<AppState>, vouched: Vouched, socket: WebSocket) {
    let (sink, stream) = socket.split();
    let incoming = stream
        .take_while(|frame| future::ready(!matches!(frame, Ok(Message::Close(_)))))
        .filter_map(|frame| {
            future::ready(match frame {
                Ok(Message::Text(t)) => Some(Some(Incoming::Text(t.as_str().to_owned()))),
                Ok(Message::Binary(_)) => Some(Some(Incoming::Binary)),
                Ok(_) => None,
                // tungstenite reports an oversized frame as a capacity error; any other
                // error means the connection is gone.
                Err(e) if e.to_string().contains("Space limit exceeded") => {
                    Some(Some(Incoming::TooLarge))
                }
                Err(_) => Some(None),
            })
        })
        .take_while(|frame| future::ready(frame.is_some()))
        .filter_map(future::ready);
    let outgoing = sink.with(|out: Outgoing| {
        future::ready(Ok::<_, axum::Error>(match out {
            Outgoing::Message(m) => Message::Text(m.to_json().into()),
            Outgoing::Close(code, reason) => Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        }))
    });
    session::run(state, vouched, Box::pin(incoming), Box::pin(outgoing)).await;
}
