//! The web view at `/`: one page, its script and its style, embedded in
//! the binary (no CDN, no build step). The page references the assets
//! with a hash of their contents, so they are cached for long and a new
//! build's are fetched at once; the page itself is revalidated (ETag).

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

struct Asset {
    body: String,
    etag: String,
    content_type: &'static str,
    cache: &'static str,
}

struct Assets {
    index: Asset,
    script: Asset,
    style: Asset,
}

fn etag_of(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    format!("\"{}\"", hex::encode(&digest[..8]))
}

fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let version = etag_of(&format!("{SCRIPT}{STYLE}"));
        let index = INDEX.replace("{{VERSION}}", version.trim_matches('"'));
        let asset = |body: String, content_type, cache| Asset {
            etag: etag_of(&body),
            body,
            content_type,
            cache,
        };
        Assets {
            index: asset(index, "text/html; charset=utf-8", "no-cache"),
            script: asset(
                SCRIPT.to_owned(),
                "text/javascript; charset=utf-8",
                "public, max-age=31536000, immutable",
            ),
            style: asset(
                STYLE.to_owned(),
                "text/css; charset=utf-8",
                "public, max-age=31536000, immutable",
            ),
        }
    })
}

fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.clone().into_response()
    };
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(asset.cache));
    if let Ok(v) = HeaderValue::from_str(&asset.etag) {
        h.insert(ETAG, v);
    }
    response
}

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(&assets().index, &headers)
}

/// `GET /ui/{file}`: its script and style.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let a = assets();
    match file.as_str() {
        "app.js" => Ok(serve(&a.script, &headers)),
        "app.css" => Ok(serve(&a.style, &headers)),
        _ => Err(ApiError::NotFound(format!(
            "no such file of the web view: {:?}",
            file.chars().take(64).collect::<String>()
        ))),
    }
}
