//! Reads outside any transaction: what templates and plain reads show, which is the cache
//! with the page's in-flight writes on top, loading what it lacks once.

use super::{Engine, Waiter};
use crate::attempt::QueryView;
use crate::engine::action::Action;
use crate::{Attempt, Key, Query};
use serde_json::Value;

impl Engine {
    /// Reads `key` outside any transaction: what the cache holds (`Some(None)`: absent),
    /// or `None` when it holds nothing, after asking the server for it once, so that a
    /// later read (a template's next render) finds it.
    pub fn peek(&mut self, key: &Key) -> Option<Option<Value>> {
        if let Some(pending) = self.speculation.get(key) {
            return Some(pending.value.clone());
        }
        if let Some(cached) = self.cache.get(key) {
            return Some(cached.value.clone());
        }
        self.load(key);
        None
    }

    /// Reads a query outside any transaction, as templates show it: the cached result with
    /// the page's in-flight writes applied ([`Attempt::query_view`]; rows they wrote are
    /// marked pending). `None` while the result or any of its rows is not cached, after
    /// asking the server once for what is missing (reading a query subscribes to it, and
    /// its reply brings the rows too).
    pub fn peek_query(&mut self, query: &Query) -> Option<QueryView> {
        // An attempt nobody commits: the snapshot and the speculation are O(1) to take.
        let mut attempt = Attempt::speculating(self.cache.snapshot(), self.speculation.clone());
        let view = attempt.query_view(query);
        if view.is_none() {
            for key in attempt.missed_keys() {
                self.load(&key);
            }
        }
        view
    }

    /// Asks the server for `key` unless it is being loaded already or was refused.
    fn load(&mut self, key: &Key) {
        if !self.loading.contains(key) && self.refusal(key).is_none() {
            self.loading.push(key.clone());
            self.cache.pin([key]);
            let msg = self
                .requests
                .read(vec![key.clone()], Waiter::Load(key.clone()));
            self.actions.push_back(Action::Send(msg));
        }
    }

    /// Why the server refused to read `key` outside a transaction, if it did.
    pub fn refusal(&self, key: &Key) -> Option<&crate::protocol::ErrorReply> {
        self.refused.iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    /// Whether what the page shows at `key` is an in-flight transaction's write, not yet
    /// confirmed: for `data-mjolnir-pending`.
    pub fn is_pending(&self, key: &Key) -> bool {
        self.speculation.get(key).is_some()
    }
}
