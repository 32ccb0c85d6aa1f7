//! Who may call the API. A request carries its key as `Authorization: Bearer <token>`, or, for
//! what a browser fetches on its own (`<audio src>`, `EventSource`), as the `HttpOnly`,
//! `SameSite=Strict` cookie that `POST /api/v1/session` sets from such a header.
//!
//! The rule: a key is needed as soon as one is active, and always on a server bound to a
//! non-loopback address (where `serve` refuses to start without keys unless `--insecure-no-auth`);
//! a loopback server without keys is one trusted user ([`Caller::Open`]). `--insecure-no-auth`
//! turns the check off. The API description and, when asked (`--public-health`,
//! `--public-metrics`), `/health` and the metrics are open to everyone.

use axum::extract::{OriginalUri, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::keys::{hash_token, Caller};
use crate::state::AppState;

/// The cookie the page's media requests carry.
pub const COOKIE: &str = "dgx_music_key";

/// How a server checks keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthPolicy {
    /// `--insecure-no-auth`: no checks at all.
    pub disabled: bool,
    /// Bound to a non-loopback address: a key is needed even when none is active.
    pub network: bool,
    /// `/api/v1/health` answers without a key.
    pub public_health: bool,
    /// `/metrics` and `/api/v1/metrics` answer without a key.
    pub public_metrics: bool,
}

impl AuthPolicy {
    fn is_public(&self, path: &str) -> bool {
        path == "/api/v1/openapi.json"
            || (self.public_health && path == "/api/v1/health")
            || (self.public_metrics && (path == "/metrics" || path == "/api/v1/metrics"))
    }
}

/// The middleware: puts the [`Caller`] in the request's extensions, or answers 401.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    // Under `nest` the URI has lost its `/api/v1`; the rules speak of whole paths.
    let path = match request.extensions().get::<OriginalUri>() {
        Some(OriginalUri(uri)) => uri.path().to_string(),
        None => request.uri().path().to_string(),
    };
    match caller(&state, request.headers(), &path).await {
        Ok(Some(caller)) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Ok(None) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

/// The caller; `None` for a public path asked without a key (its handler needs no caller).
async fn caller(state: &AppState, headers: &HeaderMap, path: &str) -> Result<Option<Caller>, ApiError> {
    let policy = state.auth;
    if policy.disabled {
        return Ok(Some(Caller::Open));
    }
    let Some(token) = token(headers)? else {
        if policy.is_public(path) {
            return Ok(None);
        }
        if policy.network || state.keys.has_active_keys().await? {
            return Err(ApiError::Unauthorized(
                "this server needs an API key: send the header Authorization: Bearer <key> (on the page, enter \
                 the key when asked); whoever runs the server makes one with dgx-music keys create --name NAME"
                    .into(),
            ));
        }
        return Ok(Some(Caller::Open));
    };
    let Some(key) = state.keys.key_by_hash(&hash_token(&token)).await? else {
        return Err(ApiError::Unauthorized(
            "this API key is not known to this server (mistyped, or from another server); \
             list the keys with dgx-music keys list"
                .into(),
        ));
    };
    if let Some(revoked) = key.revoked_at {
        return Err(ApiError::Unauthorized(format!(
            "the API key {} ({}) was revoked on {}; ask for a new one",
            key.name,
            key.prefix,
            crate::job::timestamp(revoked)
        )));
    }
    Ok(Some(Caller::Key(key)))
}

/// The bearer token of the `Authorization` header, else of the cookie.
pub fn token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().unwrap_or_default().trim();
        let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(ApiError::Unauthorized(
                "the Authorization header must be Bearer <key>, e.g. Authorization: Bearer dgxm_3f9a…".into(),
            ));
        }
        return Ok(Some(token.to_string()));
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string());
    Ok(cookie.filter(|value| !value.is_empty()))
}

/// `Set-Cookie` for the page's media requests: the token the request was authenticated with.
pub fn session_cookie(token: &str) -> HeaderValue {
    let value = format!("{COOKIE}={token}; Path=/api/v1; HttpOnly; SameSite=Strict; Max-Age=31536000");
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that removes it.
pub fn cleared_cookie() -> HeaderValue {
    HeaderValue::from_static("dgx_music_key=; Path=/api/v1; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_token_comes_from_the_header_or_else_the_cookie() {
        assert_eq!(token(&headers(&[])).unwrap(), None);
        assert_eq!(token(&headers(&[(header::AUTHORIZATION, "Bearer dgxm_a")])).unwrap().as_deref(), Some("dgxm_a"));
        assert_eq!(token(&headers(&[(header::AUTHORIZATION, "bearer  dgxm_b ")])).unwrap().as_deref(), Some("dgxm_b"));
        for bad in ["Basic dXNlcjpwYXNz", "Bearer", "dgxm_c"] {
            assert!(
                matches!(token(&headers(&[(header::AUTHORIZATION, bad)])), Err(ApiError::Unauthorized(_))),
                "{bad}"
            );
        }
        let cookies = headers(&[(header::COOKIE, "theme=dark; dgx_music_key=dgxm_d"), (header::COOKIE, "x=1")]);
        assert_eq!(token(&cookies).unwrap().as_deref(), Some("dgxm_d"));
        let both = headers(&[(header::COOKIE, "dgx_music_key=dgxm_d"), (header::AUTHORIZATION, "Bearer dgxm_e")]);
        assert_eq!(token(&both).unwrap().as_deref(), Some("dgxm_e"), "the header wins");
        assert_eq!(token(&headers(&[(header::COOKIE, "dgx_music_key=")])).unwrap(), None);
    }

    #[test]
    fn only_the_description_and_what_was_opened_are_public() {
        let closed = AuthPolicy::default();
        assert!(closed.is_public("/api/v1/openapi.json"));
        assert!(!closed.is_public("/api/v1/health") && !closed.is_public("/metrics"));
        let open = AuthPolicy { public_health: true, public_metrics: true, ..AuthPolicy::default() };
        assert!(open.is_public("/api/v1/health") && open.is_public("/metrics") && open.is_public("/api/v1/metrics"));
        assert!(!open.is_public("/api/v1/jobs"));
    }
}
