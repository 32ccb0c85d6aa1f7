//! The page's session: its key copied into a cookie, because what a browser fetches by itself
//! (`<audio src>`, `EventSource`) cannot carry an `Authorization` header.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::auth::{cleared_cookie, session_cookie, token};
use crate::error::{ApiError, ErrorBody};
use crate::keys::Caller;

/// Store the request's API key in an `HttpOnly`, `SameSite=Strict` cookie for `/api/v1`.
///
/// Send the key as `Authorization: Bearer`; the page does this once it has a key, so that its audio
/// players and event streams are authenticated too. A server that needs no key sets no cookie.
#[utoipa::path(
    post, path = "/api/v1/session", tag = "service",
    responses(
        (status = 204, description = "The cookie is set (or not needed)"),
        (status = 401, description = "No key, or an unknown or revoked one", body = ErrorBody),
    )
)]
pub async fn create_session(Extension(caller): Extension<Caller>, headers: HeaderMap) -> Result<Response, ApiError> {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let (Caller::Key(_), Some(token)) = (caller, token(&headers)?) {
        response.headers_mut().insert(header::SET_COOKIE, session_cookie(&token));
    }
    Ok(response)
}

/// Remove the session cookie.
#[utoipa::path(
    delete, path = "/api/v1/session", tag = "service",
    responses((status = 204, description = "The cookie is removed"))
)]
pub async fn delete_session() -> Response {
    ([(header::SET_COOKIE, cleared_cookie())], StatusCode::NO_CONTENT).into_response()
}
