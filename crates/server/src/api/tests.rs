//! The HTTP layer over the real stores, with no engine: jobs stay queued, which is all that
//! validation, queueing, cancellation and error shapes need. The engine-backed paths are
//! covered by the binary's integration tests (crates/dgx-music/tests/serve).

use std::sync::Arc;

use musicgen::ModelInfo;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::events::Events;
use crate::metrics::Metrics;
use crate::state::{AppState, Shared};
use crate::store::{AudioStore, JobStore, LocalAudioStore, SqliteJobStore};
use crate::worker::WorkerHandle;

struct TestServer {
    base: String,
    _dir: tempfile::TempDir,
    _shutdown: watch::Sender<bool>,
    jobs: Arc<dyn JobStore>,
}

async fn start(max_queue: usize) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let jobs: Arc<dyn JobStore> = Arc::new(SqliteJobStore::open(&dir.path().join("db")).await.unwrap());
    let audio: Arc<dyn AudioStore> = Arc::new(LocalAudioStore::open(dir.path().join("audio")).unwrap());
    let (shutdown_tx, shutdown) = watch::channel(false);
    let model = ModelInfo {
        source: "tiny".into(),
        id: "tiny".into(),
        device: "cpu".into(),
        dtype: "f32".into(),
        sample_rate: 32000,
        audio_channels: 1,
        num_codebooks: 4,
        decoder_layers: 2,
        decoder_hidden_size: 16,
        vocab_size: 99,
        parameters: 1000,
        step_mode: "growing".into(),
        melody: false,
    };
    let state = AppState::new(Shared {
        jobs: jobs.clone(),
        audio,
        model,
        max_queue,
        events: Events::default(),
        metrics: Arc::new(Metrics::default()),
        worker: WorkerHandle::default(),
        shutdown,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, super::router(state)).await.unwrap() });
    TestServer { base, _dir: dir, _shutdown: shutdown_tx, jobs }
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    (status, response.json::<Value>().await.unwrap()["error"].clone())
}

