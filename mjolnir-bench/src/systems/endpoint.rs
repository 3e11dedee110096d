//! The baseline a team would write by hand: an axum route that does the transfer in one
//! PostgreSQL transaction with row locks (no OCC, no versions, no pushes), driven over HTTP
//! keep-alive with one connection per simulated client.

use crate::driver::{Outcome, Worker};
use crate::workload::{AMOUNT, enough};
use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::net::SocketAddr;

/// The body of `POST /transfer`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TransferRequest {
    pub from: i32,
    pub to: i32,
}

/// The answer: whether the money moved.
#[derive(Debug, Serialize, Deserialize)]
pub struct TransferReply {
    pub moved: bool,
}

/// Why a request failed; every cause is the server's, so all are a 500.
#[derive(Debug, thiserror::Error)]
enum EndpointError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("account {0} does not exist")]
    NoAccount(i32),
}

impl IntoResponse for EndpointError {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

/// Serves `POST /transfer` and `GET /healthz` on `addr` until Ctrl-C or SIGTERM.
pub async fn serve(database_url: &str, addr: SocketAddr, pool_size: u32) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .connect(database_url)
        .await
        .with_context(|| format!("connecting to {database_url}"))?;
    let app = Router::new()
        .route("/transfer", post(transfer))
        .route("/healthz", get(async || "ok"))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    // The bound address, not the asked one: with port 0 the kernel picked the port.
    println!("endpoint listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal())
        .await?;
    Ok(())
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Locks both rows in key order (so concurrent transfers cannot deadlock), then moves the
/// money if there is enough: the same statements as the pgbench script.
async fn transfer(
    State(pool): State<PgPool>,
    Json(req): Json<TransferRequest>,
) -> Result<Json<TransferReply>, EndpointError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(i32, i32)> = sqlx::query_as(
        "SELECT id, balance FROM accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
    )
    .bind(req.from)
    .bind(req.to)
    .fetch_all(&mut *tx)
    .await?;
    let from_balance = rows
        .iter()
        .find(|(id, _)| *id == req.from)
        .map(|(_, b)| *b)
        .ok_or(EndpointError::NoAccount(req.from))?;
    if !rows.iter().any(|(id, _)| *id == req.to) {
        return Err(EndpointError::NoAccount(req.to));
    }
    let moved = enough(i64::from(from_balance));
    if moved {
        for (id, delta) in [(req.from, -AMOUNT), (req.to, AMOUNT)] {
            sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
                .bind(id)
                .bind(delta)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(Json(TransferReply { moved }))
}

/// One simulated client: its own HTTP client, so its own keep-alive connection.
#[derive(Debug)]
pub struct EndpointWorker {
    http: reqwest::Client,
    url: String,
}

impl EndpointWorker {
    /// `clients` workers posting to `base` (`http://host:port`).
    pub fn all(base: &str, clients: u32) -> anyhow::Result<Vec<EndpointWorker>> {
        (0..clients)
            .map(|_| {
                Ok(EndpointWorker {
                    http: reqwest::Client::builder()
                        .pool_max_idle_per_host(1)
                        .tcp_nodelay(true)
                        .no_proxy()
                        .build()?,
                    url: format!("{}/transfer", base.trim_end_matches('/')),
                })
            })
            .collect()
    }
}

impl Worker for EndpointWorker {
    async fn transfer(&mut self, from: i32, to: i32) -> anyhow::Result<Outcome> {
        let body = serde_json::to_vec(&TransferRequest { from, to })?;
        let reply = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = reply.status();
        let bytes = reply.bytes().await?;
        anyhow::ensure!(
            status.is_success(),
            "the endpoint answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let _: TransferReply = serde_json::from_slice(&bytes)?;
        Ok(Outcome::Done { attempts: 1 })
    }
}
