//! The status page of `lineup dev`: `/ui` (and `/` redirecting there), three files
//! embedded in the binary (no CDN: the page must work with no internet). The page
//! asks for the admin token and calls the API like any client (`ui/app.js`).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use lineup_core::Lineup;

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// Only this origin's scripts, styles and connections; no framing, no referrer (the
/// page's URLs carry no secret, and this keeps it so).
const SECURITY: [(&str, &str); 4] = [
    ("content-security-policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

pub fn routes() -> Router<Lineup> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (k, v) in SECURITY {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    r
}
