//! The HTTP layer over the real stores, with no engine: jobs stay queued, which is all that
//! validation, queueing, cancellation and error shapes need. The engine-backed paths are
//! covered by the binary's integration tests (crates/dgx-music/tests/serve).

use std::sync::Arc;

use musicgen::ModelInfo;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::auth::AuthPolicy;
use crate::events::{Events, StreamLimit};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::net::HttpConfig;
use crate::state::{AppState, Shared};
use crate::store::{AudioStore, JobStore, KeyStore, LocalAudioStore, SqliteJobStore};
use crate::worker::Workers;

struct TestServer {
    base: String,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    _shutdown: watch::Sender<bool>,
    jobs: Arc<dyn JobStore>,
    keys: Arc<dyn KeyStore>,
}

async fn start(max_queue: usize) -> TestServer {
    start_model(max_queue, false).await
}

/// A server whose model is a melody checkpoint when `melody`.
async fn start_model(max_queue: usize, melody: bool) -> TestServer {
    start_with(Options { max_queue, melody, ..Options::default() }).await
}

struct Options {
    max_queue: usize,
    melody: bool,
    http: HttpConfig,
    auth: AuthPolicy,
    limits: Limits,
    /// Models besides the default `tiny`.
    others: Vec<ModelInfo>,
    /// Wraps the uploads store (to inject failures).
    uploads: fn(LocalAudioStore) -> Arc<dyn AudioStore>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_queue: 10,
            melody: false,
            http: HttpConfig::default(),
            auth: AuthPolicy::default(),
            limits: Limits::new(0, 0),
            others: Vec::new(),
            uploads: |store| Arc::new(store),
        }
    }
}

/// What the worker would report for a tiny checkpoint called `id`.
fn tiny_model(id: &str, audio_channels: usize, melody: bool) -> ModelInfo {
    ModelInfo {
        source: id.into(),
        id: id.into(),
        device: "cpu".into(),
        dtype: "f32".into(),
        weights: "f32".into(),
        step_weight_bytes: 0,
        sample_rate: 32000,
        audio_channels,
        num_codebooks: 4 * audio_channels,
        decoder_layers: 2,
        decoder_hidden_size: 16,
        vocab_size: 99,
        parameters: 1000,
        step_mode: "growing".into(),
        melody,
    }
}

