//! The network edge and storage failures, through the real connection loop: hosts, origins,
//! connection and stream limits, slow clients, files that cannot be removed, a full disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use super::{error_of, start, start_with, tone_wav, upload, Options};
use crate::net::HttpConfig;
use crate::store::{AudioStore, LocalAudioStore, Outcome, StoreError, StoreResult};

/// Sends `head` as it is and reads until the server closes; `None` if it keeps the connection
/// open longer than `wait`.
async fn raw(addr: std::net::SocketAddr, head: &str, wait: Duration) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    match tokio::time::timeout(wait, stream.read_to_end(&mut response)).await {
        Ok(_) => Some(String::from_utf8_lossy(&response).into_owned()),
        Err(_) => None,
    }
}

fn json_body(response: &str) -> Value {
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_foreign_host_gets_421_naming_it_and_the_flag() {
    let http = HttpConfig { allowed_hosts: vec!["music.example.com".into()], ..HttpConfig::default() };
    let server = start_with(Options { http, ..Options::default() }).await;
    let wait = Duration::from_secs(10);
    let port = server.addr.port();
    for host in ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.1.2.3"] {
        let head = format!("GET /api/v1/jobs HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let response = raw(server.addr, &head, wait).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 421"), "{host}: {response}");
        let error = &json_body(&response)["error"];
        assert_eq!(error["code"], "unknown_host", "{response}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(host) && message.contains("--allowed-host"), "{message}");
    }
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "music.example.com".into(), "[::1]".into()] {
        let head = format!("GET /api/v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let response = raw(server.addr, &head, wait).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{host}: {response}");
    }
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_only_the_listed_origins() {
    let studio = "http://studio.example.com:3000";
    let client = reqwest::Client::new();
    let generate = json!({"prompt": "ambient piano", "duration": 4});
    let preflight = |base: &str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{base}/api/v1/generate"))
            .header("Origin", studio)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };

    let closed = start(10).await;
    let response = preflight(&closed.base).await.unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none(), "{:?}", response.headers());
    // A cross-origin form post needs no preflight; the Origin check refuses it.
    let response =
        client.post(format!("{}/api/v1/generate", closed.base)).header("Origin", studio).json(&generate).send();
    let (status, error) = error_of(response.await.unwrap()).await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden_origin")), "{error}");
    assert!(error["message"].as_str().unwrap().contains(&format!("--cors-origin {studio}")), "{error}");
    // The server's own page (same origin) posts as before.
    let own = closed.base.clone();
    let response = client.post(format!("{}/api/v1/generate", closed.base)).header("Origin", own).json(&generate);
    assert_eq!(response.send().await.unwrap().status(), StatusCode::ACCEPTED);

    let http = HttpConfig { cors_origins: vec![studio.into()], ..HttpConfig::default() };
    let open = start_with(Options { http, ..Options::default() }).await;
    let response = preflight(&open.base).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.headers()["access-control-allow-origin"], studio);
    let response = client.post(format!("{}/api/v1/generate", open.base)).header("Origin", studio).json(&generate);
    let response = response.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["access-control-allow-origin"], studio);
    let other = client.post(format!("{}/api/v1/generate", open.base)).header("Origin", "http://evil.example");
    let (status, _) = error_of(other.json(&generate).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn api_answers_carry_the_security_headers_and_a_request_id() {
    let server = start(10).await;
    let client = reqwest::Client::new();
    for path in ["/api/v1/health", "/api/v1/jobs/nope", "/api/v1/openapi.json"] {
        let response = client.get(format!("{}{path}", server.base)).send().await.unwrap();
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["content-security-policy"], "default-src 'none'; frame-ancestors 'none'", "{path}");
        assert!(Uuid::try_parse(headers["x-request-id"].to_str().unwrap()).is_ok(), "{path}: {headers:?}");
    }
    let page = client.get(format!("{}/", server.base)).send().await.unwrap();
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    let echoed = client.get(format!("{}/api/v1/health", server.base)).header("x-request-id", "trace-me-42");
    assert_eq!(echoed.send().await.unwrap().headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn a_half_sent_request_head_is_cut_off_after_the_header_timeout() {
    let http = HttpConfig { header_timeout: Duration::from_secs(1), ..HttpConfig::default() };
    let server = start_with(Options { http, ..Options::default() }).await;
    let started = Instant::now();
    let slow = raw(server.addr, "GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a", Duration::from_secs(5));
    assert!(slow.await.is_some(), "the connection stays open with half a request head");
    assert!(started.elapsed() < Duration::from_secs(4), "closed after {:?}", started.elapsed());
    // An idle keep-alive connection goes the same way.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
    assert!(read.is_ok(), "an idle connection is closed");
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_client_past_its_connection_limit_gets_429_until_it_closes_one() {
    let http = HttpConfig { max_connections_per_client: 2, ..HttpConfig::default() };
    let server = start_with(Options { http, ..Options::default() }).await;
    let held = [TcpStream::connect(server.addr).await.unwrap(), TcpStream::connect(server.addr).await.unwrap()];
    let head = "GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let response = raw(server.addr, head, Duration::from_secs(10)).await.expect("the refused connection is closed");
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    let error = &json_body(&response)["error"];
    assert_eq!(error["code"], "too_many_connections", "{response}");
    assert!(error["message"].as_str().unwrap().contains("--max-connections-per-client"), "{response}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let closing = head.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    loop {
        let response = raw(server.addr, &closing, Duration::from_secs(10)).await.unwrap();
        if response.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "closed connections are never given back: {response}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn event_streams_past_the_limit_get_503_and_a_closed_one_frees_its_slot() {
    let http = HttpConfig { max_event_streams: 1, ..HttpConfig::default() };
    let server = start_with(Options { http, ..Options::default() }).await;
    let client = reqwest::Client::new();
    let job: Value = client
        .post(format!("{}/api/v1/generate", server.base))
        .json(&json!({"prompt": "ambient piano", "duration": 4}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = format!("{}/api/v1/jobs/{}/events", server.base, job["id"].as_str().unwrap());
    let first = client.get(&events).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (status, error) = error_of(client.get(&events).send().await.unwrap()).await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("--max-event-streams"), "{error}");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client.get(&events).send().await.unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "a closed stream keeps its slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A job of the test model, completed as the worker would complete it.
async fn completed_job(server: &super::TestServer) -> Uuid {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/generate", server.base))
        .json(&json!({"prompt": "ambient piano", "duration": 4}))
        .send()
        .await
        .unwrap();
    let id = Uuid::try_parse(response.json::<Value>().await.unwrap()["id"].as_str().unwrap()).unwrap();
    let claimed = server.jobs.claim_batch("tests", &["tiny".to_string()], 1, chrono::Utc::now()).await.unwrap();
    assert_eq!(claimed.iter().map(|job| job.id).collect::<Vec<_>>(), [id]);
    let outcome = Outcome::Completed { audio_duration: 4.0, generation_time: 1.0 };
    assert!(server.jobs.finish(id, "tests", outcome, chrono::Utc::now()).await.unwrap());
    id
}

#[tokio::test]
async fn a_job_whose_file_cannot_be_removed_is_kept_and_can_be_deleted_later() {
    let server = start(10).await;
    let client = reqwest::Client::new();
    let id = completed_job(&server).await;
    // A directory where the WAV should be: no file removal takes it, for root neither.
    let wav = server.dir.path().join("audio").join(format!("{id}.wav"));
    std::fs::create_dir_all(wav.join("inside")).unwrap();
    let job_url = format!("{}/api/v1/jobs/{id}", server.base);
    let (status, error) = error_of(client.delete(&job_url).send().await.unwrap()).await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::INTERNAL_SERVER_ERROR, Some("storage_error")), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(!message.contains(&*server.dir.path().to_string_lossy()) && !message.contains('/'), "a path: {message}");
    let kept: Value = client.get(&job_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(kept["status"], "completed", "the job stays while its file does: {kept}");
    std::fs::remove_dir_all(&wav).unwrap();
    assert_eq!(client.delete(&job_url).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(client.get(&job_url).send().await.unwrap().status(), StatusCode::NOT_FOUND);
}

/// An uploads store on a disk that is full: every write fails with ENOSPC, as a full file system's would.
struct FullDisk(LocalAudioStore);

impl AudioStore for FullDisk {
    fn put(&self, id: Uuid, _: &musicgen::Audio, _: musicgen::audio::SampleFormat) -> StoreResult<()> {
        let source = std::io::Error::from(std::io::ErrorKind::StorageFull);
        Err(StoreError::AudioIo { path: self.0.path_of(id), source })
    }

    fn read(&self, id: Uuid, rate: u32, channels: usize, max_secs: f64) -> StoreResult<Option<musicgen::Audio>> {
        self.0.read(id, rate, channels, max_secs)
    }

    fn ids(&self) -> StoreResult<Vec<Uuid>> {
        self.0.ids()
    }

    fn convert(&self, id: Uuid, format: musicgen::audio::Format, tags: &musicgen::audio::Tags) -> StoreResult<bool> {
        self.0.convert(id, format, tags)
    }

    fn serve(
        &self,
        id: Uuid,
        format: musicgen::audio::Format,
        request: axum::http::Request<axum::body::Body>,
    ) -> futures_util::future::BoxFuture<'_, StoreResult<Option<axum::response::Response>>> {
        self.0.serve(id, format, request)
    }

    fn delete(&self, id: Uuid) -> futures_util::future::BoxFuture<'_, StoreResult<()>> {
        self.0.delete(id)
    }
}

#[tokio::test]
async fn a_full_disk_answers_507_without_a_path() {
    let server = start_with(Options { uploads: |store| Arc::new(FullDisk(store)), ..Options::default() }).await;
    let response = upload(&server, "riff.wav", tone_wav(1.0, 32000)).await;
    let (status, error) = error_of(response).await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::INSUFFICIENT_STORAGE, Some("insufficient_storage")));
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("disk is full") && !message.contains('/'), "{message}");
}
