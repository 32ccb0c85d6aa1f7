//! Continuing audio through the API (issue 9): uploads, extending finished tracks, and what happens
//! to the stored audio afterwards.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{assert_error, audio_fixture, files_in, tone_wav, wav_pcm, Server, LONG_DURATION};

async fn get_json(server: &Server, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(server.url(path)).await.unwrap();
    (response.status(), response.json().await.unwrap())
}

fn seconds_of(wav: &[u8]) -> f64 {
    let (spec, samples) = wav_pcm(wav);
    samples.len() as f64 / spec.channels as f64 / spec.sample_rate as f64
}

#[tokio::test]
async fn audio_in_each_format_is_uploaded_checked_and_continued() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let (_, models) = get_json(&server, "/api/v1/models").await;
    let model = &models["models"][0];
    let mut ids = Vec::new();
    for name in [
        "sine_44k1_stereo.wav",
        "sine_44k1_stereo.flac",
        "sine_16k_mono.flac",
        "sine_44k1_stereo.mp3",
        "sine_16k_mono.ogg",
    ] {
        let response = server.upload(name, audio_fixture(name)).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{name}");
        let location = response.headers()["location"].to_str().unwrap().to_string();
        let upload: Value = response.json().await.unwrap();
        let id = upload["id"].as_str().unwrap().to_string();
        assert_eq!(location, format!("/api/v1/uploads/{id}"));
        assert_eq!(upload["filename"], name);
        // Stored as the model needs it: its rate, its channels (the fixture model is mono).
        assert_eq!((&upload["sample_rate"], &upload["channels"]), (&model["sample_rate"], &model["audio_channels"]));
        let seconds = upload["duration_secs"].as_f64().unwrap();
        // MP3 keeps its encoder delay and padding (up to one frame and the delay longer), Vorbis its last
        // packet's padding.
        let slack = match name.rsplit_once('.').unwrap().1 {
            "mp3" => 0.08,
            "ogg" => 0.01,
            _ => 0.002,
        };
        assert!(seconds >= 0.2 - 0.002 && seconds <= 0.2 + slack, "{name}: {upload}");
        assert_eq!(upload["source_job"], Value::Null);
        assert_eq!(get_json(&server, &location).await, (StatusCode::OK, upload.clone()));
        ids.push(id);
    }
    let mut expected: Vec<String> = ids.iter().map(|id| format!("{id}.wav")).collect();
    expected.sort();
    assert_eq!(files_in(&server.data_dir.join("uploads")), expected);
    assert!(files_in(&server.data_dir.join("incoming")).is_empty(), "received files are not kept");

    // A generation continuing an upload: `duration` is the whole track, the continued audio included.
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/generate"))
        .json(&json!({"prompt": "continue the tone", "duration": 2, "continue_from": ids[0], "seed": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await.unwrap();
    let continued = &job["continue_from"];
    assert_eq!(
        (continued["upload"].as_str(), &continued["source_job"]),
        (Some(ids[0].as_str()), &Value::Null),
        "{job}"
    );
    assert_eq!(continued["filename"], "sine_44k1_stereo.wav");
    assert!((continued["duration_secs"].as_f64().unwrap() - 0.2).abs() < 0.002, "{job}");
    assert_eq!((job["duration"].as_f64(), job["extend_stride"].as_f64()), (Some(2.0), Some(18.0)));
    let id = job["id"].as_str().unwrap();
    let done = server.wait_for(id, |j| j["status"] == "completed").await;
    assert_eq!(done["continue_from"], job["continue_from"], "the history keeps what the job continued");
    let seconds = seconds_of(&server.audio(id).await);
    assert!(
        (seconds - 2.0).abs() < 0.05 && (done["audio_duration"].as_f64().unwrap() - seconds).abs() < 1e-3,
        "{done}"
    );
    let (_, list) = get_json(&server, "/api/v1/jobs").await;
    assert_eq!(list["jobs"][0]["continue_from"], job["continue_from"]);
    server.stop().await;
}

#[tokio::test]
async fn bad_uploads_and_bad_continuations_get_a_json_error_naming_the_problem() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let client = reqwest::Client::new();
    let data_dir = server.data_dir.to_string_lossy().to_string();
    let wav = audio_fixture("sine_44k1_stereo.wav");
    let flac = audio_fixture("sine_44k1_stereo.flac");
    let cases = [
        ("empty.wav", Vec::new(), "empty.wav: the file is empty"),
        ("notes.txt", b"Shopping list: eggs, flour, an MP3 player.\n".repeat(50), "notes.txt: not an audio file"),
        ("cut.wav", wav[..wav.len() / 2].to_vec(), "cut.wav: truncated"),
        ("cut.flac", flac[..flac.len() / 2].to_vec(), "cut.flac: truncated"),
        ("long.wav", tone_wav(31.0, 8000), "long.wav: it is 31.0 s long, more than the limit of 30 s"),
    ];
    for (name, bytes, needle) in cases {
        let response = server.upload(name, bytes).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(
            (&body["error"]["code"], body["error"]["field"].as_str()),
            (&json!("invalid_request"), Some("file"))
        );
        assert!(message.contains(needle), "{name}: {needle:?} not in {message}");
        assert!(
            !message.contains(&data_dir) && !message.contains("incoming"),
            "{name}: a server path leaked: {message}"
        );
    }

    let form = |parts: Vec<(&'static str, &'static str)>| {
        parts.into_iter().fold(reqwest::multipart::Form::new(), |form, (field, name)| {
            form.part(field, reqwest::multipart::Part::bytes(audio_fixture("sine_16k_mono.flac")).file_name(name))
        })
    };
    let post_form = |form: reqwest::multipart::Form| client.post(server.url("/api/v1/uploads")).multipart(form).send();
    // An empty form is only its closing boundary, which multipart parsers call incomplete.
    assert_error(post_form(form(vec![])).await.unwrap(), 400, "invalid_request", None, "one field named file").await;
    let two = form(vec![("file", "a.flac"), ("file", "b.flac")]);
    assert_error(post_form(two).await.unwrap(), 400, "invalid_request", Some("file"), "one file per upload").await;
    let other = form(vec![("audio", "a.flac")]);
    assert_error(post_form(other).await.unwrap(), 400, "invalid_request", None, "\"audio\" is not accepted").await;
    let json_body = client.post(server.url("/api/v1/uploads")).json(&json!({"file": "riff.wav"})).send();
    assert_error(json_body.await.unwrap(), 415, "unsupported_media_type", None, "multipart/form-data").await;
    let no_boundary =
        client.post(server.url("/api/v1/uploads")).header("content-type", "multipart/form-data").body("x");
    assert_error(no_boundary.send().await.unwrap(), 400, "invalid_request", None, "boundary").await;

    let unknown = "3f1f6b51-0c1e-4a4e-9d7a-6c7f2f3e9b10";
    for path in [
        format!("/api/v1/uploads/{unknown}"),
        "/api/v1/uploads/riff.wav".into(),
        "/api/v1/uploads/..%2F..%2Fdgx-music.db".into(),
    ] {
        assert_error(client.get(server.url(&path)).send().await.unwrap(), 404, "not_found", None, "upload").await;
    }
    let generate = |body: Value| client.post(server.url("/api/v1/generate")).json(&body).send();
    let bad = [
        (
            json!({"prompt": "p", "duration": 5, "continue_from": unknown}),
            "continue_from",
            "no upload or job has this id",
        ),
        (json!({"prompt": "p", "duration": 5, "continue_from": "riff.wav"}), "continue_from", "not an id"),
        (json!({"prompt": "p", "duration": 5, "continue_from": 12}), "continue_from", "UUID"),
        (
            json!({"prompt": "p", "duration": 5, "extend_stride": 0}),
            "extend_stride",
            "above 0 and below the 30 s window",
        ),
        (json!({"prompt": "p", "duration": 5, "extend_stride": 30}), "extend_stride", "30 seconds must be above 0"),
        (json!({"prompt": "p", "duration": 5, "extend_stride": -1}), "extend_stride", "-1"),
        (json!({"prompt": "p", "duration": 5, "extend_stride": "x"}), "extend_stride", "below 30"),
    ];
    for (body, field, needle) in bad {
        assert_error(generate(body).await.unwrap(), 400, "invalid_request", Some(field), needle).await;
    }

    // A track can be extended once it is complete, and the total must exceed what it continues.
    let upload = server.upload_ok("tone.wav", tone_wav(2.5, 16000)).await;
    let too_short = json!({"prompt": "p", "duration": 2, "continue_from": upload["id"]});
    assert_error(
        generate(too_short).await.unwrap(),
        400,
        "invalid_request",
        Some("duration"),
        "tone.wav is already 2.50 s",
    )
    .await;
    let running = server.submit(json!({"prompt": "still running", "duration": LONG_DURATION})).await;
    let extend_running = json!({"prompt": "p", "duration": 150, "continue_from": running});
    assert_error(
        generate(extend_running).await.unwrap(),
        400,
        "invalid_request",
        Some("continue_from"),
        "only a completed job",
    )
    .await;
    client.delete(server.url(&format!("/api/v1/jobs/{running}"))).send().await.unwrap();
    let extend_cancelled = json!({"prompt": "p", "duration": 150, "continue_from": running});
    assert_error(generate(extend_cancelled).await.unwrap(), 400, "invalid_request", Some("continue_from"), "cancelled")
        .await;

    // Nothing above was stored but the one good upload, and nothing queued.
    assert_eq!(files_in(&server.data_dir.join("uploads")), vec![format!("{}.wav", upload["id"].as_str().unwrap())]);
    assert!(files_in(&server.data_dir.join("incoming")).is_empty());
    let (_, queued) = get_json(&server, "/api/v1/jobs?status=queued").await;
    assert_eq!(queued["total"], 0);
    // A client's bad file is the client's problem: the answer says it, the log has no error for it.
    assert!(!server.log().contains(" ERROR "), "{}", server.log());
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_upload_gets_413_with_its_size_and_the_limit() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &["--max-upload-mb", "1"]).await;
    let client = reqwest::Client::new();
    let big = tone_wav(47.0, 16000);
    assert!(big.len() > 1_500_000 && big.len() < 1_550_000, "{}", big.len());
    // With a Content-Length the size is known before the body is read.
    let response = server.upload("big.wav", big.clone()).await;
    assert_eq!(response.headers()["connection"], "close");
    assert_error(
        response,
        413,
        "payload_too_large",
        None,
        "the upload is 1.5 MB; this server accepts files up to 1.0 MB",
    )
    .await;
    // A chunked body is counted as it streams in.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .file_name("streamed.wav");
    let response =
        client.post(server.url("/api/v1/uploads")).multipart(reqwest::multipart::Form::new().part("file", part)).send();
    assert_error(
        response.await.unwrap(),
        413,
        "payload_too_large",
        None,
        "is over 1.0 MB; this server accepts files up to 1.0 MB",
    )
    .await;
    // Just under the limit is fine.
    let small = tone_wav(29.0, 16000);
    assert!(small.len() < 1_000_000);
    server.upload_ok("small.wav", small).await;
    assert_eq!(files_in(&server.data_dir.join("uploads")).len(), 1);
    assert!(files_in(&server.data_dir.join("incoming")).is_empty(), "refused uploads are not kept");
    server.stop().await;
}

