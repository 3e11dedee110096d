//! Starting and stopping one instance: what `mjolnir serve`, `mjolnir dev` and the tests share.

use crate::app::router;
use crate::db;
use crate::feed::{self, Feed};
use crate::files::PublicFiles;
use crate::identity::Identity;
use crate::knobs::Knobs;
use crate::metrics::Metrics;
use crate::origin::AllowedOrigins;
use crate::state::AppState;
use crate::store::Store;
use anyhow::Context;
use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tower_http::set_header::SetResponseHeaderLayer;

/// How long a stopping server waits for its connections to close.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// What an instance needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: String,
    /// The app directory: static files, and `migrations/` applied at start.
    pub app_dir: Option<PathBuf>,
    /// The built browser client (`js/dist`: `mjolnir.js` and its wasm), served at
    /// [`crate::app::CLIENT_PATH`].
    pub client_dir: Option<PathBuf>,
    /// A `Content-Security-Policy` header for the app's pages, when set.
    pub content_security_policy: Option<String>,
    /// The schema of the app's tables.
    pub app_schema: String,
    pub listen: SocketAddr,
    pub identity: Identity,
    /// The pages that may open a WebSocket.
    pub origins: AllowedOrigins,
    pub knobs: Knobs,
    pub instance: String,
}

impl Config {
    pub fn new(database_url: impl Into<String>) -> Config {
        Config {
            database_url: database_url.into(),
            app_dir: None,
            client_dir: None,
            content_security_policy: None,
            app_schema: "public".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            identity: Identity::TrustClaim,
            origins: AllowedOrigins::Loopback(Vec::new()),
            knobs: Knobs::default(),
            instance: format!(
                "mjolnir-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        }
    }
}

/// A started instance. Dropping it stops it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    feed_task: JoinHandle<()>,
}

impl Running {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops accepting connections, asks the open ones to leave (close code 1001) and
    /// waits up to [`STOP_GRACE`] for them before cutting them off.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.feed_task.abort();
        (&mut self.task).await.unwrap_or(Ok(()))
    }

    /// Waits until the server ends (after a shutdown signal).
    pub async fn wait(mut self) -> std::io::Result<()> {
        (&mut self.task).await.unwrap_or(Ok(()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.feed_task.abort();
        self.task.abort();
    }
}

/// Migrates the database, binds the listener and starts serving. `shutdown` ends the
/// server gracefully when it resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let pool = db::connect(
        &config.database_url,
        config.knobs.pool_size,
        config.knobs.max_prepared_statements,
    )
    .await?;
    let migrations = config.app_dir.as_ref().map(|d| d.join("migrations"));
    db::migrate(&pool, migrations.as_deref(), &config.app_schema).await?;
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(
        Store::open(
            pool.clone(),
            &config.app_schema,
            config.knobs.clone(),
            &metrics,
        )
        .await?,
    );
    let feed = Arc::new(Feed::new(config.knobs.feed_reads));
    let commits = feed::listen(&pool).await?;
    let feed_task = tokio::spawn(feed::follow(
        commits,
        store.clone(),
        feed.clone(),
        metrics.clone(),
    ));
    let state = Arc::new(AppState {
        store,
        feed,
        metrics,
        knobs: config.knobs.clone(),
        identity: config.identity.clone(),
        origins: config.origins.clone(),
        instance: config.instance.clone(),
    });
    let static_files = match &config.app_dir {
        Some(dir) => Some(
            PublicFiles::new(dir)
                .with_context(|| format!("opening the app directory {}", dir.display()))?,
        ),
        None => None,
    };
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let app = router(state.clone(), static_files, config.client_dir.clone());
    let app = match &config.content_security_policy {
        Some(policy) => app.layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::CONTENT_SECURITY_POLICY,
            axum::http::HeaderValue::from_str(policy)
                .map_err(|e| anyhow::anyhow!("invalid Content-Security-Policy {policy:?}: {e}"))?,
        )),
        None => app,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let going_away = Arc::new(Notify::new());
    let signal = {
        let (state, going_away) = (state.clone(), going_away.clone());
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stopped => {}
            }
            // Ask every client to leave; graceful shutdown then waits for them, but not
            // for longer than STOP_GRACE.
            state.feed.close_all(1001, "server shutting down");
            going_away.notify_one();
        }
    };
    let task = tokio::spawn(async move {
        // No Nagle: a reply is one small frame the client waits for, and Nagle's algorithm
        // with the peer's delayed ACK held each one back ~40 ms (the benchmark's one-client
        // latency).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "could not set TCP_NODELAY");
            }
        });
        // The peer's address decides whether a proxy's user header is believed.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(signal);
        tokio::select! {
            done = serve => done,
            _ = async { going_away.notified().await; tokio::time::sleep(STOP_GRACE).await } => Ok(()),
        }
    });
    tracing::info!(%addr, instance = %config.instance, "serving");
    Ok(Running {
        addr,
        state,
        stop: Some(stop),
        task,
        feed_task,
    })
}
