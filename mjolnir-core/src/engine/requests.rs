//! Matching the server's replies to the requests waiting for them.
//!
//! Many requests may be in flight on one connection and the server answers them in any
//! order, so replies are matched by name, never by position: a `values` or an `error` by
//! its read id, a commit's verdict by its txn id. Requests that share a txn id (a commit
//! sent again while its first send may still be answered) are answered in the order they
//! were sent.
//!
//! The table also remembers each request's message, so that everything still unanswered
//! when a connection drops can be sent again on the next one ([`Requests::resend`]).
//! Generic over the waiter `W`: the browser runtime names a job there, the native client
//! a channel.

use crate::protocol::{Entry, ErrorReply, ServerMessage};
use crate::{ClientMessage, Key, TxnId, Version};

/// The server's verdict on one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Durable at this version.
    Committed(Version),
    /// Some reads were stale; nothing was applied. The stale keys' current entries.
    Conflict(Vec<Entry>),
    /// Refused for a reason retrying cannot fix; nothing was applied.
    Rejected(ErrorReply),
}

/// What one server message answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed<W> {
    /// The reply to a read: its entries, or why it was refused.
    Read(W, Result<Vec<Entry>, ErrorReply>),
    /// The verdict on a commit, with the txn id it named.
    Commit(W, TxnId, Verdict),
    /// A message that answers no waiting request: a push, a welcome, an `error` without a
    /// read id, or a late reply to a request nobody waits for any more.
    Other(ServerMessage),
}

/// The requests waiting for a reply, by name.
///
/// One list in send order, searched linearly: a page has a few requests in flight, a few
/// hundred at most, and two ordered maps with removal (one keyed by read id, one by txn
/// id) each add their own copy of the B-tree's code to the browser module (measured in
/// docs/client.md, "Shipped size").
#[derive(Debug)]
pub struct Requests<W> {
    /// In send order: the server decides a connection's commits in the order they arrive,
    /// and a pipelined commit counts on the ones sent before it, so [`Requests::resend`]
    /// keeps that order. Commits that share a txn id are answered in the order sent.
    waiting: Vec<Waiting<W>>,
    next_read: u32,
}

#[derive(Debug)]
enum Waiting<W> {
    Read { id: u32, keys: Vec<Key>, waiter: W },
    Commit { msg: ClientMessage, waiter: W },
}

impl<W> Waiting<W> {
    fn is_read(&self, read: u32) -> bool {
        matches!(self, Waiting::Read { id, .. } if *id == read)
    }

    fn is_commit(&self, txn: &TxnId) -> bool {
        matches!(self, Waiting::Commit { msg: ClientMessage::Commit { txn: t, .. }, .. } if t == txn)
    }

    fn waiter(self) -> W {
        match self {
            Waiting::Read { waiter, .. } | Waiting::Commit { waiter, .. } => waiter,
        }
    }
}

impl<W> Default for Requests<W> {
    fn default() -> Self {
        Requests {
            waiting: Vec::new(),
            next_read: 1,
        }
    }
}