/// The router behind the real connection loop and layers (`net`), as `run` serves it.
async fn start_with(options: Options) -> TestServer {
    let Options { max_queue, melody, http, auth, limits, others, uploads } = options;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteJobStore::open(&dir.path().join("db")).await.unwrap());
    let jobs: Arc<dyn JobStore> = sqlite.clone();
    let keys: Arc<dyn KeyStore> = sqlite;
    let audio: Arc<dyn AudioStore> = Arc::new(LocalAudioStore::open(dir.path().join("audio")).unwrap());
    let uploads: Arc<dyn AudioStore> = uploads(LocalAudioStore::open(dir.path().join("uploads")).unwrap());
    let incoming = dir.path().join("incoming");
    std::fs::create_dir(&incoming).unwrap();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let models = crate::state::Models::new(tiny_model("tiny", 1, melody), others);
    let registration = crate::store::Registration { worker: "tests".into(), models: models.all().to_vec() };
    jobs.heartbeat(&registration, &[]).await.unwrap();
    let state = AppState::new(Shared {
        jobs: jobs.clone(),
        keys: keys.clone(),
        auth,
        limits,
        audio,
        uploads,
        incoming,
        max_upload_bytes: 1_000_000,
        models: Arc::new(crate::state::ModelCatalog::new(models)),
        max_queue,
        events: Events::default(),
        event_streams: StreamLimit::new(http.max_event_streams),
        live: crate::live::LiveAudio::default(),
        metrics: Arc::new(Metrics::default()),
        workers: Workers::default(),
        shutdown,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let app = crate::net::layers(super::router(state), &http, addr.ip());
    tokio::spawn(async move { crate::net::serve(listener, app, &http, std::future::pending()).await.unwrap() });
    TestServer { base, addr, dir, _shutdown: shutdown_tx, jobs, keys }
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
        "continue_from",
        "melody",
        "extend_stride",
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
    let params = crate::job::JobParams::new(item, 4.0);
    let other = crate::job::Job::new(params, "facebook/musicgen-small".into(), chrono::Utc::now());
    assert_eq!(server.jobs.enqueue(&other, 10).await.unwrap(), crate::store::Enqueued::Queued);
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
    assert_eq!(full.headers()["retry-after"], "1", "nothing runs: a place frees as soon as the worker claims");
    let (status, error) = error_of(full).await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("queue_full")));
    assert_eq!(server.jobs.count_by_status().await.unwrap()[&crate::job::JobStatus::Queued], 2);

    // A job that started 20 s ago and is a quarter done has 60 s to go: that is the wait.
    let started = chrono::Utc::now() - chrono::Duration::seconds(20);
    let running = server.jobs.claim_batch("tests", &["tiny".to_string()], 1, started).await.unwrap();
    server.jobs.set_progress(running[0].id, "tests", 0.25).await.unwrap();
    assert_eq!(post().await.unwrap().status(), StatusCode::ACCEPTED, "the claim freed a place");
    let full = post().await.unwrap();
    let wait: u64 = full.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((59..=62).contains(&wait), "Retry-After {wait}");
    assert!(error_of(full).await.1["message"].as_str().unwrap().contains(&format!("retry in {wait} s")));
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
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    for (path, method) in [("/api/v1/generate", "post"), ("/api/v1/jobs/{id}/audio", "get"), ("/api/v1/health", "get")]
    {
        let operation = &doc["paths"][path][method];
        assert!(operation["responses"]["401"].is_object() && operation["security"].is_array(), "{path}: {operation}");
    }
    assert!(doc["paths"]["/api/v1/openapi.json"]["get"]["responses"]["401"].is_null(), "the document is open");
    let body = &doc["components"]["schemas"]["GenerateBody"];
    assert_eq!(body["properties"]["duration"]["maximum"], 300.0);
    assert_eq!(body["properties"]["prompt"]["maxLength"], 2000);
    let required: Vec<&str> = body["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(required, ["prompt", "duration"], "{body}");
    assert_eq!(body["properties"]["prompt"]["type"], "string", "{body}");
    let job = &doc["components"]["schemas"]["JobView"];
    assert!(job["properties"]["real_time_factor"].is_object(), "{job}");
    assert!(job["properties"]["waiting_reason"].is_object(), "{job}");
    assert!(job["properties"]["continue_from"].is_object() && job["properties"]["extend_stride"].is_object(), "{job}");
    assert_eq!(body["properties"]["extend_stride"]["exclusiveMaximum"], 30.0, "{body}");
    assert_eq!(body["properties"]["melody"]["format"], "uuid", "{body}");
    assert!(job["properties"]["melody"].is_object(), "{job}");
    let models = &doc["components"]["schemas"]["ModelEntry"];
    assert_eq!(models["properties"]["melody"]["type"], "boolean", "{models}");
    assert_eq!(body["properties"]["continue_from"]["format"], "uuid", "{body}");

    let upload = &doc["paths"]["/api/v1/uploads"]["post"];
    let form = &upload["requestBody"]["content"]["multipart/form-data"]["schema"];
    assert_eq!(form["properties"]["file"]["format"], "binary", "{upload}");
    assert_eq!(form["required"], json!(["file"]), "{upload}");
    for status in ["201", "400", "413", "415"] {
        assert!(upload["responses"][status].is_object(), "{status} missing from {upload}");
    }
    assert!(doc["paths"]["/api/v1/uploads/{id}"]["get"]["responses"]["404"].is_object());
    let view = &doc["components"]["schemas"]["UploadView"];
    for field in ["id", "filename", "duration_secs", "sample_rate", "channels", "source_job", "created_at"] {
        assert!(view["properties"][field].is_object(), "{field} missing from {view}");
    }
}

