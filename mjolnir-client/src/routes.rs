//! Matching the server's replies to the requests waiting for them.
//!
//! Many requests may be in flight on one connection and the server answers them in any
//! order, so replies are matched by name, never by position: a `values` or an `error` by its
//! read id, a commit outcome by its txn id. Requests that share a txn id (a re-sent commit)
//! are answered in the order they were sent.
//!
//! Invariant: once the connection has ended, no waiter is left and none can be added, so no
//! request waits forever. Both hold because ending and registering take the same lock.

use crate::connection::CommitOutcome;
use crate::error::ClientError;
use mjolnir_core::TxnId;
use mjolnir_core::protocol::{Entry, ErrorReply, ServerMessage};
use std::collections::{HashMap, VecDeque};
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

#[derive(Debug, Default)]
struct Pending {
    reads: HashMap<u32, oneshot::Sender<ReadReply>>,
    commits: HashMap<TxnId, VecDeque<oneshot::Sender<CommitOutcome>>>,
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

    /// Registers a read before it is sent, so its reply cannot arrive unexpected.
    pub(crate) fn expect_values(
        &self,
        id: u32,
    ) -> Result<oneshot::Receiver<ReadReply>, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.lock();
        if pending.ended.is_some() {
            return Err(ClientError::Disconnected);
        }
        pending.reads.insert(id, tx);
        Ok(rx)
    }

    /// Registers a commit before it is sent.
    pub(crate) fn expect_outcome(
        &self,
        txn: TxnId,
    ) -> Result<oneshot::Receiver<CommitOutcome>, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.lock();
        if pending.ended.is_some() {
            return Err(ClientError::Disconnected);
        }
        pending.commits.entry(txn).or_default().push_back(tx);
        Ok(rx)
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.lock().ended.is_some()
    }

    /// Hands `msg` to the request it answers, or gives it back when it answers none.
    pub(crate) fn deliver(&self, msg: ServerMessage) -> Option<ServerMessage> {
        match msg {
            ServerMessage::Values { id, entries } => match self.take_read(id) {
                Some(waiter) => {
                    let _ = waiter.send(Ok(entries));
                    None
                }
                None => Some(ServerMessage::Values { id, entries }),
            },
            ServerMessage::Error {
                id: Some(id),
                error,
            } => match self.take_read(id) {
                Some(waiter) => {
                    let _ = waiter.send(Err(error));
                    None
                }
                None => Some(ServerMessage::Error {
                    id: Some(id),
                    error,
                }),
            },
            ServerMessage::Committed { txn, version } => match self.take_commit(&txn) {
                Some(waiter) => {
                    let _ = waiter.send(CommitOutcome::Committed(version));
                    None
                }
                None => Some(ServerMessage::Committed { txn, version }),
            },
            ServerMessage::Conflict { txn, stale } => match self.take_commit(&txn) {
                Some(waiter) => {
                    let _ = waiter.send(CommitOutcome::Conflict(stale));
                    None
                }
                None => Some(ServerMessage::Conflict { txn, stale }),
            },
            ServerMessage::Rejected { txn, error } => match self.take_commit(&txn) {
                Some(waiter) => {
                    let _ = waiter.send(CommitOutcome::Rejected(error));
                    None
                }
                None => Some(ServerMessage::Rejected { txn, error }),
            },
            other @ (ServerMessage::Welcome { .. }
            | ServerMessage::Push { .. }
            | ServerMessage::Error { id: None, .. }) => Some(other),
        }
    }

    fn take_read(&self, id: u32) -> Option<oneshot::Sender<ReadReply>> {
        self.lock().reads.remove(&id)
    }

    fn take_commit(&self, txn: &TxnId) -> Option<oneshot::Sender<CommitOutcome>> {
        let mut pending = self.lock();
        let queue = pending.commits.get_mut(txn)?;
        let waiter = queue.pop_front();
        if queue.is_empty() {
            pending.commits.remove(txn);
        }
        waiter
    }

    /// Records why the connection ended and fails every waiting request: dropping a
    /// waiter's sender is what tells it [`ClientError::Disconnected`].
    pub(crate) fn end(&self, code: Option<u16>, reason: String) {
        let (reads, commits) = {
            let mut pending = self.lock();
            if pending.ended.is_none() {
                pending.ended = Some(Ended {
                    code,
                    reason,
                    reported: false,
                });
            }
            (
                std::mem::take(&mut pending.reads),
                std::mem::take(&mut pending.commits),
            )
        };
        // Dropped outside the lock: waking the waiters need not wait for it.
        drop((reads, commits));
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
    use mjolnir_core::protocol::ErrorReply;
    use mjolnir_core::{ErrorKind, Key, Version};

    fn entry(key: &str, version: u64) -> Entry {
        Entry {
            key: Key::kv(key),
            version: Version(version),
            value: None,
        }
    }

    #[test]
    fn replies_find_their_request_in_any_order() {
        let routes = Routes::default();
        let mut one = routes.expect_values(1).unwrap();
        let mut two = routes.expect_values(2).unwrap();
        let mut commit = routes.expect_outcome(TxnId("c:1".into())).unwrap();

        assert_eq!(
            routes.deliver(ServerMessage::Committed {
                txn: TxnId("c:1".into()),
                version: Version(9)
            }),
            None
        );
        assert_eq!(
            routes.deliver(ServerMessage::Values {
                id: 2,
                entries: vec![entry("b", 2)]
            }),
            None
        );
        let refused = ErrorReply::new(ErrorKind::UnknownTable, "no");
        assert_eq!(
            routes.deliver(ServerMessage::Error {
                id: Some(1),
                error: refused.clone()
            }),
            None
        );
        assert_eq!(
            commit.try_recv().unwrap(),
            CommitOutcome::Committed(Version(9))
        );
        assert_eq!(two.try_recv().unwrap(), Ok(vec![entry("b", 2)]));
        assert_eq!(one.try_recv().unwrap(), Err(refused));
    }

    #[test]
    fn a_reply_nobody_waits_for_is_given_back() {
        let routes = Routes::default();
        let stray = ServerMessage::Values {
            id: 7,
            entries: vec![],
        };
        assert_eq!(routes.deliver(stray.clone()), Some(stray));
        let anonymous = ServerMessage::Error {
            id: None,
            error: ErrorReply::new(ErrorKind::Malformed, "?"),
        };
        assert_eq!(routes.deliver(anonymous.clone()), Some(anonymous));
        let late = ServerMessage::Committed {
            txn: TxnId("x:1".into()),
            version: Version(1),
        };
        assert_eq!(routes.deliver(late.clone()), Some(late));
    }

    #[test]
    fn commits_sharing_a_txn_id_are_answered_in_order() {
        let routes = Routes::default();
        let txn = TxnId("c:1".into());
        let mut first = routes.expect_outcome(txn.clone()).unwrap();
        let mut second = routes.expect_outcome(txn.clone()).unwrap();
        routes.deliver(ServerMessage::Conflict {
            txn: txn.clone(),
            stale: vec![entry("a", 3)],
        });
        routes.deliver(ServerMessage::Committed {
            txn: txn.clone(),
            version: Version(4),
        });
        assert_eq!(
            first.try_recv().unwrap(),
            CommitOutcome::Conflict(vec![entry("a", 3)])
        );
        assert_eq!(
            second.try_recv().unwrap(),
            CommitOutcome::Committed(Version(4))
        );
        // Both answered: a third reply is unsolicited.
        assert!(
            routes
                .deliver(ServerMessage::Committed {
                    txn,
                    version: Version(4)
                })
                .is_some()
        );
    }

    #[test]
    fn the_end_fails_waiters_refuses_new_ones_and_is_reported_once() {
        let routes = Routes::default();
        let mut read = routes.expect_values(1).unwrap();
        let mut commit = routes.expect_outcome(TxnId("c:1".into())).unwrap();
        assert_eq!(routes.take_close_report(), None);
        routes.end(Some(1009), "too big".into());
        assert!(matches!(
            read.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(
            commit.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(
            routes.expect_values(2),
            Err(ClientError::Disconnected)
        ));
        assert!(matches!(
            routes.expect_outcome(TxnId("c:2".into())),
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
