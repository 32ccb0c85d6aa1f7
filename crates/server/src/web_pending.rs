//! Stands in for the web helper's `web::router()` (the page at `/` and `/assets/*`) until it
//! lands on main; the API never depends on it.

use axum::routing::get;
use axum::Router;

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(
        "/",
        get(|| async { "DGX Music: the API is at /api/v1 and described at /api/v1/openapi.json\n" }),
    )
}
