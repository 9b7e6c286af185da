//! The bare HTTP ceiling: a trivial axum handler answering the push route
//! with ingest's success body, and nothing else — no parsing, no token, no
//! broker. `lifeline-bench serve-trivial --addr …` runs it as its own
//! process (so it does not share the load generator's runtime), and the
//! `ceilings` mode drives it with the same client and requests as ingest.

use std::net::SocketAddr;

use axum::{Json, Router, routing::get};
use serde_json::{Value, json};

async fn ok() -> Json<Value> {
    Json(json!({"ok": true}))
}

/// The router: `GET|POST /api/push/{token}` and `/healthz`.
fn router() -> Router {
    Router::new()
        .route("/api/push/{token}", get(ok).post(ok))
        .route("/healthz", get(ok))
}

/// Serves until the process is killed.
pub(crate) async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router()).await?;
    Ok(())
}