#[tokio::test]
async fn extending_a_finished_track_keeps_it_and_goes_on_even_if_it_is_deleted() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let client = reqwest::Client::new();
    // Longer than one window: the extension keeps its first 5 s untouched and continues its last 30 s.
    let first = server.submit(json!({"prompt": "a slow build", "duration": 35, "seed": 1})).await;
    server.wait_for(&first, |j| j["status"] == "completed").await;
    let first_wav = server.audio(&first).await;

    let blocker = server.submit(json!({"prompt": "blocker", "duration": LONG_DURATION})).await;
    server.wait_for(&blocker, |j| j["status"] == "running").await;
    let response = client
        .post(server.url("/api/v1/generate"))
        .json(
            &json!({"prompt": "a slow build", "duration": 40, "continue_from": first, "seed": 2, "extend_stride": 12}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let extended: Value = response.json().await.unwrap();
    let continued = &extended["continue_from"];
    assert_eq!(continued["source_job"], first.as_str(), "{extended}");
    assert_eq!(continued["filename"], format!("dgx-music-{first}.wav"));
    assert!((continued["duration_secs"].as_f64().unwrap() - 35.0).abs() < 0.05, "{extended}");
    assert_eq!((extended["duration"].as_f64(), extended["extend_stride"].as_f64()), (Some(40.0), Some(12.0)));
    let snapshot = continued["upload"].as_str().unwrap().to_string();
    assert_ne!(snapshot, first, "the track is copied into an upload of its own");
    let (status, upload) = get_json(&server, &format!("/api/v1/uploads/{snapshot}")).await;
    assert_eq!((status, &upload["source_job"]), (StatusCode::OK, &json!(first)), "{upload}");

    // The source goes away before the extension runs; the copy stays.
    assert_eq!(client.delete(server.url(&format!("/api/v1/jobs/{first}"))).send().await.unwrap().status(), 204);
    assert_eq!(get_json(&server, &format!("/api/v1/uploads/{snapshot}")).await.0, StatusCode::OK);
    client.delete(server.url(&format!("/api/v1/jobs/{blocker}"))).send().await.unwrap();
    let id = extended["id"].as_str().unwrap();
    let done = server.wait_for(id, |j| j["status"] == "completed").await;
    assert_eq!(done["continue_from"], extended["continue_from"]);
    let wav = server.audio(id).await;
    assert!((seconds_of(&wav) - 40.0).abs() < 0.05, "{done}");
    let (spec, samples) = wav_pcm(&wav);
    let (first_spec, first_samples) = wav_pcm(&first_wav);
    assert_eq!(spec, first_spec);
    let head = 5 * spec.sample_rate as usize * spec.channels as usize;
    assert!(samples[..head] == first_samples[..head], "the first 5 s of the old track are kept sample for sample");

    // A track within one window is the prompt as a whole.
    let short = server.submit(json!({"prompt": "short", "duration": 2, "seed": 3})).await;
    server.wait_for(&short, |j| j["status"] == "completed").await;
    let longer = server.submit(json!({"prompt": "short", "duration": 3.5, "continue_from": short})).await;
    let done = server.wait_for(&longer, |j| j["status"] == "completed").await;
    assert!((seconds_of(&server.audio(&longer).await) - 3.5).abs() < 0.05, "{done}");
    assert!((done["continue_from"]["duration_secs"].as_f64().unwrap() - 2.0).abs() < 0.05, "{done}");

    // Each extension's copy goes with it.
    for job in [id, longer.as_str()] {
        assert_eq!(client.delete(server.url(&format!("/api/v1/jobs/{job}"))).send().await.unwrap().status(), 204);
    }
    assert_error(
        client.get(server.url(&format!("/api/v1/uploads/{snapshot}"))).send().await.unwrap(),
        404,
        "not_found",
        None,
        &snapshot,
    )
    .await;
    assert!(files_in(&server.data_dir.join("uploads")).is_empty());
    server.stop().await;
}

#[tokio::test]
async fn an_upload_goes_with_its_last_job_and_an_unused_one_expires() {
    // Unused uploads expire after 7.2 s here, 24 h by default.
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &["--unused-upload-hours", "0.002"]).await;
    let client = reqwest::Client::new();
    let used =
        server.upload_ok("used.flac", audio_fixture("sine_44k1_stereo.flac")).await["id"].as_str().unwrap().to_string();
    let unused =
        server.upload_ok("unused.ogg", audio_fixture("sine_16k_mono.ogg")).await["id"].as_str().unwrap().to_string();
    let uploaded = Instant::now();
    let jobs = [
        server.submit(json!({"prompt": "one", "duration": 1.5, "continue_from": used, "seed": 1})).await,
        server.submit(json!({"prompt": "two", "duration": 1.5, "continue_from": used, "seed": 2})).await,
    ];
    for job in &jobs {
        server.wait_for(job, |j| j["status"] == "completed").await;
    }
    loop {
        let (status, _) = get_json(&server, &format!("/api/v1/uploads/{unused}")).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(uploaded.elapsed() < Duration::from_secs(60), "the unused upload was never swept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(uploaded.elapsed() >= Duration::from_secs(7), "swept before it expired");
    assert_eq!(files_in(&server.data_dir.join("uploads")), vec![format!("{used}.wav")]);
    assert_eq!(get_json(&server, &format!("/api/v1/uploads/{used}")).await.0, StatusCode::OK, "a job still uses it");

    assert_eq!(client.delete(server.url(&format!("/api/v1/jobs/{}", jobs[0]))).send().await.unwrap().status(), 204);
    assert_eq!(get_json(&server, &format!("/api/v1/uploads/{used}")).await.0, StatusCode::OK, "the other job uses it");
    assert_eq!(client.delete(server.url(&format!("/api/v1/jobs/{}", jobs[1]))).send().await.unwrap().status(), 204);
    assert_eq!(get_json(&server, &format!("/api/v1/uploads/{used}")).await.0, StatusCode::NOT_FOUND);
    assert!(files_in(&server.data_dir.join("uploads")).is_empty());
    let gone = json!({"prompt": "three", "duration": 2, "continue_from": used});
    let response = client.post(server.url("/api/v1/generate")).json(&gone).send().await.unwrap();
    assert_error(response, 400, "invalid_request", Some("continue_from"), "no upload or job has this id").await;
    server.stop().await;
}

#[tokio::test]
async fn uploads_survive_a_restart_and_leftovers_of_a_crash_are_removed() {
    let data_dir = tempfile::tempdir().unwrap().keep();
    let server = Server::start(&data_dir, &[]).await;
    let upload = server.upload_ok("riff.mp3", audio_fixture("sine_44k1_stereo.mp3")).await;
    let id = upload["id"].as_str().unwrap().to_string();
    let job = server.submit(json!({"prompt": "before", "duration": 1, "continue_from": id, "seed": 9})).await;
    server.wait_for(&job, |j| j["status"] == "completed").await;
    assert!(server.stop().await.success());

    // What a crash mid-upload can leave: a file being received, a WAV being written, a WAV without a record.
    std::fs::write(data_dir.join("incoming/0b6f6c2e-8f0e-4a51-9d7c-2f1f6f0c3a10.mp3"), b"ID3").unwrap();
    std::fs::write(data_dir.join("uploads/1c7f7d3f-9f1f-4b62-8e8d-3f2f7f1d4b21.wav.tmp"), b"RIFF").unwrap();
    std::fs::write(data_dir.join("uploads/2d8f8e4f-af2f-4c73-9f9e-4f3f8f2e5c32.wav"), b"RIFF").unwrap();

    let server = Server::start(&data_dir, &[]).await;
    assert_eq!(get_json(&server, &format!("/api/v1/uploads/{id}")).await, (StatusCode::OK, upload));
    assert_eq!(files_in(&data_dir.join("uploads")), vec![format!("{id}.wav")]);
    assert!(files_in(&data_dir.join("incoming")).is_empty());
    let (_, before) = get_json(&server, &format!("/api/v1/jobs/{job}")).await;
    assert_eq!(before["continue_from"]["upload"], id.as_str());
    let again = server.submit(json!({"prompt": "after", "duration": 1, "continue_from": id, "seed": 9})).await;
    server.wait_for(&again, |j| j["status"] == "completed").await;
    server.stop().await;
}
