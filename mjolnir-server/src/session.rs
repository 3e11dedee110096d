//! One client connection: the handshake, then requests in, replies and pushes out.
//!
//! The session knows nothing of WebSockets: [`run`] takes a stream of [`Incoming`] frames
//! and a sink of [`Outgoing`] ones, so tests can drive it with channels and the HTTP layer
//! ([`crate::app`]) only translates frames.

use crate::feed::{ConnId, Outbox, Outgoing};
use crate::identity::Vouched;
use crate::state::AppState;
use crate::store::{Outcome, Request, Sequence, Stage, Turn};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use mjolnir_core::protocol::{ErrorReply, Named, ServerMessage, close_code};
use mjolnir_core::{ClientMessage, ErrorKind, Key, PROTOCOL_VERSION, TxnId};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Notify, Semaphore, mpsc};
use tracing::Instrument;

/// A frame from the client, as the transport saw it.
#[derive(Debug)]
pub enum Incoming {
    Text(String),
    /// A binary frame: not part of the protocol.
    Binary,
    /// A frame over the size limit; the transport refused it.
    TooLarge,
}

/// The standard close code for a message over the size limit.
const CLOSE_TOO_BIG: u16 = 1009;

/// Runs one connection until the client leaves or must be closed. `vouched` is what the
/// upgrade request established about the connection's user.
pub async fn run<I, O>(state: Arc<AppState>, vouched: Vouched, mut incoming: I, outgoing: O)
where
    I: Stream<Item = Incoming> + Unpin,
    O: Sink<Outgoing> + Unpin + Send + 'static,
{
    let (queue, rx) = mpsc::channel(state.knobs.outbound_queue);
    let kill = Arc::new(Notify::new());
    let writer = tokio::spawn(write_loop(rx, kill.clone(), outgoing));
    let outbox = Outbox { queue, kill };

    let Some((user, client_id)) = handshake(&state, &vouched, &mut incoming, &outbox).await else {
        drop(outbox);
        let _ = writer.await;
        return;
    };
    let conn = state.feed.register(outbox.clone(), user.clone());
    state.metrics.open_connections.inc();
    let span = tracing::info_span!("conn", conn, client = %client_id, user = user.as_deref().unwrap_or(""));
    async {
        tracing::debug!("connected");
        serve(&state, conn, user, &mut incoming, &outbox).await;
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await;
    state.feed.unregister(conn);
    state.metrics.open_connections.dec();
    drop(outbox);
    let _ = writer.await;
}

/// Waits for the hello. Returns the confirmed user and the client's id, or `None` after
/// closing the connection.
async fn handshake<I>(
    state: &AppState,
    vouched: &Vouched,
    incoming: &mut I,
    outbox: &Outbox,
) -> Option<(Option<String>, String)>
where
    I: Stream<Item = Incoming> + Unpin,
{
    let refuse = |code: u16, reply: ErrorReply| async move {
        let reason = reply.message.chars().take(120).collect();
        let _ = outbox
            .queue
            .send(Outgoing::Message(ServerMessage::Error {
                id: None,
                error: reply,
            }))
            .await;
        let _ = outbox.queue.send(Outgoing::Close(code, reason)).await;
        None
    };
    let first = match tokio::time::timeout(state.knobs.hello_timeout, incoming.next()).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return None,
        Err(_) => {
            return refuse(
                close_code::HANDSHAKE,
                ErrorReply::new(ErrorKind::Handshake, "no hello in time"),
            )
            .await;
        }
    };
    let text = match first {
        Incoming::Text(t) => t,
        Incoming::TooLarge => {
            return refuse(
                CLOSE_TOO_BIG,
                ErrorReply::new(ErrorKind::TooLarge, "message too large"),
            )
            .await;
        }
        Incoming::Binary => {
            return refuse(
                close_code::HANDSHAKE,
                ErrorReply::new(
                    ErrorKind::Malformed,
                    "binary frames are not part of the protocol",
                ),
            )
            .await;
        }
    };
    match ClientMessage::parse(&text) {
        Ok(ClientMessage::Hello {
            protocol,
            user,
            client_id,
        }) if protocol == PROTOCOL_VERSION => match vouched.confirm(user.as_deref()) {
            Ok(user) => {
                let welcome = ServerMessage::Welcome {
                    protocol,
                    user: user.clone(),
                    instance: state.instance.clone(),
                    tables: state.store.table_infos(),
                };
                outbox.queue.send(Outgoing::Message(welcome)).await.ok()?;
                Some((user, client_id))
            }
            Err(reply) => refuse(close_code::HANDSHAKE, reply).await,
        },
        Ok(ClientMessage::Hello { protocol, .. }) => {
            let reply = ErrorReply::new(
                ErrorKind::ProtocolVersion,
                format!(
                    "this server speaks protocol {PROTOCOL_VERSION}, the client asked for {protocol}"
                ),
            );
            refuse(close_code::PROTOCOL_VERSION, reply).await
        }
        Ok(_) => {
            refuse(
                close_code::HANDSHAKE,
                ErrorReply::new(ErrorKind::Handshake, "the first message must be a hello"),
            )
            .await
        }
        Err(reply) => refuse(close_code::HANDSHAKE, reply).await,
    }
}

