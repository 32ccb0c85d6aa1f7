//! The browser page: `/` and `/assets/*`, compiled into the binary so that `dgx-music serve` needs no
//! files besides its data directory and works with no internet.
//!
//! Assets are not content-hashed, so every response carries a strong `ETag` (the file's SHA-256) and
//! `Cache-Control: no-cache`: browsers revalidate on each load and get a bodiless `304` while the binary is
//! unchanged, and never run stale JavaScript against a newer API after an upgrade.

use axum::{
    extract::Path,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use rust_embed::RustEmbed;

use crate::error::ApiError;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Assets;

/// Everything the page loads comes from this origin: audio is streamed from the API, waveforms are drawn
/// on canvas, and styles are set through the CSSOM, so no inline code or third-party origin is needed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Routes for the page, generic over the API's state so the server can `merge` it into its own router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/assets/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // Lookups go to the embedded table, never the file system, so `..` in `path` can only miss.
    serve(&format!("assets/{path}"), &headers)
}

fn serve(name: &str, request_headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(name) else {
        let shown: String = name.chars().take(80).collect();
        return ApiError::NotFound(format!("no asset named {shown:?} in this build; the page starts at /"))
            .into_response();
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()));
    let etag = HeaderValue::from_str(&etag).expect("a quoted hex string is a valid header value");
    let common = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
    ];
    if matches_etag(request_headers, &etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let content_type = HeaderValue::from_static(content_type(name));
    (StatusCode::OK, common, [(header::CONTENT_TYPE, content_type)], file.data.into_owned()).into_response()
}

/// `If-None-Match` holds `*` or a comma-separated list of (possibly weak) tags.
fn matches_etag(request_headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(Ok(wanted)) = request_headers.get(header::IF_NONE_MATCH).map(|value| value.to_str()) else {
        return false;
    };
    let ours = etag.to_str().unwrap_or_default();
    wanted.split(',').map(|tag| tag.trim().trim_start_matches("W/")).any(|tag| tag == "*" || tag == ours)
}

/// The page ships only these kinds of files; a test fails if an asset of any other kind is added.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(uri: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(uri);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router::<()>().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    async fn body_text(response: Response) -> String {
        String::from_utf8(to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn root_serves_the_page_with_its_modules() {
        let response = get("/", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
        let html = body_text(response).await;
        assert!(html.contains(r#"<script type="module" src="/assets/app.js">"#));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "the page must not load anything from another origin"
        );
    }

    #[tokio::test]
    async fn every_referenced_asset_is_embedded_with_a_known_type() {
        let names: Vec<String> = Assets::iter().map(|name| name.into_owned()).collect();
        assert!(names.iter().any(|name| name == "assets/app.js"));
        for name in names {
            assert_ne!(
                content_type(&name),
                "application/octet-stream",
                "{name} has no content type; add its extension to content_type()"
            );
            if let Some(path) = name.strip_prefix("assets/") {
                let response = get(&format!("/assets/{path}"), None).await;
                assert_eq!(response.status(), StatusCode::OK, "{name}");
            }
        }
    }

    #[tokio::test]
    async fn javascript_modules_get_a_javascript_type() {
        let response = get("/assets/app.js", None).await;
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(response.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[tokio::test]
    async fn a_matching_etag_gets_not_modified_without_a_body() {
        let first = get("/assets/style.css", None).await;
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = get("/assets/style.css", Some(&format!("\"other\", W/{etag}"))).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag.as_str());
        assert!(body_text(again).await.is_empty());
        let changed = get("/assets/style.css", Some("\"other\"")).await;
        assert_eq!(changed.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn unknown_and_escaping_paths_are_not_found_as_the_api_error_json() {
        for uri in ["/assets/nope.js", "/assets/../index.html", "/assets/%2e%2e/Cargo.toml", "/assets/../../src/web.rs"]
        {
            let response = get(uri, None).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json", "{uri}");
            let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
            assert_eq!(body["error"]["code"], "not_found", "{uri}: {body}");
            assert!(body["error"]["message"].as_str().unwrap().contains("no asset"), "{uri}: {body}");
            assert!(body["error"]["field"].is_null(), "{uri}: {body}");
        }
    }
}
