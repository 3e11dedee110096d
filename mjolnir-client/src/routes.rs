//! Matching the server's replies to the requests waiting for them.
//!
//! The matching itself is the core's ([`mjolnir_core::engine::Requests`], shared with the
//! browser runtime): replies are matched by read id or txn id, never by position. This
//! adds what a native client needs around it: a lock, since many tasks send on one
//! connection, and the end of the connection, which this client does not survive.
//!
//! **One table for the whole connection.** Two kinds of request share the connection: the
//! raw API's (`Client::read`, `commit`, `commit_new`) and the engine's (the reads and
//! commits of `Client::run`). The engine numbers its reads from its own table, so its ids
//! would collide with the raw ones. Instead of splitting the id space, every request of
//! either kind is registered here, in one [`Requests`], and sent under the id this table
//! gives it ([`Routes::for_engine`]): an engine read remembers the id the engine gave it,
//! and its reply is handed back to the engine under that id. So neither kind can take the
//! other's reply, and a frame that answers neither is unsolicited, for
//! [`crate::Client::next_unsolicited`]. Txn ids cannot collide either: the engine's carry
//! a prefix of their own (see `Client::connect_with`).
//!
//! Invariant: once the connection has ended, no waiter is left and none can be added, so no
//! request waits forever. Both hold because ending and registering take the same lock.

use crate::connection::CommitOutcome;
use crate::error::ClientError;
use mjolnir_core::engine::{Requests, Routed};
use mjolnir_core::protocol::{Entry, ErrorReply, ServerMessage};
use mjolnir_core::{ClientMessage, Key};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::oneshot;

pub(crate) type ReadReply = Result<Vec<Entry>, ErrorReply>;

/// A frame that answers no pending request, in arrival order.
#[derive(Clone, Debug, PartialEq)]
pub enum Unsolicited {
    /// A server message that is not a reply to a request of this client: an `error` without
    /// a read id, a reply to a request sent with `send_raw`, a second welcome.
    Message(ServerMessage),
    /// A frame that is not a server message at all: a binary frame, or text that does not
    /// parse. Reported rather than dropped so that tests see a misbehaving server.
    Invalid(String),
    /// The connection ended; always the last item. `code` and `reason` come from the
    /// server's close frame; `code` is `None` when there was none (a broken connection, or
    /// a close by this client).
    Closed { code: Option<u16>, reason: String },
}

/// Why the connection ended, kept until `next_unsolicited` reports it.
#[derive(Debug)]
struct Ended {
    code: Option<u16>,
    reason: String,
    reported: bool,
}

/// Who waits for a request: a task of the raw API, through a channel, or the engine.
#[derive(Debug)]
pub(crate) enum Waiter {
    Read(oneshot::Sender<ReadReply>),
    Commit(oneshot::Sender<CommitOutcome>),
    /// A read of the engine's, under the id the engine gave it.
    EngineRead(u32),
    EngineCommit,
}

/// Where a server message goes.
#[derive(Debug, PartialEq)]
pub(crate) enum Delivered {
    /// It answered a request of the raw API, whose task has it now.
    Answered,
    /// It answers a request of the engine's: the message as the engine named the request.
    ForEngine(ServerMessage),
    /// It answers nothing that waits.
    Unsolicited(ServerMessage),
}

#[derive(Debug, Default)]
struct Pending {
    requests: Requests<Waiter>,
    ended: Option<Ended>,
}

/// The table of waiting requests, shared by the client handles and the reader task.
///
/// A request whose caller gave up (its future was dropped) keeps its entry until the reply
/// arrives, so that the reply is not mistaken for an unsolicited one.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    pending: Mutex<Pending>,
}

