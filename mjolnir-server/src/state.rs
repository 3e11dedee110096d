//! What one instance shares between its connections: the HTTP face (`app.rs`) builds it,
//! each connection's session (`session.rs`) uses it, and neither needs the other for it.

use crate::feed::Feed;
use crate::identity::Identity;
use crate::knobs::Knobs;
use crate::metrics::Metrics;
use crate::origin::AllowedOrigins;
use crate::store::Store;
use std::sync::Arc;

/// Everything one instance shares between its connections. None of it is needed by
/// another instance: the store is PostgreSQL, the feed holds only this instance's
/// subscribers.
#[derive(Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub feed: Arc<Feed>,
    pub metrics: Arc<Metrics>,
    pub knobs: Knobs,
    pub identity: Identity,
    pub origins: AllowedOrigins,
    /// A name for this instance, sent in every welcome (tests use it to tell instances apart).
    pub instance: String,
}
