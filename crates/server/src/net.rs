//! The network edge, under the router: the HTTP/1 connection loop ([`serve`]) and the layers every
//! request passes ([`layers`]). axum::serve exposes no timeouts or connection counts, so the loop is
//! hyper's own connection builder, as axum's `serve-with-hyper` example writes it:
//!
//! - a request head must arrive within `header_timeout` (also the idle limit between keep-alive
//!   requests: hyper starts the clock when it waits for a head), each body frame within `body_timeout`;
//! - one client IP holds at most `max_connections_per_client` connections; past that a connection is
//!   answered 429 and closed;
//! - on shutdown the listener closes, idle connections close at once, requests in flight get
//!   [`SHUTDOWN_GRACE`], then whatever is left is dropped: a half-sent request never holds the process.
//!
//! The layers: a request id (`x-request-id`, kept from the client or made) on the request, its log
//! line (tower-http's TraceLayer) and the response; the `Host` check (DNS rebinding defence) and, for
//! state-changing methods, the `Origin` check (a page of another origin may not post, upload or
//! delete unless `--cors-origin` lists it); CORS for the listed origins; the security headers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutBody;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::error::ApiError;

/// How long requests in flight may run on after shutdown begins before their connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The policy of the network edge; [`HttpConfig::default`] holds the documented defaults.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Host names clients may use besides localhost, loopback addresses, the bound address and the
    /// address a connection arrived on (`--allowed-host`); lower case, no port.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) whose pages may call the API (`--cors-origin`); none: CORS off.
    pub cors_origins: Vec<String>,
    /// Open connections one client IP may hold (`--max-connections-per-client`).
    pub max_connections_per_client: usize,
    /// Open SSE streams (`GET /jobs/{id}/events`) of all clients together (`--max-event-streams`).
    pub max_event_streams: usize,
    /// Time for a request head to arrive, and for an idle keep-alive connection to send its next one.
    pub header_timeout: Duration,
    /// Time for each piece of a request body to arrive.
    pub body_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            max_connections_per_client: 64,
            max_event_streams: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// `--allowed-host`: a DNS name or an IP address, without scheme, port or path.
pub fn parse_allowed_host(text: &str) -> Result<String, String> {
    let name = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty()
        && (name.parse::<IpAddr>().is_ok()
            || name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'));
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "{text:?} is not a host name: give the bare name clients use, e.g. music.example.com or 192.168.1.20"
        ))
    }
}

/// `--cors-origin`: `http://host[:port]` or `https://...`, exactly as a browser sends `Origin`.
pub fn parse_cors_origin(text: &str) -> Result<String, String> {
    let origin = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    match rest {
        Some(authority) if !authority.is_empty() && !authority.contains(['/', '?', '#', '*', ' ']) => Ok(origin),
        _ => Err(format!(
            "{text:?} is not an origin: give scheme, host and port as the browser shows them, e.g. \
             http://studio.example.com:3000 (one origin per --cors-origin; no wildcards)"
        )),
    }
}

/// The two ends of the connection a request came on, set by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionAddrs {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

struct Policy {
    allowed_hosts: Vec<String>,
    cors_origins: Vec<String>,
    bound: IpAddr,
}

/// The middleware around the application (see the module documentation); `bound` is the address
/// the server listens on.
pub fn layers(app: Router, config: &HttpConfig, bound: IpAddr) -> Router {
    let policy = Arc::new(Policy {
        allowed_hosts: config.allowed_hosts.clone(),
        cors_origins: config.cors_origins.clone(),
        bound,
    });
    let mut app = app;
    if !config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> =
            config.cors_origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()).collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, header::RANGE, header::IF_RANGE])
                .expose_headers([
                    header::LOCATION,
                    header::RETRY_AFTER,
                    header::CONTENT_RANGE,
                    header::CONTENT_DISPOSITION,
                    header::HeaderName::from_static("x-request-id"),
                ])
                .max_age(Duration::from_secs(600)),
        );
    }
    app.layer(axum::middleware::from_fn_with_state(policy, check_host_and_origin))
        .layer(axum::middleware::map_response(security_headers))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    let client = request.extensions().get::<ConnectionAddrs>().map(|addrs| addrs.remote.ip());
                    let client = client.map_or_else(|| "-".to_string(), |ip| ip.to_string());
                    tracing::info_span!("request", id, client, method = %request.method(), path = %request.uri().path())
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// The page's headers on every answer: no MIME sniffing, no referrer, no framing; JSON and text get
/// a CSP that allows nothing (the page's own, stricter where it loads code, is kept).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let is_document = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/plain"));
    if is_document && !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    response
}

