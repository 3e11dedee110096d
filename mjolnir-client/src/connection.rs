//! [`Client`]: one WebSocket connection to a Mjölnir server, shared by many requests.

use crate::driver::Driver;
use crate::error::ClientError;
use crate::knobs::{
    DEFAULT_CACHE_CAPACITY, HANDSHAKE_TIMEOUT, MAX_MESSAGE_BYTES, OUTGOING_QUEUE, PUSH_BUFFER,
    UNSOLICITED_BUFFER,
};
use crate::routes::{Routes, Unsolicited};
use crate::socket::{self, Outgoing, Push, ReaderParts, Ws};
use futures_util::{SinkExt, StreamExt};
use mjolnir_core::engine::Engine;
use mjolnir_core::protocol::Entry;
use mjolnir_core::{
    ClientMessage, Key, PROTOCOL_VERSION, QueryRead, ReadSet, ServerMessage, TxnId, Version,
    WriteSet,
};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Mutex, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The server's answer to one commit: the core's verdict, under the name this client
/// has always used.
pub use mjolnir_core::engine::Verdict as CommitOutcome;

/// A connection to a Mjölnir server. Cloning it is cheap and shares the connection: every
/// clone may have requests in flight at once.
///
/// Two APIs share the connection. [`Client::run`] is the client engine's
/// ([`mjolnir_core::engine`], the browser runtime's too): transactions on a cache of what
/// the connection has read, kept current by pushes. The raw API ([`Client::read`],
/// [`Client::commit`], [`Client::send_raw`], [`Client::next_unsolicited`]) sends exactly
/// what it is asked to, for tests of the server. Their replies never mix (see
/// `routes.rs`), but the server keeps one subscription per key and connection: when the
/// engine evicts a key from its cache it unsubscribes it, which also ends the pushes of
/// that key that a raw read asked for.
///
/// The connection closes when [`Client::close`] is called, when the server closes it, or
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// How a [`Client`] is set up, for [`Client::connect_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Keys the engine's cache holds between transactions before it evicts the least
    /// recently used (and unsubscribes them). Keys that transactions in progress read are
    /// kept whatever this says, so 0 is a cache that keeps nothing between transactions:
    /// each [`Client::run`] reads what it needs from the server, and unsubscribes it when
    /// it is over.
    pub cache_capacity: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }
}

pub(crate) struct Inner {
    client_id: String,
    user: Option<String>,
    instance: String,
    next_txn: AtomicU64,
    /// Places in the writer's queue for the raw API (see `OUTGOING_QUEUE`).
    room: Arc<Semaphore>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    routes: Arc<Routes>,
    pub(crate) driver: Arc<Driver>,
    /// Weak, so that the reader owns the only sender and subscribers learn of the end.
    pushes: broadcast::WeakSender<Push>,
    unsolicited: Mutex<mpsc::Receiver<Unsolicited>>,
    finished: watch::Receiver<bool>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.inner.client_id)
            .field("user", &self.inner.user)
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

/// What the welcome told us.
struct Welcome {
    user: Option<String>,
    instance: String,
}

impl Client {
    /// Connects to a `ws://` url (`wss://` is not built in), says hello as `user` and waits
    /// for the welcome. With the default [`ClientOptions`].
    pub async fn connect(url: &str, user: Option<&str>) -> Result<Client, ClientError> {
        Self::connect_with(url, user, ClientOptions::default()).await
    }

