//! Reading what a request carries, so every refusal is JSON and names what
//! is wrong (invariant 7).
//!
//! Bodies are parsed in two steps: bytes to a JSON object ([`JsonObject`];
//! malformed JSON or a body that is not an object is a 400), then field by
//! field ([`Fields`]; an unknown, missing, mistyped or out-of-range field is
//! a 422 naming it). Path ids and the `limit` query parameter have their own
//! extractors so axum's plain-text rejections never reach a client.

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{StatusCode, request::Parts},
};
use lifeline_shared::model::CONFIRM_MAX;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Longest monitor or channel name, in characters.
pub(crate) const NAME_MAX: usize = 200;
/// Longest timeout or interval: 31 days, in seconds.
pub(crate) const SECONDS_MAX: u64 = 31 * 24 * 3600;
/// Default number of history entries returned.
pub(crate) const LIMIT_DEFAULT: usize = 50;
/// Most history entries returned at once.
pub(crate) const LIMIT_MAX: usize = 1000;

/// A request body that is a JSON object.
#[derive(Debug)]
pub(crate) struct JsonObject(pub(crate) Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::bad_request(format!("cannot read the request body: {}", r.body_text()))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "the request body is empty; expected a JSON object",
            ));
        }
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::bad_request(
                "the request body must be a JSON object",
            )),
            Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
        }
    }
}

/// The fields of a body, checked against the names a route accepts.
#[derive(Debug)]
pub(crate) struct Fields(Map<String, Value>);

impl Fields {
    /// Refuses the first field not in `allowed` (like serde's
    /// `deny_unknown_fields`, but naming the field in the JSON answer).
    pub(crate) fn new(body: Map<String, Value>, allowed: &[&str]) -> Result<Self, ApiError> {
        if let Some(unknown) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
            let expected: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
            return Err(ApiError::invalid(
                clip(unknown),
                format!(
                    "unknown field {}; expected one of {}",
                    quoted(unknown),
                    expected.join(", ")
                ),
            ));
        }
        Ok(Self(body))
    }

    /// A field, `None` when absent (`null` is returned as is).
    pub(crate) fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name)
    }

    /// A field, `None` when absent or `null`.
    pub(crate) fn optional(&mut self, name: &str) -> Option<Value> {
        self.take(name).filter(|v| !v.is_null())
    }

    /// A field that must be present and not `null`.
    pub(crate) fn required(&mut self, name: &str) -> Result<Value, ApiError> {
        self.optional(name)
            .ok_or_else(|| ApiError::invalid(name, format!("{name} is required")))
    }
}

/// At most 64 characters of user input, for echoing back in an error.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// User input quoted (and clipped) for an error message.
pub(crate) fn quoted(s: &str) -> String {
    let c = clip(s);
    if c.len() < s.len() {
        format!("{c:?}…")
    } else {
        format!("{c:?}")
    }
}

/// A name: a string of 1 to 200 characters once trimmed, without control characters.
pub(crate) fn name(field: &str, v: Value) -> Result<String, ApiError> {
    let Value::String(s) = v else {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be a string"),
        ));
    };
    let s = s.trim();
    let len = s.chars().count();
    if len == 0 || len > NAME_MAX {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be 1 to {NAME_MAX} characters long"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(s.to_owned())
}

/// A duration in whole seconds, from 1 s to 31 days.
pub(crate) fn seconds(field: &str, v: Value) -> Result<u32, ApiError> {
    let Value::Number(n) = v else {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be a number of seconds"),
        ));
    };
    match n.as_u64() {
        Some(s @ 1..=SECONDS_MAX) => Ok(u32::try_from(s).expect("31 days fit in u32")),
        _ => Err(ApiError::invalid(
            field,
            format!("{field} must be a whole number of seconds from 1 to {SECONDS_MAX} (31 days)"),
        )),
    }
}

/// `remind_every`: a duration in seconds (1 s to 31 days), or `null` for
/// no reminders. Reminders more often than every minute are noisy, but
/// allowed (tests use them).
pub(crate) fn remind_every(field: &str, v: Value) -> Result<Option<u32>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(_) => seconds(field, v).map(Some),
        _ => Err(ApiError::invalid(
            field,
            format!("{field} must be a number of seconds, or null for no reminders"),
        )),
    }
}

/// `confirm`: a whole number from 1 to [`CONFIRM_MAX`].
pub(crate) fn confirm(field: &str, v: Value) -> Result<u32, ApiError> {
    match v.as_u64() {
        Some(n @ 1..) if n <= u64::from(CONFIRM_MAX) => {
            Ok(u32::try_from(n).expect("CONFIRM_MAX fits in u32"))
        }
        _ => Err(ApiError::invalid(
            field,
            format!("{field} must be a whole number from 1 to {CONFIRM_MAX}"),
        )),
    }
}

