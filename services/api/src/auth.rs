//! API-key authentication of the `/api/v1` routes.
//!
//! Every management request carries `Authorization: Bearer <LIFELINE_API_KEY>`;
//! anything else is a 401. The presented key is compared with the configured
//! one in constant time (both are hashed first, so not even the length
//! leaks), and neither is ever logged.

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::Response,
};
use lifeline_shared::token;

use crate::{AppState, error::ApiError};

/// The configured API key, kept only as its SHA-256.
pub(crate) struct ApiKey {
    hash: String,
}

impl ApiKey {
    /// Wraps the configured key.
    pub(crate) fn new(key: &str) -> Self {
        Self {
            hash: token::hash(key),
        }
    }

    /// Whether `presented` is the key, in time independent of where they differ.
    pub(crate) fn matches(&self, presented: &str) -> bool {
        let presented = token::hash(presented);
        let diff = presented
            .bytes()
            .zip(self.hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0 && presented.len() == self.hash.len()
    }
}

/// The bearer credential of a request, if it has one.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
        .filter(|c| !c.is_empty())
}

/// Middleware: lets the request through only with the right API key.
pub(crate) async fn require_api_key(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match bearer(&req) {
        None => {
            tracing::debug!("request without API key refused");
            Err(ApiError::Unauthorized(
                "missing API key: send Authorization: Bearer <key>",
            ))
        }
        Some(key) if !state.api_key.matches(key) => {
            tracing::warn!("request with a wrong API key refused");
            Err(ApiError::Unauthorized("invalid API key"))
        }
        Some(_) => Ok(next.run(req).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_key() {
        let k = ApiKey::new("0123456789abcdef");
        assert!(k.matches("0123456789abcdef"));
        assert!(!k.matches("0123456789abcdeF"));
        assert!(!k.matches("0123456789abcdef0"));
        assert!(!k.matches(""));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let req = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(bearer(&req("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&req("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&req("Basic abc")), None);
        assert_eq!(bearer(&req("Bearer ")), None);
    }
}