    /// [`Client::connect`] with `options`.
    pub async fn connect_with(
        url: &str,
        user: Option<&str>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let client_id = uuid::Uuid::new_v4().to_string();
        let (ws, welcome) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(url, user, &client_id))
                .await
                .map_err(|_| ClientError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;

        let (sink, stream) = ws.split();
        let routes = Arc::new(Routes::default());
        let (outgoing, queue) = mpsc::unbounded_channel();
        // The engine's txn ids get a prefix of their own (`…:e:n`, the raw API's are
        // `…:n`): the server would take one of each under the same id for a re-send.
        let engine = Engine::new(
            format!("{client_id}:e"),
            options.cache_capacity,
            rand::random(),
        );
        let driver = Driver::new(engine, routes.clone(), outgoing.clone());
        let (pushes, _) = broadcast::channel(PUSH_BUFFER);
        let (unsolicited_tx, unsolicited) = mpsc::channel(UNSOLICITED_BUFFER);
        let (stopped_tx, writer_stopped) = oneshot::channel();
        let (finished_tx, finished) = watch::channel(false);

        let inner = Inner {
            client_id,
            user: welcome.user,
            instance: welcome.instance,
            next_txn: AtomicU64::new(1),
            room: Arc::new(Semaphore::new(OUTGOING_QUEUE)),
            outgoing,
            routes: routes.clone(),
            driver: driver.clone(),
            pushes: pushes.downgrade(),
            unsolicited: Mutex::new(unsolicited),
            finished: finished.clone(),
        };
        tokio::spawn(socket::write_loop(sink, queue, finished, stopped_tx));
        tokio::spawn(socket::read_loop(
            stream,
            ReaderParts {
                routes,
                driver: Arc::downgrade(&driver),
                pushes,
                unsolicited: unsolicited_tx,
                writer_stopped,
                finished: finished_tx,
            },
        ));
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// The identity the server confirmed in its welcome.
    pub fn user(&self) -> Option<&str> {
        self.inner.user.as_deref()
    }

    /// The server instance this connection landed on.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The random id this client said hello with; txn ids start with it.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// Reads `keys` at their latest committed versions (and subscribes this connection to
    /// their changes). The entries come in the order of `keys`.
    pub async fn read(&self, keys: Vec<Key>) -> Result<Vec<Entry>, ClientError> {
        let (msg, reply) = self.inner.routes.expect_values(keys)?;
        self.send(msg.to_json()).await?;
        match reply.await {
            Ok(Ok(entries)) => Ok(entries),
            Ok(Err(error)) => Err(ClientError::Server(error)),
            Err(_) => Err(ClientError::Disconnected),
        }
    }

    /// Sends one commit and waits for its outcome. No retry: see [`Client::run`] for that.
    ///
    /// `txn` may have been sent before, on this connection or another: the server checks
    /// it against the ids that committed. For a transaction never sent, [`Client::commit_new`]
    /// lets the server answer a conflict it already knows of without the database.
    pub async fn commit(
        &self,
        txn: TxnId,
        reads: ReadSet,
        writes: WriteSet,
    ) -> Result<CommitOutcome, ClientError> {
        self.send_commit(txn, reads, writes, false, Vec::new())
            .await
    }

    /// Like [`Client::commit_new`], with query reads: each query with the result it gave
    /// (the value of its entry from [`Client::read`]).
    pub async fn commit_queries(
        &self,
        reads: ReadSet,
        writes: WriteSet,
        queries: Vec<QueryRead>,
    ) -> Result<(TxnId, CommitOutcome), ClientError> {
        let txn = self.next_txn_id();
        let outcome = self
            .send_commit(txn.clone(), reads, writes, true, queries)
            .await?;
        Ok((txn, outcome))
    }

    /// Commits under a fresh txn id, its first send. The id is returned with the outcome:
    /// if the connection drops first, re-send with [`Client::commit`] under that id.
    pub async fn commit_new(
        &self,
        reads: ReadSet,
        writes: WriteSet,
    ) -> Result<(TxnId, CommitOutcome), ClientError> {
        let txn = self.next_txn_id();
        let outcome = self
            .send_commit(txn.clone(), reads, writes, true, Vec::new())
            .await?;
        Ok((txn, outcome))
    }

    async fn send_commit(
        &self,
        txn: TxnId,
        reads: ReadSet,
        writes: WriteSet,
        first: bool,
        queries: Vec<QueryRead>,
    ) -> Result<CommitOutcome, ClientError> {
        let msg = ClientMessage::Commit {
            txn,
            reads,
            writes,
            first,
            deps: Vec::new(),
            follows: None,
            queries,
        };
        let (msg, outcome) = self.inner.routes.expect_outcome(msg)?;
        self.send(msg.to_json()).await?;
        outcome.await.map_err(|_| ClientError::Disconnected)
    }

    /// A txn id no other transaction uses: this client's id (random) and a counter.
    pub fn next_txn_id(&self) -> TxnId {
        let n = self.inner.next_txn.fetch_add(1, Ordering::Relaxed);
        TxnId(format!("{}:{n}", self.inner.client_id))
    }

    /// A new subscription to the server's pushes, from now on, in arrival (commit) order.
    ///
    /// Each subscriber buffers a bounded number of pushes; one that falls further behind
    /// gets `RecvError::Lagged(n)` and loses the `n` oldest. After the connection ends,
    /// `recv` returns the buffered pushes and then `RecvError::Closed`.
    pub fn pushes(&self) -> broadcast::Receiver<(Version, Vec<Entry>)> {
        match self.inner.pushes.upgrade() {
            Some(sender) => sender.subscribe(),
            // The connection has ended: a receiver that says so at once.
            None => broadcast::channel(1).1,
        }
    }

    /// Sends `text` as one frame, as is, after every frame queued before it. For testing
    /// how the server treats bad input; its answer comes through
    /// [`Client::next_unsolicited`] unless it happens to match a pending request.
    ///
    /// `Ok` means the frame was queued: a write that fails afterwards shows as the end of
    /// the connection.
    pub async fn send_raw(&self, text: String) -> Result<(), ClientError> {
        // Checked here too, because the writer may outlive the reader by a moment.
        if self.inner.routes.has_ended() {
            return Err(ClientError::Disconnected);
        }
        self.send(text).await
    }

    /// The next frame that answered no pending request, in arrival order; `None` once the
    /// connection has ended and everything, the close included, has been returned.
    ///
    /// Frames beyond a bounded buffer are dropped if nobody calls this.
    pub async fn next_unsolicited(&self) -> Option<Unsolicited> {
        let mut frames = self.inner.unsolicited.lock().await;
        match frames.recv().await {
            Some(frame) => Some(frame),
            None => self.inner.routes.take_close_report(),
        }
    }

    /// Closes the connection now, without waiting for the server to agree: frames queued
    /// before are still written, then a close frame, then the socket is dropped. Requests
    /// still waiting fail with [`ClientError::Disconnected`]; so does every later one.
    /// Returns once the connection is gone.
    pub async fn close(&self) {
        let _ = self.inner.outgoing.send(Outgoing::Close);
        let mut finished = self.inner.finished.clone();
        let _ = finished.wait_for(|done| *done).await;
    }

    async fn send(&self, text: String) -> Result<(), ClientError> {
        let room = self
            .inner
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Disconnected)?;
        self.inner
            .outgoing
            .send(Outgoing::Text(text, Some(room)))
            .map_err(|_| ClientError::Disconnected)
    }
}