async fn check_host_and_origin(State(policy): State<Arc<Policy>>, request: Request, next: Next) -> Response {
    let host = match request.uri().authority() {
        Some(authority) => Some(authority.as_str().to_string()),
        None => request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string),
    };
    let Some(host) = host else {
        return ApiError::MisdirectedHost(
            "the request has no Host header; send the address or name of this server as Host".into(),
        )
        .into_response();
    };
    let local = request.extensions().get::<ConnectionAddrs>().map(|addrs| addrs.local.ip());
    let name = host_name(&host);
    if !policy.host_allowed(&name, local) {
        let shown: String = host.chars().take(100).collect();
        let flag: String = name.chars().take(100).collect();
        return ApiError::MisdirectedHost(format!(
            "this server does not answer to Host {shown:?}: it takes its own address, localhost and the names \
             given with --allowed-host; if clients reach it by this name, start it with --allowed-host {flag}"
        ))
        .into_response();
    }
    let safe = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if let (false, Some(origin)) = (safe, request.headers().get(header::ORIGIN)) {
        let origin = origin.to_str().unwrap_or_default().to_ascii_lowercase();
        if !policy.origin_allowed(&origin, &host) {
            let shown: String = origin.chars().take(100).collect();
            return ApiError::ForbiddenOrigin(format!(
                "a page from origin {shown:?} may not {} here: only this server's own page may change jobs \
                 and uploads; start the server with --cors-origin {shown} to let that page use the API",
                request.method()
            ))
            .into_response();
        }
    }
    next.run(request).await
}

/// The host of a `Host` value: no port, no brackets, lower case, no final dot.
fn host_name(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        _ if host.parse::<IpAddr>().is_ok() => host,
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Policy {
    fn host_allowed(&self, name: &str, local: Option<IpAddr>) -> bool {
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            // An address cannot be rebound: a page loaded from it is this server's own page.
            if ip.is_loopback() || Some(ip) == local || (ip == self.bound && !ip.is_unspecified()) {
                return true;
            }
        }
        self.allowed_hosts.iter().any(|allowed| allowed == name)
    }

    fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host))
            || self.cors_origins.iter().any(|allowed| allowed == origin)
    }
}

/// Connections per client IP; a [`ClientSlot`] gives its place back when dropped.
#[derive(Default)]
struct ClientCounts(Mutex<HashMap<IpAddr, usize>>);

struct ClientSlot {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
}

impl ClientCounts {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientSlot { counts: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then closes as the module documentation says.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let counts = Arc::new(ClientCounts::default());
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(config.header_timeout);
    let mut refusing = builder.clone();
    refusing.keep_alive(false);
    let (max, body_timeout) = (config.max_connections_per_client.max(1), config.body_timeout);
    tokio::pin!(shutdown);
    loop {
        let (socket, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: wait for connections to close.
                    tracing::warn!("cannot accept a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(local) = socket.local_addr() else { continue };
        let io = TokioIo::new(socket);
        let Some(slot) = counts.take(remote.ip(), max) else {
            tracing::warn!("refusing a connection from {}: it holds {max} already", remote.ip());
            let service = hyper::service::service_fn(move |_: hyper::Request<hyper::body::Incoming>| async move {
                let error = ApiError::TooManyConnections(format!(
                    "{} holds {max} open connections to this server already, the most one client may; close some \
                     (or raise --max-connections-per-client) and retry",
                    remote.ip()
                ));
                Ok::<_, Infallible>(security_headers(error.into_response()).await)
            });
            let connection = graceful.watch(refusing.serve_connection(io, service));
            tokio::spawn(async move {
                let _ = connection.await;
            });
            continue;
        };
        let service = app.clone().map_request(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut request = request.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
            request.extensions_mut().insert(ConnectionAddrs { local, remote });
            request
        });
        let connection = graceful.watch(builder.serve_connection(io, TowerToHyperService::new(service)));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("connection from {remote} ended: {err}");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            "requests still running {} s after shutdown began; their connections are dropped",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_port_brackets_case_and_final_dot() {
        for (host, name) in [
            ("Example.COM:8000", "example.com"),
            ("example.com.", "example.com"),
            ("[::1]:8000", "::1"),
            ("[fe80::1]", "fe80::1"),
            ("10.0.0.5:80", "10.0.0.5"),
            ("::1", "::1"),
        ] {
            assert_eq!(host_name(host), name, "{host}");
        }
    }

    #[test]
    fn hosts_are_loopback_the_bound_or_arrival_address_or_listed() {
        let policy = Policy {
            allowed_hosts: vec!["music.example.com".into()],
            cors_origins: vec![],
            bound: "0.0.0.0".parse().unwrap(),
        };
        let arrived: IpAddr = "192.168.1.20".parse().unwrap();
        for ok in ["localhost", "app.localhost", "127.0.0.1", "::1", "192.168.1.20", "music.example.com"] {
            assert!(policy.host_allowed(ok, Some(arrived)), "{ok}");
        }
        for refused in ["evil.example", "0.0.0.0", "192.168.1.21", "example.com", "localhost.evil.example"] {
            assert!(!policy.host_allowed(refused, Some(arrived)), "{refused}");
        }
    }

    #[test]
    fn flags_are_checked_and_normalised() {
        assert_eq!(parse_allowed_host("Music.Example.com.").unwrap(), "music.example.com");
        for bad in ["http://x", "a/b", "", "host:80"] {
            assert!(parse_allowed_host(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cors_origin("HTTP://Studio.example.com:3000/").unwrap(), "http://studio.example.com:3000");
        for bad in ["*", "studio.example.com", "http://", "http://x/path", "ftp://x"] {
            assert!(parse_cors_origin(bad).is_err(), "{bad}");
        }
    }
}