/// `seconds` of a 440 Hz tone as a 16-bit mono WAV at `rate`.
fn tone_wav(seconds: f64, rate: u32) -> Vec<u8> {
    let spec =
        hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut bytes = std::io::Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut bytes, spec).unwrap();
    for i in 0..(seconds * rate as f64) as usize {
        let t = i as f64 / rate as f64;
        writer.write_sample(((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16).unwrap();
    }
    writer.finalize().unwrap();
    bytes.into_inner()
}

async fn upload(server: &TestServer, filename: &str, bytes: Vec<u8>) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string()));
    reqwest::Client::new().post(format!("{}/api/v1/uploads", server.base)).multipart(form).send().await.unwrap()
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_upload_is_checked_continued_and_deleted_with_its_last_job() {
    let server = start(10).await;
    let client = reqwest::Client::new();
    let response = upload(&server, "two seconds.wav", tone_wav(2.0, 16000)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let stored: Value = response.json().await.unwrap();
    let id = stored["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/v1/uploads/{id}"));
    assert_eq!(
        (stored["filename"].as_str(), stored["sample_rate"].as_u64(), stored["channels"].as_u64()),
        (Some("two seconds.wav"), Some(32000), Some(1)),
        "resampled to the model's rate and channels: {stored}"
    );
    assert!((stored["duration_secs"].as_f64().unwrap() - 2.0).abs() < 1e-3, "{stored}");
    assert_eq!(stored["source_job"], Value::Null);
    let fetched: Value = client.get(format!("{}{location}", server.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(fetched, stored);
    assert_eq!(files_in(&server.dir.path().join("uploads")), vec![format!("{id}.wav")]);
    assert!(files_in(&server.dir.path().join("incoming")).is_empty(), "the received file is removed");

    let generate = |body: Value| client.post(format!("{}/api/v1/generate", server.base)).json(&body).send();
    let (status, error) =
        error_of(generate(json!({"prompt": "p", "duration": 2, "continue_from": id})).await.unwrap()).await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("duration")), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("two seconds.wav is already 2.00 s") && message.contains("more than 2.00 s"), "{message}");

    let mut jobs = Vec::new();
    for stride in [10, 10] {
        let response = generate(json!({"prompt": "p", "duration": 6, "continue_from": id, "extend_stride": stride}));
        let job: Value = response.await.unwrap().json().await.unwrap();
        let continued = &job["continue_from"];
        assert_eq!(
            (continued["upload"].as_str(), &continued["source_job"]),
            (Some(id.as_str()), &Value::Null),
            "{job}"
        );
        assert_eq!(
            (continued["filename"].as_str(), job["extend_stride"].as_f64()),
            (Some("two seconds.wav"), Some(10.0))
        );
        assert!((continued["duration_secs"].as_f64().unwrap() - 2.0).abs() < 1e-3, "{job}");
        jobs.push(job["id"].as_str().unwrap().to_string());
    }
    for (i, job) in jobs.iter().enumerate() {
        let url = format!("{}/api/v1/jobs/{job}", server.base);
        assert_eq!(client.delete(&url).send().await.unwrap().status(), StatusCode::OK, "cancelled");
        assert_eq!(client.delete(&url).send().await.unwrap().status(), StatusCode::NO_CONTENT, "deleted");
        let after = client.get(format!("{}{location}", server.base)).send().await.unwrap();
        if i == 0 {
            assert_eq!(after.status(), StatusCode::OK, "another job still continues the upload");
        } else {
            let (status, error) = error_of(after).await;
            assert_eq!((status, error["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        }
    }
    assert!(files_in(&server.dir.path().join("uploads")).is_empty(), "the upload went with its last job");
}

#[tokio::test]
async fn a_refused_upload_names_the_file_and_the_problem_but_no_server_path() {
    let server = start(10).await;
    let data_dir = server.dir.path().to_string_lossy().into_owned();
    let cases = [
        ("empty.wav", Vec::new(), "empty.wav: the file is empty"),
        ("notes.mp3", b"these are not the bytes of an mp3".repeat(40), "notes.mp3: "),
        ("long.wav", tone_wav(31.0, 8000), "31.0 s long, more than the limit of 30 s"),
    ];
    for (name, bytes, needle) in cases {
        let (status, error) = error_of(upload(&server, name, bytes).await).await;
        assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("file")), "{name}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(needle) && !message.contains(&data_dir), "{name}: {message}");
    }
    let (status, error) = error_of(upload(&server, "big.wav", tone_wav(40.0, 16000)).await).await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("1.3 MB") && message.contains("up to 1.0 MB"), "{message}");
    let json = reqwest::Client::new().post(format!("{}/api/v1/uploads", server.base)).json(&json!({"file": "x"}));
    let (status, _) = error_of(json.send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(files_in(&server.dir.path().join("uploads")).is_empty());
    assert!(files_in(&server.dir.path().join("incoming")).is_empty());
}

#[tokio::test]
async fn a_melody_is_an_upload_or_a_job_and_only_a_melody_model_takes_one() {
    let text_only = start(10).await;
    let client = reqwest::Client::new();
    let models: Value =
        client.get(format!("{}/api/v1/models", text_only.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["models"][0]["melody"], false);
    let hum: Value = upload(&text_only, "hum.wav", tone_wav(2.0, 16000)).await.json().await.unwrap();
    let body = json!({"prompt": "p", "duration": 4, "melody": hum["id"]});
    let response = client.post(format!("{}/api/v1/generate", text_only.base)).json(&body).send().await.unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("melody")), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("tiny") && message.contains("--model facebook/musicgen-melody"), "{message}");

    let server = start_model(10, true).await;
    let models: Value =
        client.get(format!("{}/api/v1/models", server.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["models"][0]["melody"], true);
    let generate = |body: Value| client.post(format!("{}/api/v1/generate", server.base)).json(&body).send();
    let unknown = uuid::Uuid::new_v4();
    let (status, error) =
        error_of(generate(json!({"prompt": "p", "duration": 4, "melody": unknown})).await.unwrap()).await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("melody")), "{error}");
    assert!(error["message"].as_str().unwrap().contains(&format!("melody {unknown}: no upload or job")), "{error}");

    let hum: Value = upload(&server, "hum.wav", tone_wav(2.0, 16000)).await.json().await.unwrap();
    let hum_id = hum["id"].as_str().unwrap().to_string();
    let job: Value =
        generate(json!({"prompt": "p", "duration": 40, "melody": hum_id})).await.unwrap().json().await.unwrap();
    let melody = &job["melody"];
    assert_eq!(
        (melody["upload"].as_str(), melody["filename"].as_str(), &melody["source_job"], &job["continue_from"]),
        (Some(hum_id.as_str()), Some("hum.wav"), &Value::Null, &Value::Null),
        "{job}"
    );
    // A melody longer than the track is fine, and the same upload may be continued and followed at once.
    let both: Value = generate(json!({"prompt": "p", "duration": 3, "melody": hum_id, "continue_from": hum_id}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (both["melody"]["upload"].as_str(), both["continue_from"]["upload"].as_str()),
        (Some(hum_id.as_str()), Some(hum_id.as_str()))
    );

    // A job's track can be followed only once it is finished.
    let queued = job["id"].as_str().unwrap();
    let (status, error) =
        error_of(generate(json!({"prompt": "p", "duration": 4, "melody": queued})).await.unwrap()).await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("melody")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("only a completed job's track can be followed"), "{error}");

    // Deleting the jobs deletes the upload with the last of them.
    let url = |id: &Value| format!("{}/api/v1/jobs/{}", server.base, id.as_str().unwrap());
    for job in [&job, &both] {
        assert_eq!(client.delete(url(&job["id"])).send().await.unwrap().status(), StatusCode::OK, "cancelled");
        assert_eq!(client.delete(url(&job["id"])).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    }
    let gone = client.get(format!("{}/api/v1/uploads/{hum_id}", server.base)).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert!(files_in(&server.dir.path().join("uploads")).is_empty(), "the melody went with its last job");
}

async fn add_key(server: &TestServer, name: &str, admin: bool) -> (crate::keys::ApiKey, String) {
    let new = crate::keys::NewKey::generate(name, admin).unwrap();
    server.keys.insert_key(&new).await.unwrap();
    (new.key, new.token)
}

/// A request with an optional bearer token.
fn call(method: reqwest::Method, url: String, token: Option<&str>) -> reqwest::RequestBuilder {
    let request = reqwest::Client::new().request(method, url);
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

#[tokio::test]
async fn a_network_server_needs_a_key_and_each_key_sees_only_its_own() {
    let server =
        start_with(Options { auth: AuthPolicy { network: true, ..AuthPolicy::default() }, ..Options::default() }).await;
    let url = |path: &str| format!("{}{path}", server.base);
    use reqwest::Method;

    // No key exists yet: a network server still refuses, and says how to get one.
    let refused = call(Method::GET, url("/api/v1/jobs"), None).send().await.unwrap();
    assert_eq!(refused.headers()["www-authenticate"], "Bearer realm=\"dgx-music\"");
    let (status, error) = error_of(refused).await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    assert!(error["message"].as_str().unwrap().contains("dgx-music keys create"), "{error}");
    for open in ["/api/v1/openapi.json", "/", "/assets/app.js"] {
        assert_eq!(call(Method::GET, url(open), None).send().await.unwrap().status(), StatusCode::OK, "{open}");
    }
    for closed in ["/api/v1/health", "/api/v1/models", "/metrics", "/api/v1/metrics", "/api/v1/uploads/x"] {
        let status = call(Method::GET, url(closed), None).send().await.unwrap().status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{closed}");
    }

    let (alice, alice_token) = add_key(&server, "alice", false).await;
    let (_, bob_token) = add_key(&server, "bob", false).await;
    let (_, admin_token) = add_key(&server, "root", true).await;
    let (alice_t, bob_t, admin_t) = (Some(alice_token.as_str()), Some(bob_token.as_str()), Some(admin_token.as_str()));
    for (header, needle) in
        [("Bearer dgxm_0000", "not known"), ("Basic YTpi", "Bearer <key>"), ("Bearer ", "Bearer <key>")]
    {
        let response = reqwest::Client::new().get(url("/api/v1/jobs")).header("authorization", header).send();
        let (status, error) = error_of(response.await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}");
        assert!(error["message"].as_str().unwrap().contains(needle), "{header}: {error}");
    }

    let response = call(Method::POST, url("/api/v1/generate"), alice_t).json(&json!({"prompt": "p", "duration": 2}));
    let job: Value = response.send().await.unwrap().json().await.unwrap();
    let job_url = url(&format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()));
    let stored = server.jobs.get(job["id"].as_str().unwrap().parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.owner, Some(alice.id), "the job belongs to the key that made it");
    let hum: Value = {
        let part = reqwest::multipart::Part::bytes(tone_wav(2.0, 16000)).file_name("hum.wav");
        let form = reqwest::multipart::Form::new().part("file", part);
        call(Method::POST, url("/api/v1/uploads"), alice_t).multipart(form).send().await.unwrap().json().await.unwrap()
    };
    let upload_url = url(&format!("/api/v1/uploads/{}", hum["id"].as_str().unwrap()));

    let total = |token| async move {
        let page: Value = call(Method::GET, url("/api/v1/jobs"), token).send().await.unwrap().json().await.unwrap();
        page["total"].as_u64().unwrap()
    };
    assert_eq!((total(alice_t).await, total(bob_t).await, total(admin_t).await), (1, 0, 1));
    for (token, expected) in [(alice_t, StatusCode::OK), (bob_t, StatusCode::NOT_FOUND), (admin_t, StatusCode::OK)] {
        assert_eq!(call(Method::GET, job_url.clone(), token).send().await.unwrap().status(), expected);
        assert_eq!(call(Method::GET, upload_url.clone(), token).send().await.unwrap().status(), expected);
    }
    let events = call(Method::GET, format!("{job_url}/events"), bob_t).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::NOT_FOUND, "nor its events");
    assert_eq!(call(Method::DELETE, job_url.clone(), bob_t).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let borrowed = json!({"prompt": "p", "duration": 4, "continue_from": hum["id"]});
    let response = call(Method::POST, url("/api/v1/generate"), bob_t).json(&borrowed).send().await.unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("continue_from")), "{error}");
    assert_eq!(
        call(Method::GET, job_url.clone(), alice_t).send().await.unwrap().status(),
        StatusCode::OK,
        "still there"
    );

    // The page's cookie stands for the key where a browser cannot send the header.
    let session = call(Method::POST, url("/api/v1/session"), bob_t).send().await.unwrap();
    assert_eq!(session.status(), StatusCode::NO_CONTENT);
    let cookie = session.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains(&bob_token),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let with_cookie = reqwest::Client::new().get(url("/api/v1/jobs")).header("cookie", pair).send().await.unwrap();
    assert_eq!(with_cookie.status(), StatusCode::OK);

    // A revoked key is refused from its next request on, with the reason.
    assert!(server.keys.revoke_key(alice.id, chrono::Utc::now()).await.unwrap());
    let (status, error) = error_of(call(Method::GET, job_url, alice_t).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        error["message"].as_str().unwrap().contains("alice") && error["message"].as_str().unwrap().contains("revoked")
    );
}