async fn handshake(
    url: &str,
    user: Option<&str>,
    client_id: &str,
) -> Result<(Ws, Welcome), ClientError> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    // No Nagle: the writer batches bursts itself, and a lone request must not wait.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| ClientError::Connect(Box::new(e)))?;
    let hello = ClientMessage::Hello {
        protocol: PROTOCOL_VERSION,
        client_id: client_id.to_owned(),
        user: user.map(str::to_owned),
    };
    ws.send(Message::text(hello.to_json()))
        .await
        .map_err(|e| ClientError::Connect(Box::new(e)))?;
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                return Err(ClientError::Protocol(
                    "binary frame instead of a welcome".to_owned(),
                ));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(ClientError::Closed {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame
                        .map(|f| f.reason.as_str().to_owned())
                        .unwrap_or_default(),
                });
            }
            Some(Err(err)) => return Err(ClientError::Connect(Box::new(err))),
            None => {
                return Err(ClientError::Closed {
                    code: None,
                    reason: "the connection ended before the welcome".to_owned(),
                });
            }
        };
        return match ServerMessage::parse(text.as_str()) {
            Ok(ServerMessage::Welcome {
                protocol,
                user,
                instance,
                ..
            }) if protocol == PROTOCOL_VERSION => Ok((ws, Welcome { user, instance })),
            Ok(ServerMessage::Welcome { protocol, .. }) => Err(ClientError::Protocol(format!(
                "welcomed with protocol {protocol}, but this client speaks {PROTOCOL_VERSION}"
            ))),
            Ok(ServerMessage::Error { error, .. }) => Err(ClientError::Server(error)),
            Ok(other) => Err(ClientError::Protocol(format!(
                "expected a welcome, got {other:?}"
            ))),
            Err(err) => Err(ClientError::Protocol(format!(
                "expected a welcome, got an unparsable frame: {err}"
            ))),
        };
    }
}