impl<W> Requests<W> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a read of `keys` for `waiter` and returns the message to send. Read ids
    /// wrap around but skip 0 and any id still waiting.
    pub fn read(&mut self, keys: Vec<Key>, waiter: W) -> ClientMessage {
        let mut id = self.next_read;
        while id == 0 || self.waiting.iter().any(|w| w.is_read(id)) {
            id = id.wrapping_add(1);
        }
        self.next_read = id.wrapping_add(1);
        self.waiting.push(Waiting::Read {
            id,
            keys: keys.clone(),
            waiter,
        });
        ClientMessage::Read { id, keys }
    }

    /// Registers a commit message for `waiter`. Returns `None` (registering nothing) for a
    /// message that is not a commit.
    pub fn commit(&mut self, msg: ClientMessage, waiter: W) -> Option<ClientMessage> {
        if !matches!(msg, ClientMessage::Commit { .. }) {
            return None;
        }
        self.waiting.push(Waiting::Commit {
            msg: msg.clone(),
            waiter,
        });
        Some(msg)
    }

    /// Hands `msg` to the request it answers, or gives it back.
    pub fn deliver(&mut self, msg: ServerMessage) -> Routed<W> {
        match msg {
            ServerMessage::Values { id, entries } => match self.take(|w| w.is_read(id)) {
                Some(w) => Routed::Read(w, Ok(entries)),
                None => Routed::Other(ServerMessage::Values { id, entries }),
            },
            ServerMessage::Error {
                id: Some(id),
                error,
            } => match self.take(|w| w.is_read(id)) {
                Some(w) => Routed::Read(w, Err(error)),
                None => Routed::Other(ServerMessage::Error {
                    id: Some(id),
                    error,
                }),
            },
            ServerMessage::Committed { txn, version } => {
                self.verdict(txn, Verdict::Committed(version))
            }
            ServerMessage::Conflict { txn, stale } => self.verdict(txn, Verdict::Conflict(stale)),
            ServerMessage::Rejected { txn, error } => self.verdict(txn, Verdict::Rejected(error)),
            other @ (ServerMessage::Welcome { .. }
            | ServerMessage::Push { .. }
            | ServerMessage::Error { id: None, .. }) => Routed::Other(other),
        }
    }

    /// Removes the first request that `is` picks and returns its waiter.
    fn take(&mut self, is: impl Fn(&Waiting<W>) -> bool) -> Option<W> {
        let at = self.waiting.iter().position(is)?;
        Some(self.waiting.remove(at).waiter())
    }

    fn verdict(&mut self, txn: TxnId, verdict: Verdict) -> Routed<W> {
        match self.take(|w| w.is_commit(&txn)) {
            Some(w) => Routed::Commit(w, txn, verdict),
            None => Routed::Other(verdict.into_message(txn)),
        }
    }

    /// Every request still waiting, as it must be sent again on a new connection: reads
    /// first (harmless to repeat), then commits in the order they were first sent. They
    /// keep their txn ids so that the server answers one that already landed instead of
    /// applying it twice, and lose their `first` mark, which would let the server answer
    /// them from memory as conflicts.
    pub fn resend(&self) -> Vec<ClientMessage> {
        let reads = self.waiting.iter().filter_map(|w| match w {
            Waiting::Read { id, keys, .. } => Some(ClientMessage::Read {
                id: *id,
                keys: keys.clone(),
            }),
            Waiting::Commit { .. } => None,
        });
        let commits = self.waiting.iter().filter_map(|w| match w {
            Waiting::Commit { msg, .. } => Some(msg.clone().resent()),
            Waiting::Read { .. } => None,
        });
        reads.chain(commits).collect()
    }

    /// Forgets every waiting request and returns their waiters (reads first): what a
    /// client that will not reconnect fails.
    pub fn drain(&mut self) -> Vec<W> {
        let (reads, commits): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| matches!(w, Waiting::Read { .. }));
        reads
            .into_iter()
            .chain(commits)
            .map(Waiting::waiter)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