#[tokio::test]
async fn a_loopback_server_is_open_until_a_key_exists_and_health_can_stay_public() {
    let server =
        start_with(Options { auth: AuthPolicy { public_health: true, ..AuthPolicy::default() }, ..Options::default() })
            .await;
    let url = |path: &str| format!("{}{path}", server.base);
    assert_eq!(reqwest::get(url("/api/v1/jobs")).await.unwrap().status(), StatusCode::OK, "no keys, loopback: open");
    let (_, token) = add_key(&server, "laptop", false).await;
    assert_eq!(reqwest::get(url("/api/v1/jobs")).await.unwrap().status(), StatusCode::UNAUTHORIZED, "a key closes it");
    assert_eq!(reqwest::get(url("/api/v1/health")).await.unwrap().status(), StatusCode::OK, "--public-health");
    assert_eq!(reqwest::get(url("/metrics")).await.unwrap().status(), StatusCode::UNAUTHORIZED, "metrics are not");
    let with_key = call(reqwest::Method::GET, url("/api/v1/jobs"), Some(&token)).send().await.unwrap();
    assert_eq!(with_key.status(), StatusCode::OK);

    let no_checks = start_with(Options {
        auth: AuthPolicy { disabled: true, network: true, ..AuthPolicy::default() },
        ..Options::default()
    })
    .await;
    add_key(&no_checks, "ignored", false).await;
    assert_eq!(
        reqwest::get(format!("{}/api/v1/jobs", no_checks.base)).await.unwrap().status(),
        StatusCode::OK,
        "--insecure-no-auth"
    );
}

