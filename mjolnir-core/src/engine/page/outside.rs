//! Reads outside any transaction: what templates and plain reads show, which is the cache
//! with the page's in-flight writes on top, loading what it lacks once.

use super::{Engine, Waiter};
use crate::Key;
use crate::engine::action::Action;
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
        if !self.loading.contains(key) && self.refusal(key).is_none() {
            self.loading.push(key.clone());
            self.cache.pin([key]);
            let msg = self
                .requests
                .read(vec![key.clone()], Waiter::Load(key.clone()));
            self.actions.push_back(Action::Send(msg));
        }
        None
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