impl Verdict {
    /// The verdict as the server message that carries it.
    pub fn into_message(self, txn: TxnId) -> ServerMessage {
        match self {
            Verdict::Committed(version) => ServerMessage::Committed { txn, version },
            Verdict::Conflict(stale) => ServerMessage::Conflict { txn, stale },
            Verdict::Rejected(error) => ServerMessage::Rejected { txn, error },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn entry(key: &str, version: u64) -> Entry {
        Entry {
            key: Key::kv(key),
            version: Version(version),
            value: None,
        }
    }

    fn commit(txn: &str) -> ClientMessage {
        ClientMessage::commit(TxnId(txn.into()), Default::default(), Default::default())
    }

    #[test]
    fn replies_find_their_request_in_any_order() {
        let mut requests = Requests::new();
        let ClientMessage::Read { id: one, .. } = requests.read(vec![Key::kv("a")], "one") else {
            panic!()
        };
        let ClientMessage::Read { id: two, .. } = requests.read(vec![Key::kv("b")], "two") else {
            panic!()
        };
        requests.commit(commit("c:1"), "commit");
        assert_eq!(
            requests.deliver(ServerMessage::Committed {
                txn: TxnId("c:1".into()),
                version: Version(9)
            }),
            Routed::Commit(
                "commit",
                TxnId("c:1".into()),
                Verdict::Committed(Version(9))
            )
        );
        assert_eq!(
            requests.deliver(ServerMessage::Values {
                id: two,
                entries: vec![entry("b", 2)]
            }),
            Routed::Read("two", Ok(vec![entry("b", 2)]))
        );
        let refused = ErrorReply::new(ErrorKind::UnknownTable, "no");
        assert_eq!(
            requests.deliver(ServerMessage::Error {
                id: Some(one),
                error: refused.clone()
            }),
            Routed::Read("one", Err(refused))
        );
        assert!(requests.is_empty());
    }

    #[test]
    fn a_reply_nobody_waits_for_is_given_back() {
        let mut requests: Requests<()> = Requests::new();
        for stray in [
            ServerMessage::Values {
                id: 7,
                entries: vec![],
            },
            ServerMessage::Error {
                id: None,
                error: ErrorReply::new(ErrorKind::Malformed, "?"),
            },
            ServerMessage::Committed {
                txn: TxnId("x:1".into()),
                version: Version(1),
            },
        ] {
            assert_eq!(requests.deliver(stray.clone()), Routed::Other(stray));
        }
    }

    #[test]
    fn commits_sharing_a_txn_id_are_answered_in_order() {
        let mut requests = Requests::new();
        requests.commit(commit("c:1"), 1);
        requests.commit(commit("c:1").resent(), 2);
        let txn = TxnId("c:1".into());
        let conflict = requests.deliver(ServerMessage::Conflict {
            txn: txn.clone(),
            stale: vec![entry("a", 3)],
        });
        assert_eq!(
            conflict,
            Routed::Commit(1, txn.clone(), Verdict::Conflict(vec![entry("a", 3)]))
        );
        let committed = requests.deliver(ServerMessage::Committed {
            txn: txn.clone(),
            version: Version(4),
        });
        assert_eq!(
            committed,
            Routed::Commit(2, txn.clone(), Verdict::Committed(Version(4)))
        );
        assert!(matches!(
            requests.deliver(ServerMessage::Committed {
                txn,
                version: Version(4)
            }),
            Routed::Other(_)
        ));
    }

    #[test]
    fn what_waits_is_resent_with_its_names_in_send_order_without_first_marks() {
        let mut requests = Requests::new();
        let read = requests.read(vec![Key::kv("a")], 1);
        requests.commit(commit("c:9"), 2);
        requests.commit(commit("c:10"), 3);
        assert_eq!(
            requests.resend(),
            vec![read, commit("c:9").resent(), commit("c:10").resent()],
            "c:10 sorts before c:9 but was sent after it"
        );
        assert_eq!(
            requests.drain(),
            vec![1, 2, 3],
            "reads, then commits in send order"
        );
        assert!(requests.resend().is_empty());
    }

    #[test]
    fn read_ids_skip_zero_and_ids_still_waiting() {
        let mut requests = Requests::new();
        requests.next_read = u32::MAX;
        let ClientMessage::Read { id: last, .. } = requests.read(vec![], ()) else {
            panic!()
        };
        let ClientMessage::Read { id: wrapped, .. } = requests.read(vec![], ()) else {
            panic!()
        };
        assert_eq!((last, wrapped), (u32::MAX, 1));
        requests.next_read = u32::MAX;
        let ClientMessage::Read { id: skipped, .. } = requests.read(vec![], ()) else {
            panic!()
        };
        assert_eq!(skipped, 2, "MAX and 1 still wait");
    }
}
