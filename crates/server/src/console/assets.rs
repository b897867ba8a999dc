//! The console's stylesheets and scripts, compiled into the binary: nothing
//! is loaded from anywhere but this server. Third-party files are pinned in
//! `assets/vendor` with their licenses (see its README).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::error::PathParam;

/// Every asset: its name, media type and bytes.
const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/console.js"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/vendor/uPlot.min.css"),
    ),
];

pub async fn serve(PathParam(file): PathParam<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, media_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *media_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
