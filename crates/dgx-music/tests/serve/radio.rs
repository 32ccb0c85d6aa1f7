//! `GET /radio`: an endless track while one listens, its prompt changed through `PUT /radio/{id}`,
//! one station at a time, queued jobs waiting for it and running once its listener leaves.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{assert_error, Server};

/// Reads `response` until more than `n` bytes are in.
async fn read_past(response: &mut reqwest::Response, bytes: &mut Vec<u8>, n: usize) {
    while bytes.len() <= n {
        let chunk = tokio::time::timeout(Duration::from_secs(120), response.chunk())
            .await
            .expect("the radio stalled")
            .unwrap()
            .expect("the radio ended");
        bytes.extend_from_slice(&chunk);
    }
}

#[tokio::test]
async fn the_radio_plays_across_windows_takes_a_new_prompt_and_frees_the_worker_when_left() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let client = reqwest::Client::new();
    assert_error(
        client.get(server.url("/api/v1/radio")).send().await.unwrap(),
        400,
        "invalid_request",
        Some("prompt"),
        "required",
    )
    .await;
    assert_error(
        client.get(server.url("/api/v1/radio?prompt=piano&model=nope")).send().await.unwrap(),
        400,
        "invalid_request",
        Some("model"),
        "not one this server runs",
    )
    .await;

    let mut radio = client.get(server.url("/api/v1/radio?prompt=ambient%20piano")).send().await.unwrap();
    assert_eq!(radio.status(), StatusCode::OK);
    assert_eq!(radio.headers()["content-type"], "audio/wav");
    let id = radio.headers()["x-radio-id"].to_str().unwrap().to_string();
    let mut bytes = Vec::new();
    read_past(&mut radio, &mut bytes, 44 + 3 * 32000 * 2).await;
    assert_eq!((&bytes[..4], &bytes[8..12], &bytes[36..40]), (&b"RIFF"[..], &b"WAVE"[..], &b"data"[..]));
    assert_eq!(&bytes[40..44], &[0xFF; 4], "an endless track's header has no length");
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 1, "the model's channels");
    assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 32000, "the model's rate");

    assert_error(
        client.get(server.url("/api/v1/radio?prompt=drums")).send().await.unwrap(),
        409,
        "conflict",
        None,
        "one station at a time",
    )
    .await;
    let job = server.submit(json!({"prompt": "after the radio", "duration": 1, "seed": 2})).await;
    let waiting = server.wait_for(&job, |j| !j["waiting_reason"].is_null()).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert!(waiting["waiting_reason"].as_str().unwrap().contains("radio"), "{waiting}");

    let station = server.url(&format!("/api/v1/radio/{id}"));
    let changed = client.put(&station).json(&json!({"prompt": "fast drums"})).send().await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!((changed["id"].as_str(), changed["prompt"].as_str()), (Some(id.as_str()), Some("fast drums")));
    let empty = client.put(&station).json(&json!({"prompt": " "})).send().await.unwrap();
    assert_error(empty, 400, "invalid_request", Some("prompt"), "empty").await;
    let unknown = server.url("/api/v1/radio/0b6f6c2e-8f0e-4a51-9d7c-2f1f6f0c3a10");
    assert_error(
        client.put(&unknown).json(&json!({"prompt": "x"})).send().await.unwrap(),
        404,
        "not_found",
        None,
        "no radio station",
    )
    .await;

    // Past the first 30 s window: the next one follows the new prompt and the stream goes on.
    read_past(&mut radio, &mut bytes, 44 + 34 * 32000 * 2).await;
    assert!(server.log().contains("the radio's next window follows \"fast drums\""), "{}", server.log());
    drop(radio);

    // The listener left: generation stops and the queued job runs.
    let done = server.wait_for(&job, |j| j["status"] == "completed").await;
    assert_eq!(done["waiting_reason"], Value::Null);
    assert!(server.log().contains("the radio stops after"), "{}", server.log());
    assert_error(
        client.put(&station).json(&json!({"prompt": "x"})).send().await.unwrap(),
        404,
        "not_found",
        None,
        "no radio station",
    )
    .await;
    let again = client.get(server.url("/api/v1/radio?prompt=strings")).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "a new station may start once the last one ended");
    drop(again);
    server.stop().await;
}
