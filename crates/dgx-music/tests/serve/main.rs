//! `dgx-music serve` as users meet it: the real binary, the real tiny fixture model on the CPU,
//! a temporary data directory, HTTP on an ephemeral port.

mod edge;
mod formats;
mod harness;
mod keys;
mod melody;
mod models;
mod radio;
mod stream;
mod uploads;

use std::collections::HashSet;
use std::time::Duration;

use harness::{assert_error, audio_files, raw_request, wav_pcm, Server, LONG_DURATION};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn the_seed_example_runs_end_to_end() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let client = reqwest::Client::new();

    let health: Value = client.get(server.url("/api/v1/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["device"], "cpu");
    assert_eq!(health["model"], harness::fixture_id("tiny-mono"));
    assert!(health["version"].is_string() && health["dtype"].is_string());
    assert_eq!((health["queue_depth"].as_u64(), health["running"].as_u64()), (Some(0), Some(0)));

    let models: Value = client.get(server.url("/api/v1/models")).send().await.unwrap().json().await.unwrap();
    let model = &models["models"][0];
    let id = harness::fixture_id("tiny-mono");
    assert_eq!((model["id"].as_str(), model["loaded"].as_bool()), (Some(id.as_str()), Some(true)));
    assert!(model["sample_rate"].as_u64().unwrap() > 0 && model["audio_channels"].as_u64() == Some(1));

    let response = client
        .post(server.url("/api/v1/generate"))
        .header("Content-Type", "application/json")
        // The seed's request as written: 16 s also keeps the job running long enough to watch its progress.
        .body(r#"{"prompt": "ambient piano", "duration": 16}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/v1/jobs/{id}"));
    assert_eq!(job["status"], "queued");
    assert_eq!((job["prompt"].as_str(), job["duration"].as_f64()), (Some("ambient piano"), Some(16.0)));
    assert_eq!(
        (job["top_k"].as_u64(), job["top_p"].as_f64(), job["temperature"].as_f64(), job["cfg_coef"].as_f64()),
        (Some(250.min(model["vocab_size"].as_u64().unwrap())), Some(0.0), Some(1.0), Some(3.0))
    );
    assert!(job["seed"].is_u64() && job["created_at"].is_string() && job["audio_url"].is_null());

    // Progress events, then the final state, then the end of the stream.
    let events = server.events(&id).await;
    assert!(events.len() >= 2, "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last["status"], "completed", "{events:?}");
    let progress: Vec<f64> = events.iter().map(|e| e["progress"].as_f64().unwrap()).collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress goes back: {progress:?}");
    assert!(events.iter().any(|e| e["status"] == "running"), "{events:?}");

    let done: Value = client.get(server.url(&location)).send().await.unwrap().json().await.unwrap();
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["audio_url"], format!("/api/v1/jobs/{id}/audio"));
    for field in ["started_at", "finished_at", "generation_time", "real_time_factor"] {
        assert!(!done[field].is_null(), "{field} in {done}");
    }
    assert!((done["audio_duration"].as_f64().unwrap() - 16.0).abs() < 0.05, "{done}");

    let audio = client.get(server.url(&format!("/api/v1/jobs/{id}/audio"))).send().await.unwrap();
    assert_eq!(audio.status(), StatusCode::OK);
    assert_eq!(audio.headers()["content-type"], "audio/wav");
    assert_eq!(audio.headers()["accept-ranges"], "bytes");
    let bytes = audio.bytes().await.unwrap();
    let (spec, samples) = wav_pcm(&bytes);
    assert_eq!(spec.sample_rate as u64, model["sample_rate"].as_u64().unwrap());
    assert!((samples.len() as f64 / spec.sample_rate as f64 - 16.0).abs() < 0.05);

    // Players seek with Range requests.
    let part =
        client.get(server.url(&format!("/api/v1/jobs/{id}/audio"))).header("Range", "bytes=4-11").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], format!("bytes 4-11/{}", bytes.len()));
    assert_eq!(part.bytes().await.unwrap(), bytes.slice(4..12));
    let beyond = client
        .get(server.url(&format!("/api/v1/jobs/{id}/audio")))
        .header("Range", format!("bytes={}-", bytes.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let list: Value = client.get(server.url("/api/v1/jobs")).send().await.unwrap().json().await.unwrap();
    assert_eq!((list["total"].as_u64(), list["limit"].as_u64(), list["offset"].as_u64()), (Some(1), Some(20), Some(0)));
    assert_eq!(list["jobs"][0]["id"], id.as_str());
    let none: Value = client.get(server.url("/api/v1/jobs?status=failed")).send().await.unwrap().json().await.unwrap();
    assert_eq!((none["total"].as_u64(), none["jobs"].as_array().map(Vec::len)), (Some(0), Some(0)));

    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("dgx_music_jobs{status=\"completed\"} 1"), "{metrics}");
    let labels = format!("device=\"cpu\",model=\"{}\"", harness::fixture_id("tiny-mono"));
    assert!(
        metrics.contains("dgx_music_queue_depth 0")
            && metrics.contains(&format!("dgx_music_generation_seconds_count{{{labels}}} 1"))
            && metrics.contains("dgx_music_queue_wait_seconds_count{model=\"local/tiny-mono/checkpoint\"} 1"),
        "{metrics}"
    );
    let api_metrics = client.get(server.url("/api/v1/metrics")).send().await.unwrap();
    assert!(api_metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));

    let openapi: Value = client.get(server.url("/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    for path in [
        "/api/v1/generate",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/audio",
        "/api/v1/jobs/{id}/events",
        "/api/v1/health",
        "/api/v1/models",
        "/api/v1/metrics",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }

    // Deleting a finished job removes it and its file.
    let deleted = client.delete(server.url(&location)).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_error(client.get(server.url(&location)).send().await.unwrap(), 404, "not_found", None, &id).await;
    assert_error(
        client.get(server.url(&format!("{location}/audio"))).send().await.unwrap(),
        404,
        "not_found",
        None,
        &id,
    )
    .await;
    assert!(audio_files(&server.data_dir).is_empty());
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_json_error_naming_the_problem() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let client = reqwest::Client::new();
    let vocab = {
        let models: Value = client.get(server.url("/api/v1/models")).send().await.unwrap().json().await.unwrap();
        models["models"][0]["vocab_size"].as_u64().unwrap()
    };
    let post = |body: String| {
        client.post(server.url("/api/v1/generate")).header("Content-Type", "application/json").body(body).send()
    };

    let long_prompt = "a".repeat(2001);
    let top_k_range = format!("1..={vocab}");
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"prompt": "", "duration": 5}), "prompt", "empty"),
        (json!({"prompt": "  \n", "duration": 5}), "prompt", "empty"),
        (json!({"prompt": long_prompt, "duration": 5}), "prompt", "2000"),
        (json!({"duration": 5}), "prompt", "required"),
        (json!({"prompt": "p", "duration": 0}), "duration", "1..=300"),
        (json!({"prompt": "p", "duration": 301}), "duration", "1..=300"),
        (json!({"prompt": "p", "duration": "x"}), "duration", "1..=300"),
        (json!({"prompt": "p"}), "duration", "required"),
        (json!({"prompt": "p", "duration": 5, "top_k": 0}), "top_k", &top_k_range),
        (json!({"prompt": "p", "duration": 5, "top_k": vocab + 1}), "top_k", &top_k_range),
        (json!({"prompt": "p", "duration": 5, "top_p": -0.1}), "top_p", "[0, 1]"),
        (json!({"prompt": "p", "duration": 5, "top_p": 1.1}), "top_p", "[0, 1]"),
        (json!({"prompt": "p", "duration": 5, "temperature": 0}), "temperature", "> 0"),
        (json!({"prompt": "p", "duration": 5, "cfg_coef": -1}), "cfg_coef", ">= 0"),
        (json!({"prompt": "p", "duration": 5, "seed": -3}), "seed", "0..="),
    ];
    for (body, field, needle) in cases {
        let response = post(body.to_string()).await.unwrap();
        assert_error(response, 400, "invalid_request", Some(field), needle).await;
    }
    assert_error(
        post("{\"prompt\": \"p\", \"duration\": ".into()).await.unwrap(),
        400,
        "invalid_request",
        None,
        "malformed JSON",
    )
    .await;
    assert_error(post("[1, 2]".into()).await.unwrap(), 400, "invalid_request", None, "JSON object").await;
    assert_error(
        post("{\"prompt\": \"p\", \"duration\": 5, \"steps\": 3}".into()).await.unwrap(),
        400,
        "invalid_request",
        None,
        "steps",
    )
    .await;

    let plain = client
        .post(server.url("/api/v1/generate"))
        .header("Content-Type", "text/plain")
        .body(r#"{"prompt": "p", "duration": 5}"#)
        .send();
    assert_error(plain.await.unwrap(), 415, "unsupported_media_type", None, "application/json").await;
    let untyped = client.post(server.url("/api/v1/generate")).body(r#"{"prompt": "p", "duration": 5}"#).send();
    assert_error(untyped.await.unwrap(), 415, "unsupported_media_type", None, "application/json").await;
    let huge = json!({"prompt": "p".repeat(200_000), "duration": 5}).to_string();
    let too_large = post(huge).await.unwrap();
    // The server stops reading the body and closes; the header keeps the client off the dying connection.
    assert_eq!(too_large.headers()["connection"], "close");
    assert_error(too_large, 413, "payload_too_large", None, "KiB").await;

    let unknown = "3f1f6b51-0c1e-4a4e-9d7a-6c7f2f3e9b10";
    for path in [
        format!("/api/v1/jobs/{unknown}"),
        format!("/api/v1/jobs/{unknown}/audio"),
        format!("/api/v1/jobs/{unknown}/events"),
        "/api/v1/jobs/not-a-uuid".into(),
        "/api/v1/jobs/not-a-uuid/audio".into(),
        "/api/v1/jobs/..%2F..%2Fdgx-music.db/audio".into(),
        "/api/v1/jobs/%2e%2e/audio".into(),
        "/api/v1/nothing".into(),
    ] {
        assert_error(client.get(server.url(&path)).send().await.unwrap(), 404, "not_found", None, "").await;
    }
    assert_error(
        client.delete(server.url(&format!("/api/v1/jobs/{unknown}"))).send().await.unwrap(),
        404,
        "not_found",
        None,
        unknown,
    )
    .await;
    assert_error(
        client.delete(server.url("/api/v1/jobs/..%2F..%2Fdgx-music.db")).send().await.unwrap(),
        404,
        "not_found",
        None,
        "UUID",
    )
    .await;
    // Literal dot segments, which HTTP clients would normalise away, sent as raw bytes.
    for target in [
        "/api/v1/jobs/../../dgx-music.db",
        "/api/v1/jobs/../../../etc/passwd/audio",
        "/api/v1/jobs/%2e%2e%2f%2e%2e%2fdgx-music.db/audio",
    ] {
        let (status, body) = raw_request(server.addr, "GET", target).await;
        assert_eq!(status, 404, "{target}: {body}");
        assert!(body.contains("\"not_found\"") && !body.contains("SQLite"), "{target}: {body}");
    }
    assert!(server.data_dir.join("dgx-music.db").exists());

    assert_error(
        client.get(server.url("/api/v1/jobs?status=done")).send().await.unwrap(),
        400,
        "invalid_request",
        Some("status"),
        "completed",
    )
    .await;
    assert_error(
        client.get(server.url("/api/v1/jobs?limit=0")).send().await.unwrap(),
        400,
        "invalid_request",
        Some("limit"),
        "1..=100",
    )
    .await;
    assert_error(
        client.get(server.url("/api/v1/jobs?limit=abc")).send().await.unwrap(),
        400,
        "invalid_request",
        Some("limit"),
        "1..=100",
    )
    .await;
    assert_error(
        client.get(server.url("/api/v1/jobs?offset=-1")).send().await.unwrap(),
        400,
        "invalid_request",
        Some("offset"),
        "integer",
    )
    .await;
    assert_error(
        client.put(server.url("/api/v1/generate")).send().await.unwrap(),
        405,
        "method_not_allowed",
        None,
        "PUT",
    )
    .await;

    // Nothing above was queued.
    let list: Value = client.get(server.url("/api/v1/jobs")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["total"], 0);
    server.stop().await;
}

#[tokio::test]
async fn a_running_job_can_be_cancelled() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let client = reqwest::Client::new();
    let long = server.submit(json!({"prompt": "a long drone", "duration": LONG_DURATION, "seed": 1})).await;
    let running = server.wait_for(&long, |j| j["status"] == "running" && j["progress"].as_f64().unwrap() > 0.0).await;
    assert_eq!(running["queue_position"], Value::Null);

    let response = client.delete(server.url(&format!("/api/v1/jobs/{long}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(!cancelled["finished_at"].is_null());

    // The engine stops within a step: the next job runs right away and completes.
    let next = server.submit(json!({"prompt": "short", "duration": 1})).await;
    let done = server.wait_for(&next, |j| j["status"] == "completed").await;
    assert_eq!(done["error"], Value::Null);
    let after: Value =
        client.get(server.url(&format!("/api/v1/jobs/{long}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!((after["status"].as_str(), after["audio_url"].is_null()), (Some("cancelled"), true));
    assert!(after["progress"].as_f64().unwrap() < 1.0, "{after}");
    assert_error(
        client.get(server.url(&format!("/api/v1/jobs/{long}/audio"))).send().await.unwrap(),
        409,
        "conflict",
        None,
        "cancelled",
    )
    .await;
    assert_eq!(audio_files(&server.data_dir), vec![format!("{next}.wav")]);

    // A queued job is cancelled without ever running; a cancelled job is then deleted.
    let blocker = server.submit(json!({"prompt": "blocker", "duration": LONG_DURATION})).await;
    let queued = server.submit(json!({"prompt": "waits", "duration": 2})).await;
    let response = client.delete(server.url(&format!("/api/v1/jobs/{queued}"))).send().await.unwrap();
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!((cancelled["status"].as_str(), cancelled["started_at"].is_null()), (Some("cancelled"), true));
    let deleted = client.delete(server.url(&format!("/api/v1/jobs/{queued}"))).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    client.delete(server.url(&format!("/api/v1/jobs/{blocker}"))).send().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn history_and_audio_survive_a_restart_and_sigterm_requeues_the_running_job() {
    let data_dir = tempfile::tempdir().unwrap().keep();
    let server = Server::start(&data_dir, &[]).await;
    let client = reqwest::Client::new();
    let first = server.submit(json!({"prompt": "first", "duration": 2, "seed": 11})).await;
    server.wait_for(&first, |j| j["status"] == "completed").await;
    let audio =
        client.get(server.url(&format!("/api/v1/jobs/{first}/audio"))).send().await.unwrap().bytes().await.unwrap();
    let long = server.submit(json!({"prompt": "interrupted", "duration": LONG_DURATION, "seed": 12})).await;
    server.wait_for(&long, |j| j["status"] == "running").await;
    let stopped = server.stop().await;
    assert!(stopped.success(), "SIGTERM must end the server cleanly: {stopped:?}");

    let server = Server::start(&data_dir, &[]).await;
    let list: Value = client.get(server.url("/api/v1/jobs")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = list["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![long.as_str(), first.as_str()], "newest first");
    let again =
        client.get(server.url(&format!("/api/v1/jobs/{first}/audio"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(again, audio);
    let resumed = server.wait_for(&long, |j| j["status"] == "completed").await;
    assert_eq!(resumed["seed"], 12);
    server.stop().await;
}

#[tokio::test]
async fn a_killed_server_finishes_the_job_after_restart_without_serving_a_partial_file() {
    let data_dir = tempfile::tempdir().unwrap().keep();
    let mut server = Server::start(&data_dir, &[]).await;
    let id = server.submit(json!({"prompt": "crash test", "duration": LONG_DURATION, "seed": 5})).await;
    server.wait_for(&id, |j| j["status"] == "running" && j["progress"].as_f64().unwrap() > 0.05).await;
    server.kill9();
    assert!(!audio_files(&data_dir).contains(&format!("{id}.wav")));

    let server = Server::start(&data_dir, &[]).await;
    let job: Value = reqwest::get(server.url(&format!("/api/v1/jobs/{id}"))).await.unwrap().json().await.unwrap();
    assert!(job["status"] == "queued" || job["status"] == "running", "{job}");
    let done = server.wait_for(&id, |j| j["status"] == "completed").await;
    let bytes = reqwest::get(server.url(&format!("/api/v1/jobs/{id}/audio"))).await.unwrap().bytes().await.unwrap();
    let (spec, samples) = wav_pcm(&bytes);
    let seconds = samples.len() as f64 / spec.sample_rate as f64;
    assert!(
        (seconds - done["audio_duration"].as_f64().unwrap()).abs() < 1e-3 && (seconds - LONG_DURATION).abs() < 0.05
    );
    assert_eq!(audio_files(&data_dir), vec![format!("{id}.wav")], "no temporary file is left");
    server.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_clients_all_get_their_audio() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &["--max-batch", "4"]).await;
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let base = server.base.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let body = json!({"prompt": format!("client {i}"), "duration": 1 + i % 2, "seed": i});
            let response = client.post(format!("{base}/api/v1/generate")).json(&body).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
            let job =
                harness::poll(&client, &base, &id, |j| j["status"] == "completed", Duration::from_secs(600)).await;
            let wav = client.get(format!("{base}/api/v1/jobs/{id}/audio")).send().await.unwrap().bytes().await.unwrap();
            let (spec, samples) = wav_pcm(&wav);
            assert!((samples.len() as f64 / spec.sample_rate as f64 - (1 + i % 2) as f64).abs() < 0.05);
            (id, job)
        }));
    }
    let mut ids = HashSet::new();
    let mut batched = false;
    let mut starts = HashSet::new();
    for task in tasks {
        let (id, job) = task.await.unwrap();
        ids.insert(id);
        batched |= !starts.insert(job["started_at"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 20);
    assert!(batched, "20 jobs queued at once on one worker must share batches");
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &["--max-queue", "2", "--max-batch", "1"]).await;
    let client = reqwest::Client::new();
    let running = server.submit(json!({"prompt": "runs", "duration": LONG_DURATION})).await;
    server.wait_for(&running, |j| j["status"] == "running").await;
    let waiting = [
        server.submit(json!({"prompt": "q1", "duration": 1})).await,
        server.submit(json!({"prompt": "q2", "duration": 1})).await,
    ];
    let waiting_job: Value =
        client.get(server.url(&format!("/api/v1/jobs/{}", waiting[1]))).send().await.unwrap().json().await.unwrap();
    assert_eq!(waiting_job["queue_position"], 1);
    let full =
        client.post(server.url("/api/v1/generate")).json(&json!({"prompt": "q3", "duration": 1})).send().await.unwrap();
    let retry_after: u64 = full.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_error(full, 429, "queue_full", None, "full").await;
    let health: Value = client.get(server.url("/api/v1/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!((health["queue_depth"].as_u64(), health["running"].as_u64()), (Some(2), Some(1)));
    client.delete(server.url(&format!("/api/v1/jobs/{running}"))).send().await.unwrap();
    for id in &waiting {
        server.wait_for(id, |j| j["status"] == "completed").await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_batch_produces_the_same_audio_as_each_job_alone() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &["--max-batch", "4"]).await;
    let client = reqwest::Client::new();
    let bodies = [
        json!({"prompt": "calm strings", "duration": 2, "seed": 1}),
        json!({"prompt": "fast drums and bass", "duration": 2, "seed": 2, "top_k": 10, "temperature": 0.7}),
        json!({"prompt": "x", "duration": 2, "seed": 3, "top_p": 0.9, "cfg_coef": 1.5}),
    ];
    // Hold the worker with a long job so that the three queue up and run as one batch.
    let blocker = server.submit(json!({"prompt": "blocker", "duration": LONG_DURATION})).await;
    server.wait_for(&blocker, |j| j["status"] == "running").await;
    let mut batched = Vec::new();
    for body in &bodies {
        batched.push(server.submit(body.clone()).await);
    }
    client.delete(server.url(&format!("/api/v1/jobs/{blocker}"))).send().await.unwrap();
    let mut started = HashSet::new();
    let mut batched_audio = Vec::new();
    for id in &batched {
        let job = server.wait_for(id, |j| j["status"] == "completed").await;
        started.insert(job["started_at"].as_str().unwrap().to_string());
        batched_audio.push(
            client.get(server.url(&format!("/api/v1/jobs/{id}/audio"))).send().await.unwrap().bytes().await.unwrap(),
        );
    }
    assert_eq!(started.len(), 1, "the three jobs ran as one batch");
    for (body, batched) in bodies.iter().zip(&batched_audio) {
        let alone = server.submit(body.clone()).await;
        server.wait_for(&alone, |j| j["status"] == "completed").await;
        let audio =
            client.get(server.url(&format!("/api/v1/jobs/{alone}/audio"))).send().await.unwrap().bytes().await.unwrap();
        assert!(audio == *batched, "{body}: batched audio differs from the same job alone");
    }
    server.stop().await;
}

/// Copies the data directory release 0.1 left (see crates/server/tests/fixtures/v0.1-data/README.md).
pub(crate) fn v0_1_data_dir() -> (std::path::PathBuf, Vec<Value>) {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/tests/fixtures/v0.1-data");
    let data_dir = tempfile::tempdir().unwrap().keep();
    std::fs::copy(fixture.join("dgx-music.db"), data_dir.join("dgx-music.db")).unwrap();
    std::fs::create_dir(data_dir.join("audio")).unwrap();
    for file in std::fs::read_dir(fixture.join("audio")).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), data_dir.join("audio").join(file.file_name())).unwrap();
    }
    let rows = std::fs::read_to_string(fixture.join("jobs-v0.1.json")).unwrap();
    (data_dir, serde_json::from_str(&rows).unwrap())
}

#[tokio::test]
async fn a_data_directory_of_release_0_1_keeps_its_jobs_and_audio() {
    let (data_dir, rows) = v0_1_data_dir();
    let fixture_audio =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/tests/fixtures/v0.1-data/audio");
    let statuses: Vec<&str> = rows.iter().map(|row| row["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["completed", "completed", "failed", "cancelled", "queued", "queued"], "the fixture's jobs");
    let server = Server::start(&data_dir, &[]).await;
    let client = reqwest::Client::new();

    let list: Value = client.get(server.url("/api/v1/jobs?limit=100")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = list["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    let old_ids: Vec<&str> = rows.iter().rev().map(|row| row["id"].as_str().unwrap()).collect();
    assert_eq!(ids, old_ids, "every job, newest first");

    let mut queued_position = 0;
    for row in &rows {
        let id = row["id"].as_str().unwrap();
        let job: Value =
            client.get(server.url(&format!("/api/v1/jobs/{id}"))).send().await.unwrap().json().await.unwrap();
        for field in ["status", "prompt", "top_k", "seed", "created_at", "started_at", "finished_at"] {
            assert_eq!(job[field], row[field], "{field} of {job}");
        }
        // 0.1 wrote a path into a failure; the file name is what clients see of it now.
        let error = row["error"].as_str().map(|e| e.replace("/tmp/tmp.9Ls4zgYmSo/audio/", ""));
        assert_eq!(job["error"].as_str(), error.as_deref(), "{job}");
        // Release 0.1 recorded the checkpoint's absolute path; clients see its last two names.
        assert_eq!(job["model"], "local/tmp.9Ls4zgYmSo.model/tiny-mono", "{job}");
        for field in ["duration", "top_p", "temperature", "cfg_coef", "progress", "audio_duration", "generation_time"] {
            match (job[field].as_f64(), row[field].as_f64()) {
                (Some(now), Some(then)) => {
                    assert!((now - then).abs() <= 1e-9 * then.abs().max(1.0), "{field} of {job}")
                }
                (now, then) => assert_eq!(now, then, "{field} of {job}"),
            }
        }
        match job["status"].as_str().unwrap() {
            "completed" => {
                let served = client
                    .get(server.url(&format!("/api/v1/jobs/{id}/audio")))
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let stored = std::fs::read(fixture_audio.join(format!("{id}.wav"))).unwrap();
                assert!(served == stored, "the audio of {id} is served as it was stored");
            }
            "queued" => {
                // The directory it was queued for is gone; this server runs another model.
                assert_eq!(job["queue_position"], queued_position, "{job}");
                queued_position += 1;
                let reason = job["waiting_reason"].as_str().unwrap_or_else(|| panic!("no waiting_reason in {job}"));
                assert!(
                    reason.contains("queued for model local/tmp.9Ls4zgYmSo.model/tiny-mono")
                        && reason.contains(&format!("runs {}", harness::fixture_id("tiny-mono")))
                        && reason.contains("--model set to that checkpoint directory"),
                    "{reason}"
                );
                assert!(!reason.contains("/tmp/") && !reason.contains(&harness::fixture()), "no server path: {reason}");
            }
            _ => assert_eq!(job["waiting_reason"], Value::Null, "{job}"),
        }
    }

    // Jobs of this server's model run meanwhile; the old ones keep waiting, untouched.
    let fresh = server.submit(json!({"prompt": "after the upgrade", "duration": 1, "seed": 7})).await;
    let done = server.wait_for(&fresh, |j| j["status"] == "completed").await;
    let id = harness::fixture_id("tiny-mono");
    assert_eq!((done["model"].as_str(), &done["waiting_reason"]), (Some(id.as_str()), &Value::Null));
    let queued: Value =
        client.get(server.url("/api/v1/jobs?status=queued")).send().await.unwrap().json().await.unwrap();
    assert_eq!(queued["total"], 2, "{queued}");
    let health: Value = client.get(server.url("/api/v1/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!((health["queue_depth"].as_u64(), health["running"].as_u64()), (Some(2), Some(0)));
    server.stop().await;

    // The upgraded database opens again as it is (the migration ran once).
    let server = Server::start(&data_dir, &[]).await;
    let list: Value = client.get(server.url("/api/v1/jobs?limit=100")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["total"].as_u64(), Some(rows.len() as u64 + 1));
    server.stop().await;
}