/// A list of ids (strings), duplicates removed, order kept.
pub(crate) fn id_list(field: &str, v: Value, max: usize) -> Result<Vec<String>, ApiError> {
    let Value::Array(items) = v else {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be an array of ids"),
        ));
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(id) = item else {
            return Err(ApiError::invalid(
                field,
                format!("{field} must be an array of ids (strings)"),
            ));
        };
        if !out.contains(&id) {
            out.push(id);
        }
    }
    if out.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("{field} may name at most {max} ids"),
        ));
    }
    Ok(out)
}

/// Whether `id` could be a monitor or channel id (checked before any Redis
/// lookup so junk never becomes part of a key).
pub(crate) fn plausible_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The single path parameter of a route (`{id}` or `{alert_id}`).
#[derive(Debug)]
pub(crate) struct PathId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Self(id))
            .map_err(|r| ApiError::bad_request(format!("invalid path: {}", r.body_text())))
    }
}

/// The `limit` query parameter of history routes: default 50, 1 to 1000.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit(pub(crate) usize);

impl<S: Send + Sync> FromRequestParts<S> for Limit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(params) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|r| {
                ApiError::bad_request(format!("malformed query string: {}", r.body_text()))
            })?;
        match params.get("limit") {
            None => Ok(Self(LIMIT_DEFAULT)),
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(n @ 1..=LIMIT_MAX) => Ok(Self(n)),
                _ => Err(ApiError::bad_param(
                    "limit",
                    format!("limit must be a whole number from 1 to {LIMIT_MAX}"),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::Invalid { field, .. } => field,
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn seconds_range() {
        assert_eq!(seconds("timeout", json!(1)).unwrap(), 1);
        assert_eq!(seconds("timeout", json!(2_678_400)).unwrap(), 2_678_400);
        for bad in [
            json!(0),
            json!(2_678_401),
            json!(-5),
            json!(1.5),
            json!("60"),
            json!(null),
        ] {
            assert_eq!(field_of(seconds("timeout", bad).unwrap_err()), "timeout");
        }
    }

    #[test]
    fn remind_every_range_and_null() {
        assert_eq!(remind_every("remind_every", json!(null)).unwrap(), None);
        assert_eq!(remind_every("remind_every", json!(1)).unwrap(), Some(1));
        assert_eq!(
            remind_every("remind_every", json!(2_678_400)).unwrap(),
            Some(2_678_400)
        );
        for bad in [
            json!(0),
            json!(2_678_401),
            json!(-60),
            json!(60.5),
            json!("60"),
            json!(true),
            json!([60]),
        ] {
            let e = remind_every("remind_every", bad.clone()).unwrap_err();
            assert_eq!(field_of(e), "remind_every", "{bad}");
        }
    }

    #[test]
    fn confirm_range() {
        assert_eq!(confirm("confirm", json!(1)).unwrap(), 1);
        assert_eq!(confirm("confirm", json!(10)).unwrap(), 10);
        for bad in [
            json!(0),
            json!(11),
            json!(-1),
            json!(2.5),
            json!("3"),
            json!(null),
            json!(u64::MAX),
        ] {
            let e = confirm("confirm", bad.clone()).unwrap_err();
            assert_eq!(field_of(e), "confirm", "{bad}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(name("name", json!("  backup ")).unwrap(), "backup");
        assert_eq!(
            name("name", json!("é".repeat(200)))
                .unwrap()
                .chars()
                .count(),
            200
        );
        for bad in [
            json!(""),
            json!("   "),
            json!("x".repeat(201)),
            json!(3),
            json!("a\nb"),
        ] {
            assert_eq!(field_of(name("name", bad).unwrap_err()), "name");
        }
    }

    #[test]
    fn id_lists_dedupe_in_order() {
        let ids = id_list("channels", json!(["b", "a", "b"]), 10).unwrap();
        assert_eq!(ids, ["b", "a"]);
        for bad in [json!("a"), json!([1]), json!(["a", "b", "c"])] {
            assert_eq!(
                field_of(id_list("channels", bad, 2).unwrap_err()),
                "channels"
            );
        }
    }

    #[test]
    fn unknown_fields_are_named() {
        let body = json!({"name": "x", "colour": "red"});
        let Value::Object(map) = body else {
            unreachable!()
        };
        let e = Fields::new(map, &["name"]).unwrap_err();
        assert!(e.to_string().contains("\"colour\""), "{e}");
        assert_eq!(field_of(e), "colour");
    }

    #[test]
    fn plausible_ids() {
        assert!(plausible_id("abc123def456ghi7"));
        for bad in ["", "a b", "a:b", "{s1}", &"x".repeat(65)] {
            assert!(!plausible_id(bad), "{bad}");
        }
    }
}
