//! The route table, and what wraps every route: API-key authentication of
//! `/api/v1`, the request counter `lifeline_api_requests_total{method,route,status}`,
//! a `request` span carrying the route, a body size limit, and JSON answers
//! for unknown routes and methods.
//!
//! The operational routes (`/healthz`, `/readyz` checking Redis, `/metrics`)
//! are served on the same listener, without authentication. `/readyz` does
//! not check RabbitMQ: only test alerts need it, and they answer 503 by
//! themselves while it is down.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use lifeline_shared::{
    http::{ReadyCheck, ops_router},
    metric,
};
use tracing::Instrument;

use crate::{AppState, auth, error::ApiError};

mod channels;
mod history;
mod monitors;
mod test_alert;

/// Largest request body accepted.
const BODY_LIMIT: usize = 64 * 1024;

/// Redis reads in flight at once when a route reads many records.
const CONCURRENT_READS: usize = 16;

/// The whole API: `/api/v1/...` behind the API key, plus the ops routes.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/channels",
            get(channels::list).post(channels::create),
        )
        .route(
            "/api/v1/channels/{id}",
            get(channels::get).delete(channels::delete),
        )
        .route(
            "/api/v1/channels/{id}/secret",
            post(channels::rotate_secret),
        )
        .route("/api/v1/channels/{id}/test", post(test_alert::send))
        .route(
            "/api/v1/monitors",
            get(monitors::list).post(monitors::create),
        )
        .route(
            "/api/v1/monitors/{id}",
            get(monitors::get)
                .patch(monitors::update)
                .delete(monitors::delete),
        )
        .route("/api/v1/monitors/{id}/pause", post(monitors::pause))
        .route("/api/v1/monitors/{id}/resume", post(monitors::resume))
        .route("/api/v1/monitors/{id}/token", post(monitors::rotate_token))
        .route("/api/v1/monitors/{id}/beats", get(history::beats))
        .route("/api/v1/monitors/{id}/events", get(history::events))
        .route("/api/v1/alerts/{alert_id}", get(history::alert))
        .route("/api/v1/outages", get(history::outages))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));

    let store = state.store.clone();
    let ready: ReadyCheck = Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { vec![("redis", store.ping().await.map_err(|e| e.to_string()))] })
    });

    api.merge(ops_router("api", ready))
        .fallback(|| async { ApiError::NotFound("not found") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Runs a request inside a `request` span, then counts and logs its answer.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!("request", http.method = %method, http.route = %route);
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    metrics::counter!(
        metric::API_REQUESTS,
        "method" => method,
        "route" => route,
        "status" => status.to_string(),
    )
    .increment(1);
    span.in_scope(|| {
        tracing::debug!(
            http.status = status,
            duration_ms = started.elapsed().as_millis() as u64,
            "request answered"
        );
    });
    response
}

/// `ms` as RFC 3339.
fn time(ms: i64) -> String {
    lifeline_shared::time::rfc3339(ms)
}
