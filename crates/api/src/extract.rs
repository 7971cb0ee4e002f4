//! Extractors whose every rejection is a JSON `ApiError`: the bearer token (header, or
//! the `/compat/{token}/` path prefix for the Go client, which cannot set headers), and
//! JSON bodies read regardless of `Content-Type` (the Go client sends none).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use lineup_core::{Lineup, Principal};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Who is calling, once the token checked out.
pub struct Auth(pub Principal);

fn token_from_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/compat/")?;
    let (token, _) = rest.split_once('/')?;
    Some(token)
}

impl FromRequestParts<Lineup> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, lineup: &Lineup) -> Result<Self, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = match header {
            Some(h) => h
                .strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authorization must be \"Bearer <token>\"")
                })?
                .to_owned(),
            None => {
                let path = parts
                    .extensions
                    .get::<OriginalUri>()
                    .map(|u| u.0.path().to_owned())
                    .unwrap_or_else(|| parts.uri.path().to_owned());
                token_from_path(&path).map(str::to_owned).ok_or_else(|| {
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing Authorization: Bearer <token>")
                })?
            }
        };
        Ok(Auth(lineup.authenticate(&token).await?))
    }
}

/// A JSON body of type `T`. An empty body reads as `{}`, so requests whose fields are
/// all optional may omit it.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request body over {} bytes", crate::MAX_BODY),
                )
            } else {
                ApiError::bad_request("invalid_body", rej.body_text())
            }
        })?;
        let slice: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) { b"{}" } else { &bytes };
        let value: serde_json::Value = serde_json::from_slice(slice)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))?;
        // Checked before the fields: serde would read `[2]` as a struct's fields in order.
        if !value.is_object() {
            return Err(ApiError::bad_request("invalid_json", "the body must be a JSON object"));
        }
        T::deserialize(value)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
    }
}

/// Path parameters of type `T`, with a JSON error when they don't parse (a segment that
/// is not valid UTF-8 once percent-decoded, say).
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

/// Query parameters of type `T`, with a JSON error when they don't parse.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::token_from_path;

    #[test]
    fn compat_token_from_path() {
        assert_eq!(token_from_path("/compat/abc/CreatePool"), Some("abc"));
        assert_eq!(token_from_path("/compat/abc"), None);
        assert_eq!(token_from_path("/CreatePool"), None);
    }
}