#[tokio::test]
async fn one_key_cannot_flood_the_queue() {
    let server = start_with(Options { max_queue: 100, limits: Limits::new(3, 2), ..Options::default() }).await;
    let (_, alice) = add_key(&server, "alice", false).await;
    let (_, bob) = add_key(&server, "bob", false).await;
    let post = |token: &str| {
        call(reqwest::Method::POST, format!("{}/api/v1/generate", server.base), Some(token))
            .json(&json!({"prompt": "p", "duration": 300}))
            .send()
    };
    assert_eq!(post(&alice).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(post(&alice).await.unwrap().status(), StatusCode::ACCEPTED);
    // Two 300 s jobs of alice wait: her share. Nothing has run yet, so each audio second counts as one.
    let share = post(&alice).await.unwrap();
    let wait: u64 = share.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let (status, error) = error_of(share).await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")));
    assert!(error["message"].as_str().unwrap().contains("2 jobs waiting"), "{error}");
    assert_eq!(wait, 1, "her oldest job is next in line");
    // Her fourth request in a minute is over the rate, whatever the queue.
    let (status, error) = error_of(post(&alice).await.unwrap()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(error["message"].as_str().unwrap().contains("3 generations a minute"), "{error}");
    // Bob is not held back by alice, and waits behind her 600 s of audio if he fills his share.
    assert_eq!(post(&bob).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(post(&bob).await.unwrap().status(), StatusCode::ACCEPTED);
    let share = post(&bob).await.unwrap();
    assert_eq!(share.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(share.headers()["retry-after"], "600");
}

#[tokio::test]
async fn one_server_offers_several_models_and_each_job_names_its_own() {
    let others = vec![tiny_model("facebook/musicgen-melody", 1, true), tiny_model("/srv/ckpt/tiny-stereo", 2, false)];
    let server = start_with(Options { others, ..Options::default() }).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.base);
    let models: Value = client.get(url("/api/v1/models")).send().await.unwrap().json().await.unwrap();
    let listed: Vec<(&str, bool, bool, bool, bool)> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let flag = |name: &str| m[name].as_bool().unwrap();
            (m["id"].as_str().unwrap(), flag("default"), flag("stereo"), flag("melody"), flag("continuation"))
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("tiny", true, false, false, true),
            ("facebook/musicgen-melody", false, false, true, true),
            ("local/ckpt/tiny-stereo", false, true, false, true),
        ]
    );
    let doc: Value = client.get(url("/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    let offered = &doc["components"]["schemas"]["GenerateBody"]["properties"]["model"]["enum"];
    assert_eq!(offered, &json!(["tiny", "facebook/musicgen-melody", "local/ckpt/tiny-stereo", null]), "{doc}");
    let health: Value = client.get(url("/api/v1/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["model"], "tiny");
    assert_eq!(health["models"], json!(["tiny", "facebook/musicgen-melody", "local/ckpt/tiny-stereo"]));

    let generate = |body: Value| client.post(url("/api/v1/generate")).json(&body).send();
    let submit = |body: Value| async {
        let response = generate(body).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.json::<Value>().await.unwrap()
    };
    // No model: the first. A short name, a public id or the --model value pick the others.
    assert_eq!(submit(json!({"prompt": "p", "duration": 2})).await["model"], "tiny");
    let hum: Value = upload(&server, "hum.wav", tone_wav(2.0, 16000)).await.json().await.unwrap();
    let tune = submit(json!({"prompt": "p", "duration": 2, "model": "melody", "melody": hum["id"]})).await;
    assert_eq!((tune["model"].as_str(), &tune["waiting_reason"]), (Some("facebook/musicgen-melody"), &Value::Null));
    let wide = submit(json!({"prompt": "p", "duration": 2, "model": "local/ckpt/tiny-stereo"})).await;
    assert_eq!(wide["model"], "local/ckpt/tiny-stereo");
    assert_eq!(
        submit(json!({"prompt": "p", "duration": 2, "model": "/srv/ckpt/tiny-stereo"})).await["model"],
        wide["model"]
    );
    let stored = server.jobs.get(wide["id"].as_str().unwrap().parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.model, "/srv/ckpt/tiny-stereo", "the store keeps the canonical id");

    // A melody for a text model names the one that takes it; an unknown model lists the offered ones.
    let (status, error) =
        error_of(generate(json!({"prompt": "p", "duration": 2, "melody": hum["id"]})).await.unwrap()).await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("melody")));
    assert!(error["message"].as_str().unwrap().contains("\"model\": \"facebook/musicgen-melody\""), "{error}");
    let (status, error) =
        error_of(generate(json!({"prompt": "p", "duration": 2, "model": "large"})).await.unwrap()).await;
    assert_eq!((status, error["field"].as_str()), (StatusCode::BAD_REQUEST, Some("model")));
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("tiny, facebook/musicgen-melody, local/ckpt/tiny-stereo"), "{message}");
    assert!(!message.contains("/srv"), "no server path: {message}");
    let (_, error) = error_of(generate(json!({"prompt": "p", "duration": 2, "model": 3})).await.unwrap()).await;
    assert_eq!(error["field"], "model", "{error}");

    // An upload is kept with enough channels for the stereo model.
    assert_eq!(hum["channels"], 2, "{hum}");
}

mod edge;