impl Routes {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // No code panics while holding the lock, so a poisoned table is still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a read of `keys` before it is sent, so its reply cannot arrive
    /// unexpected; returns the message to send.
    pub(crate) fn expect_values(
        &self,
        keys: Vec<Key>,
    ) -> Result<(ClientMessage, oneshot::Receiver<ReadReply>), ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.lock();
        if pending.ended.is_some() {
            return Err(ClientError::Disconnected);
        }
        Ok((pending.requests.read(keys, Waiter::Read(tx)), rx))
    }

    /// Registers a commit message before it is sent.
    pub(crate) fn expect_outcome(
        &self,
        msg: ClientMessage,
    ) -> Result<(ClientMessage, oneshot::Receiver<CommitOutcome>), ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.lock();
        if pending.ended.is_some() {
            return Err(ClientError::Disconnected);
        }
        let msg = pending
            .requests
            .commit(msg, Waiter::Commit(tx))
            .ok_or_else(|| ClientError::Protocol("only a commit has an outcome".to_owned()))?;
        Ok((msg, rx))
    }

    /// Registers a message of the engine's before it is sent and returns it as it must be
    /// sent: a read under an id of this table (see the module's docs), a commit as is.
    /// `None` once the connection has ended.
    pub(crate) fn for_engine(&self, msg: ClientMessage) -> Option<ClientMessage> {
        let mut pending = self.lock();
        if pending.ended.is_some() {
            return None;
        }
        match msg {
            ClientMessage::Read { id, keys } => {
                Some(pending.requests.read(keys, Waiter::EngineRead(id)))
            }
            commit @ ClientMessage::Commit { .. } => {
                pending.requests.commit(commit, Waiter::EngineCommit)
            }
            other => Some(other),
        }
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.lock().ended.is_some()
    }

    /// Hands `msg` to the raw request it answers, or says where it goes.
    pub(crate) fn deliver(&self, msg: ServerMessage) -> Delivered {
        let routed = self.lock().requests.deliver(msg);
        match routed {
            Routed::Read(Waiter::Read(tx), reply) => {
                let _ = tx.send(reply);
                Delivered::Answered
            }
            Routed::Commit(Waiter::Commit(tx), _, verdict) => {
                let _ = tx.send(verdict);
                Delivered::Answered
            }
            Routed::Read(Waiter::EngineRead(id), Ok(entries)) => {
                Delivered::ForEngine(ServerMessage::Values { id, entries })
            }
            Routed::Read(Waiter::EngineRead(id), Err(error)) => {
                Delivered::ForEngine(ServerMessage::Error {
                    id: Some(id),
                    error,
                })
            }
            Routed::Commit(Waiter::EngineCommit, txn, verdict) => {
                Delivered::ForEngine(verdict.into_message(txn))
            }
            // A read id or txn id is registered only with its own kind of waiter.
            Routed::Read(..) | Routed::Commit(..) => Delivered::Answered,
            Routed::Other(msg) => Delivered::Unsolicited(msg),
        }
    }

    /// Records why the connection ended and fails every waiting request: dropping a
    /// waiter's sender is what tells it [`ClientError::Disconnected`].
    pub(crate) fn end(&self, code: Option<u16>, reason: String) {
        let waiters = {
            let mut pending = self.lock();
            if pending.ended.is_none() {
                pending.ended = Some(Ended {
                    code,
                    reason,
                    reported: false,
                });
            }
            pending.requests.drain()
        };
        // Dropped outside the lock: waking the waiters need not wait for it.
        drop(waiters);
    }

    /// The close, the first time it is asked for after the connection ended.
    pub(crate) fn take_close_report(&self) -> Option<Unsolicited> {
        let mut pending = self.lock();
        let ended = pending.ended.as_mut().filter(|e| !e.reported)?;
        ended.reported = true;
        Some(Unsolicited::Closed {
            code: ended.code,
            reason: ended.reason.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mjolnir_core::{TxnId, Version};

    fn commit(txn: &str) -> ClientMessage {
        ClientMessage::commit(TxnId(txn.into()), Default::default(), Default::default())
    }

    // How replies are matched is tested in mjolnir-core's engine::requests.
    #[test]
    fn replies_reach_their_tasks() {
        let routes = Routes::default();
        let (read, mut values) = routes.expect_values(vec![Key::kv("a")]).unwrap();
        let (_, mut outcome) = routes.expect_outcome(commit("c:1")).unwrap();
        let ClientMessage::Read { id, .. } = read else {
            panic!("a read")
        };
        assert_eq!(
            routes.deliver(ServerMessage::Committed {
                txn: TxnId("c:1".into()),
                version: Version(9)
            }),
            Delivered::Answered
        );
        assert_eq!(
            routes.deliver(ServerMessage::Values {
                id,
                entries: vec![]
            }),
            Delivered::Answered
        );
        assert_eq!(
            outcome.try_recv().unwrap(),
            CommitOutcome::Committed(Version(9))
        );
        assert_eq!(values.try_recv().unwrap(), Ok(vec![]));
        let stray = ServerMessage::Values {
            id,
            entries: vec![],
        };
        assert_eq!(routes.deliver(stray.clone()), Delivered::Unsolicited(stray));
    }

    #[test]
    fn the_engines_requests_get_ids_no_raw_request_has_and_their_replies_back() {
        let routes = Routes::default();
        let (raw, mut values) = routes.expect_values(vec![Key::kv("raw")]).unwrap();
        let ClientMessage::Read { id: raw_id, .. } = raw else {
            panic!("a read")
        };
        // The engine numbers its reads from 1 too.
        let engine_read = ClientMessage::Read {
            id: raw_id,
            keys: vec![Key::kv("e")],
        };
        let Some(ClientMessage::Read { id: sent, keys }) = routes.for_engine(engine_read) else {
            panic!("a read")
        };
        assert_ne!(sent, raw_id);
        assert_eq!(keys, vec![Key::kv("e")]);
        assert_eq!(
            routes.deliver(ServerMessage::Values {
                id: sent,
                entries: vec![]
            }),
            Delivered::ForEngine(ServerMessage::Values {
                id: raw_id,
                entries: vec![]
            }),
            "handed back under the engine's id"
        );
        assert!(values.try_recv().is_err(), "the raw read still waits");
        assert!(routes.for_engine(commit("c:e:1")).is_some());
        let verdict = ServerMessage::Committed {
            txn: TxnId("c:e:1".into()),
            version: Version(2),
        };
        assert_eq!(
            routes.deliver(verdict.clone()),
            Delivered::ForEngine(verdict.clone())
        );
        assert_eq!(
            routes.deliver(verdict.clone()),
            Delivered::Unsolicited(verdict)
        );
        let unsubscribe = ClientMessage::Unsubscribe { keys: vec![] };
        assert_eq!(
            routes.for_engine(unsubscribe.clone()),
            Some(unsubscribe.clone())
        );
        routes.end(None, String::new());
        assert_eq!(routes.for_engine(unsubscribe), None);
    }

    #[test]
    fn the_end_fails_waiters_refuses_new_ones_and_is_reported_once() {
        let routes = Routes::default();
        let (_, mut read) = routes.expect_values(vec![]).unwrap();
        let (_, mut commit_outcome) = routes.expect_outcome(commit("c:1")).unwrap();
        assert_eq!(routes.take_close_report(), None);
        routes.end(Some(1009), "too big".into());
        assert!(matches!(
            read.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(
            commit_outcome.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(
            routes.expect_values(vec![]),
            Err(ClientError::Disconnected)
        ));
        assert!(matches!(
            routes.expect_outcome(commit("c:2")),
            Err(ClientError::Disconnected)
        ));
        assert_eq!(
            routes.take_close_report(),
            Some(Unsolicited::Closed {
                code: Some(1009),
                reason: "too big".into()
            })
        );
        assert_eq!(routes.take_close_report(), None);
    }
}