/// Reads requests until the client leaves. Each request runs as its own task, at most
/// `max_in_flight_per_connection` at once; past that this loop stops reading, so the
/// client's socket fills up and a flooding client only slows itself. Commits are decided
/// and answered in the order they arrived (`store/turn.rs`); reads in any order.
async fn serve<I>(
    state: &Arc<AppState>,
    conn: ConnId,
    user: Option<String>,
    incoming: &mut I,
    outbox: &Outbox,
) where
    I: Stream<Item = Incoming> + Unpin,
{
    let in_flight = Arc::new(Semaphore::new(state.knobs.max_in_flight_per_connection));
    let user: Arc<Option<String>> = Arc::new(user);
    let mut commits = Sequence::new();
    while let Some(frame) = incoming.next().await {
        let text = match frame {
            Incoming::Text(t) => t,
            Incoming::Binary => {
                send_error(
                    outbox,
                    state,
                    None,
                    ErrorReply::new(
                        ErrorKind::Malformed,
                        "binary frames are not part of the protocol",
                    ),
                )
                .await;
                continue;
            }
            Incoming::TooLarge => {
                state.metrics.rejection(ErrorKind::TooLarge);
                let limit = state.knobs.max_message_bytes;
                let _ = outbox
                    .queue
                    .send(Outgoing::Close(
                        CLOSE_TOO_BIG,
                        format!("messages are limited to {limit} bytes"),
                    ))
                    .await;
                return;
            }
        };
        let msg = match ClientMessage::parse(&text) {
            Ok(m) => m,
            // Answered by name where the message names its request, so that a client
            // waiting on that commit or read hears of it.
            Err(reply) => {
                match Named::of(&text) {
                    Some(Named::Commit(txn)) => {
                        state.metrics.rejection(reply.code);
                        let rejected = ServerMessage::Rejected { txn, error: reply };
                        let _ = outbox.queue.send(Outgoing::Message(rejected)).await;
                    }
                    Some(Named::Read(id)) => send_error(outbox, state, Some(id), reply).await,
                    None => send_error(outbox, state, None, reply).await,
                }
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        match msg {
            ClientMessage::Hello { .. } => {
                send_error(
                    outbox,
                    state,
                    None,
                    ErrorReply::new(ErrorKind::Handshake, "hello was already said"),
                )
                .await;
            }
            ClientMessage::Unsubscribe { keys } => state.feed.unsubscribe(conn, &keys),
            ClientMessage::Read { id, keys } => {
                let (state, outbox, user) = (state.clone(), outbox.clone(), user.clone());
                tokio::spawn(async move {
                    read(&state, conn, &outbox, user.as_deref(), id, keys).await;
                    drop(permit);
                });
            }
            ClientMessage::Commit {
                txn,
                reads,
                writes,
                first,
                deps,
                follows,
                queries,
            } => {
                let (state, outbox, user) = (state.clone(), outbox.clone(), user.clone());
                let span = tracing::info_span!("commit", %txn);
                let turn = commits.take();
                // The commit runs to its end even if this connection drops meanwhile: its
                // outcome is then decided, and a re-send of the same txn id gets it.
                tokio::spawn(
                    async move {
                        let request = Request {
                            txn: &txn,
                            reads: &reads,
                            writes: &writes,
                            deps: &deps,
                            follows: follows.as_ref(),
                            first,
                            queries: &queries,
                        };
                        let reply = commit(&state, user.as_deref(), request, &turn).await;
                        turn.after(Stage::Answered).await;
                        let _ = outbox.queue.send(Outgoing::Message(reply)).await;
                        turn.reach(Stage::Answered).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
    }
}

async fn send_error(outbox: &Outbox, state: &AppState, id: Option<u32>, error: ErrorReply) {
    state.metrics.rejection(error.code);
    let _ = outbox
        .queue
        .send(Outgoing::Message(ServerMessage::Error { id, error }))
        .await;
}

async fn read(
    state: &AppState,
    conn: ConnId,
    outbox: &Outbox,
    user: Option<&str>,
    id: u32,
    keys: Vec<Key>,
) {
    let limit = state.knobs.max_keys_per_request;
    if keys.len() > limit {
        let reply = ErrorReply::new(
            ErrorKind::TooLarge,
            format!("a read may ask for at most {limit} keys"),
        );
        return send_error(outbox, state, Some(id), reply).await;
    }
    let queries = keys.iter().filter(|k| matches!(k, Key::Query(_))).count();
    if queries > mjolnir_core::query::MAX_PER_REQUEST {
        let reply = ErrorReply::new(
            ErrorKind::TooLarge,
            format!(
                "a read may ask for at most {} queries",
                mjolnir_core::query::MAX_PER_REQUEST
            ),
        );
        return send_error(outbox, state, Some(id), reply).await;
    }
    state.feed.subscribe(conn, &keys);
    match state.store.read(user, &keys).await {
        Ok(entries) => {
            for e in entries.iter().take(keys.len()) {
                if let (Key::Query(_), Some(result)) = (&e.key, &e.value) {
                    state.feed.remember_result(conn, &e.key, result);
                }
            }
            // The rows of the queries read, which follow the keys asked.
            if entries.len() > keys.len() {
                let rows: Vec<Key> = entries[keys.len()..]
                    .iter()
                    .map(|e| e.key.clone())
                    .collect();
                state.feed.subscribe(conn, &rows);
            }
            let _ = outbox
                .queue
                .send(Outgoing::Message(ServerMessage::Values { id, entries }))
                .await;
        }
        // The keys stay subscribed: some may be held from an earlier read, and the rest
        // cost a little memory until the connection ends.
        Err(e) => {
            send_error(outbox, state, Some(id), e.into_reply()).await;
        }
    }
}

async fn commit(
    state: &AppState,
    user: Option<&str>,
    request: Request<'_>,
    turn: &Turn,
) -> ServerMessage {
    let started = Instant::now();
    let outcome = state.store.commit(user, request, turn).await;
    let txn: TxnId = request.txn.clone();
    state
        .metrics
        .commit_latency
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(Outcome::Committed { version, .. }) => {
            state.metrics.commits.inc();
            tracing::debug!(%version, "committed");
            ServerMessage::Committed { txn, version }
        }
        Ok(Outcome::Duplicate { version }) => {
            state.metrics.duplicates.inc();
            tracing::info!(%version, "re-sent commit answered with its first outcome");
            ServerMessage::Committed { txn, version }
        }
        Ok(Outcome::Conflict { stale }) => {
            for e in &stale {
                state.metrics.conflict(e.key.table().unwrap_or("kv"));
            }
            tracing::debug!(stale = stale.len(), "conflict");
            ServerMessage::Conflict { txn, stale }
        }
        Ok(Outcome::Rejected(error)) => {
            state.metrics.rejection(error.code);
            tracing::debug!(code = ?error.code, message = %error.message, "rejected");
            ServerMessage::Rejected { txn, error }
        }
        Err(e) => {
            let error = e.into_reply();
            state.metrics.rejection(error.code);
            ServerMessage::Rejected { txn, error }
        }
    }
}

/// The most queued messages written before one flush.
const COALESCE: usize = 64;

/// Drains the outgoing queue into the transport. On `kill` (the queue is full and the
/// client must go) the close frame skips the queue.
///
/// Messages already queued behind the first (a commit's reply and its push, a burst of
/// pushes) are written before one flush, so they share a system call; at most
/// [`COALESCE`] of them, so a busy queue still flushes.
async fn write_loop<O>(mut rx: mpsc::Receiver<Outgoing>, kill: Arc<Notify>, mut sink: O)
where
    O: Sink<Outgoing> + Unpin,
{
    'outer: loop {
        let mut next = tokio::select! {
            biased;
            _ = kill.notified() => Outgoing::Close(close_code::SLOW_CONSUMER, "too slow to follow pushes".to_owned()),
            msg = rx.recv() => match msg {
                Some(m) => m,
                None => break,
            },
        };
        let mut fed = 0;
        loop {
            if matches!(next, Outgoing::Close(..)) {
                let _ = sink.send(next).await;
                break 'outer;
            }
            if sink.feed(next).await.is_err() {
                break 'outer;
            }
            fed += 1;
            if fed == COALESCE {
                break;
            }
            match rx.try_recv() {
                Ok(more) => next = more,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}