#[tokio::test]
async fn generate_queues_and_reports_the_job() {
    let server = start(10).await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/api/v1/generate", server.base))
        .json(&json!({"prompt": "ambient piano", "duration": 16, "seed": 42}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()));
    assert_eq!(
        (job["status"].as_str(), job["queue_position"].as_u64(), job["seed"].as_u64()),
        (Some("queued"), Some(0), Some(42))
    );
    assert_eq!(
        (job["top_k"].as_u64(), job["model"].as_str()),
        (Some(99), Some("tiny")),
        "top_k defaults within the vocabulary"
    );
    let keys: Vec<&str> = job.as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "id",
        "status",
        "progress",
        "prompt",
        "duration",
        "top_k",
        "top_p",
        "temperature",
        "cfg_coef",
        "seed",
        "model",
        "waiting_reason",
        "created_at",
        "started_at",
        "finished_at",
        "queue_position",
        "audio_duration",
        "generation_time",
        "real_time_factor",
        "error",
        "audio_url",
    ] {
        assert!(keys.contains(&key), "{key} missing from {job}");
    }
    let fetched: Value = client.get(format!("{}{location}", server.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(fetched, job);
    assert_eq!(job["waiting_reason"], Value::Null, "a job for this server's model does not wait for another");

    let (status, error) = error_of(
        client.get(format!("{location}/audio").replace("/api", &format!("{}/api", server.base))).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));

    // Cancelling a queued job, then deleting it.
    let cancelled: Value =
        client.delete(format!("{}{location}", server.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let deleted = client.delete(format!("{}{location}", server.base)).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let (status, _) = error_of(client.get(format!("{}{location}", server.base)).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_job_for_another_model_says_what_it_waits_for() {
    let server = start(10).await;
    let item = musicgen::GenerationItem {
        prompt: "from an earlier run".into(),
        sampling: musicgen::SamplingParams::default(),
        seed: 1,
    };
    let params = crate::job::JobParams { item, duration_secs: 4.0 };
    let other = crate::job::Job::new(params, "facebook/musicgen-small".into(), chrono::Utc::now());
    assert!(server.jobs.enqueue(&other, 10).await.unwrap());
    let client = reqwest::Client::new();
    let ours: Value = client
        .post(format!("{}/api/v1/generate", server.base))
        .json(&json!({"prompt": "p", "duration": 4}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((ours["queue_position"].as_u64(), &ours["waiting_reason"]), (Some(0), &Value::Null), "{ours}");
    let waiting: Value =
        reqwest::get(format!("{}/api/v1/jobs/{}", server.base, other.id)).await.unwrap().json().await.unwrap();
    assert_eq!(
        (waiting["status"].as_str(), waiting["model"].as_str()),
        (Some("queued"), Some("facebook/musicgen-small"))
    );
    let reason = waiting["waiting_reason"].as_str().unwrap();
    assert!(reason.contains("--model facebook/musicgen-small") && reason.contains("runs tiny"), "{reason}");
}

#[tokio::test]
async fn a_value_of_the_wrong_type_names_its_field_and_range() {
    let server = start(10).await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/generate", server.base))
        .json(&json!({"prompt": "p", "duration": 4, "top_k": "x"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("top_k")), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("1..=99") && message.contains("string \"x\""), "{message}");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = start(2).await;
    let client = reqwest::Client::new();
    let post =
        || client.post(format!("{}/api/v1/generate", server.base)).json(&json!({"prompt": "p", "duration": 1})).send();
    assert_eq!(post().await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(post().await.unwrap().status(), StatusCode::ACCEPTED);
    let full = post().await.unwrap();
    assert_eq!(full.headers()["retry-after"], "5");
    let (status, error) = error_of(full).await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("queue_full")));
    assert_eq!(server.jobs.count_by_status().await.unwrap()[&crate::job::JobStatus::Queued], 2);
}

#[tokio::test]
async fn concurrent_submissions_never_overfill_the_queue() {
    let server = start(5).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = format!("{}/api/v1/generate", server.base);
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"prompt": format!("p{i}"), "duration": 1}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 5);
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let server = start(10).await;
    let client = reqwest::Client::new();
    let generate = format!("{}/api/v1/generate", server.base);
    let cases = [
        (
            client.post(&generate).header("content-type", "application/json").body("{"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            client.post(&generate).header("content-type", "text/plain").body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            client.post(&generate).header("content-type", "application/json").body(vec![b' '; 70_000]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            client.post(&generate).json(&json!({"prompt": "p", "duration": 5, "top_k": 100})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (client.get(format!("{}/api/v1/jobs/123", server.base)), StatusCode::NOT_FOUND, "not_found"),
        (client.get(format!("{}/api/v1/jobs/..%2F..%2Fdb/events", server.base)), StatusCode::NOT_FOUND, "not_found"),
        (client.get(format!("{}/api/v1/jobs?limit=101", server.base)), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            client.get(format!("{}/api/v1/jobs?limit=1&limit=2", server.base)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (client.get(format!("{}/api/v1/unknown", server.base)), StatusCode::NOT_FOUND, "not_found"),
        (client.delete(format!("{}/api/v1/health", server.base)), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    for (request, expected, code) in cases {
        let (status, error) = error_of(request.send().await.unwrap()).await;
        assert_eq!((status, error["code"].as_str()), (expected, Some(code)), "{error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let server = start(10).await;
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", server.base)).await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let generate = &doc["paths"]["/api/v1/generate"]["post"];
    assert!(generate["responses"]["429"]["headers"]["Retry-After"].is_object(), "{generate}");
    let body = &doc["components"]["schemas"]["GenerateBody"];
    assert_eq!(body["properties"]["duration"]["maximum"], 300.0);
    assert_eq!(body["properties"]["prompt"]["maxLength"], 2000);
    let required: Vec<&str> = body["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(required, ["prompt", "duration"], "{body}");
    assert_eq!(body["properties"]["prompt"]["type"], "string", "{body}");
    let job = &doc["components"]["schemas"]["JobView"];
    assert!(job["properties"]["real_time_factor"].is_object(), "{job}");
    assert!(job["properties"]["waiting_reason"].is_object(), "{job}");
}
