//! The two tasks that own the socket: they only frame, and leave the meaning of messages to
//! [`crate::routes`] and the engine ([`crate::driver`]).
//!
//! Reading and writing run in separate tasks so that neither ever waits for the other: a
//! client that stopped reading while it wrote a long burst could deadlock with a server
//! that stopped reading while it wrote replies.
//!
//! Shutdown: whichever task stops first makes the other stop (the writer tells the reader
//! why through a oneshot; the reader's `finished` flag stops the writer), and the socket
//! closes once both halves are dropped. Only the reader ends the routes, so every request
//! fails with `Disconnected` however the connection ended.
//!
//! A failed write does not end the reader at once: it usually means the server is closing
//! the connection, and its close frame (with the code that says why) may still be unread.

use crate::driver::Driver;
use crate::knobs::{CLOSE_GRACE, WRITE_BURST};
use crate::routes::{Delivered, Routes, Unsolicited};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use mjolnir_core::Version;
use mjolnir_core::protocol::{Entry, ServerMessage};
use std::sync::{Arc, Weak};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type Push = (Version, Vec<Entry>);

/// What the client handles ask the writer to do, in order.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame, with the place in the queue a raw-API caller waited for (see
    /// `OUTGOING_QUEUE`), freed once the frame is written. The engine's frames take none:
    /// they are queued under its lock, where nothing may wait.
    Text(String, Option<OwnedSemaphorePermit>),
    /// Write everything queued before, then a close frame, then drop the socket without
    /// waiting for the server's answer.
    Close,
}

impl Outgoing {
    pub(crate) fn text(text: String) -> Outgoing {
        Outgoing::Text(text, None)
    }
}

/// Why the writer stopped.
#[derive(Debug)]
pub(crate) enum WriterStop {
    /// On purpose (a local close, or every handle dropped): the connection ends now.
    Done(String),
    /// A write failed: the connection is ending, but what the server sent before may still
    /// be readable.
    Failed(String),
}

/// The reader's ends of the channels it feeds.
pub(crate) struct ReaderParts {
    pub(crate) routes: Arc<Routes>,
    /// Weak, so that the client handles alone keep the connection open.
    pub(crate) driver: Weak<Driver>,
    pub(crate) pushes: broadcast::Sender<Push>,
    pub(crate) unsolicited: mpsc::Sender<Unsolicited>,
    pub(crate) writer_stopped: oneshot::Receiver<WriterStop>,
    pub(crate) finished: watch::Sender<bool>,
}

pub(crate) async fn read_loop(mut stream: SplitStream<Ws>, parts: ReaderParts) {
    let ReaderParts {
        routes,
        driver,
        pushes,
        unsolicited,
        mut writer_stopped,
        finished,
    } = parts;
    let unsolicit = |item: Unsolicited| {
        if unsolicited.try_send(item).is_err() {
            tracing::warn!("unsolicited frame dropped: nobody reads them");
        }
    };
    // Set once a write failed: then the reader goes on only until `grace` runs out.
    let mut write_failure: Option<String> = None;
    let grace = tokio::time::sleep(CLOSE_GRACE);
    tokio::pin!(grace);
    let (code, reason) = loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            why = &mut writer_stopped, if write_failure.is_none() => match why {
                Ok(WriterStop::Failed(why)) => {
                    grace.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                    write_failure = Some(why);
                    continue;
                }
                Ok(WriterStop::Done(why)) => break (None, why),
                Err(_) => break (None, "the writer task ended".to_owned()),
            },
            () = &mut grace, if write_failure.is_some() => {
                break (None, write_failure.take().unwrap_or_default());
            }
        };
        match frame {
            Some(Ok(Message::Text(text))) => match ServerMessage::parse(text.as_str()) {
                Ok(ServerMessage::Push { version, changes }) => {
                    // No subscriber is fine: pushes are only for those who asked.
                    if pushes.receiver_count() > 0 {
                        let _ = pushes.send((version, changes.clone()));
                    }
                    // The engine's cache follows every push of a key it holds.
                    if let Some(driver) = driver.upgrade() {
                        driver.deliver(ServerMessage::Push { version, changes });
                    }
                }
                Ok(msg) => match routes.deliver(msg) {
                    Delivered::Answered => {}
                    Delivered::ForEngine(msg) => {
                        if let Some(driver) = driver.upgrade() {
                            driver.deliver(msg);
                        }
                    }
                    Delivered::Unsolicited(msg) => unsolicit(Unsolicited::Message(msg)),
                },
                Err(err) => {
                    tracing::warn!(%err, "unparsable frame from the server");
                    let start: String = text.as_str().chars().take(200).collect();
                    unsolicit(Unsolicited::Invalid(format!(
                        "unparsable frame starting {start:?}: {err}"
                    )));
                }
            },
            Some(Ok(Message::Binary(bytes))) => {
                unsolicit(Unsolicited::Invalid(format!(
                    "binary frame of {} bytes",
                    bytes.len()
                )));
            }
            Some(Ok(Message::Close(frame))) => {
                break match frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                    None => (None, String::new()),
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Err(err)) => break (None, format!("read failed: {err}")),
            None => break (None, "the connection ended".to_owned()),
        }
    };
    tracing::debug!(?code, %reason, "connection ended");
    // The close is recorded before the unsolicited channel closes, so `next_unsolicited`
    // finds it as soon as it sees the channel's end.
    routes.end(code, reason);
    if let Some(driver) = driver.upgrade() {
        driver.end();
    }
    drop(unsolicited);
    finished.send_replace(true);
}

pub(crate) async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    mut reader_finished: watch::Receiver<bool>,
    stopped: oneshot::Sender<WriterStop>,
) {
    let why = loop {
        let next = tokio::select! {
            next = queue.recv() => next,
            () = reader_ended(&mut reader_finished) => {
                // The reader knows why the connection ended. If the server closed it, this
                // sends the close reply tungstenite has queued, so the server sees a clean
                // close.
                let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
                return;
            }
        };
        let close = match next {
            None => break WriterStop::Done("every client handle was dropped".to_owned()),
            Some(Outgoing::Close) => true,
            Some(Outgoing::Text(text, _room)) => {
                match write_burst(&mut sink, text, &mut queue).await {
                    Ok(close) => close,
                    Err(err) => break WriterStop::Failed(format!("write failed: {err}")),
                }
            }
        };
        if close {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
            break WriterStop::Done("closed by the client".to_owned());
        }
    };
    drop(sink);
    let _ = stopped.send(why);
}

async fn reader_ended(finished: &mut watch::Receiver<bool>) {
    // An error means the reader is gone without saying so: ended all the same.
    let _ = finished.wait_for(|done| *done).await;
}

/// Writes `first` and whatever else is already queued (up to [`WRITE_BURST`] frames), then
/// flushes once. Returns whether a close was dequeued, which ends the burst.
async fn write_burst(
    sink: &mut SplitSink<Ws, Message>,
    first: String,
    queue: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> Result<bool, tungstenite::Error> {
    sink.feed(Message::text(first)).await?;
    let mut close = false;
    for _ in 1..WRITE_BURST {
        match queue.try_recv() {
            Ok(Outgoing::Text(text, _room)) => sink.feed(Message::text(text)).await?,
            Ok(Outgoing::Close) => {
                close = true;
                break;
            }
            // Empty, or every handle dropped: the next `recv` tells which.
            Err(_) => break,
        }
    }
    sink.flush().await?;
    Ok(close)
}
