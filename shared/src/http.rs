//! HTTP pieces every service shares: the operational routes (`/healthz`,
//! `/readyz`, `/metrics`) and serving with graceful shutdown (the shutdown
//! signal is in [`crate::runtime`]).

use std::{future::Future, pin::Pin, sync::Arc};

use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Result of checking one dependency.
pub type Check = (&'static str, Result<(), String>);

/// Checks each dependency of a service for `/readyz`.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<Check>> + Send>> + Send + Sync>;

/// `/healthz` (process up), `/readyz` (dependencies reachable), `/metrics`
/// (the catalogue of [`crate::metric`], with `service`'s build info).
pub fn ops_router<S: Clone + Send + Sync + 'static>(
    service: &'static str,
    ready: ReadyCheck,
) -> Router<S> {
    let handle = crate::metric::install(service);
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"ok": true})) }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    let checks = ready().await;
                    let ok = checks.iter().all(|(_, r)| r.is_ok());
                    let detail: serde_json::Map<String, serde_json::Value> = checks
                        .into_iter()
                        .map(|(name, r)| {
                            (
                                name.to_owned(),
                                json!(r.err().unwrap_or_else(|| "ok".into())),
                            )
                        })
                        .collect();
                    let status = if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, Json(json!({"ok": ok, "checks": detail})))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render().into_response() }
            }),
        )
}

/// Serves `router` on `listener` until `shutdown` is cancelled, letting
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
