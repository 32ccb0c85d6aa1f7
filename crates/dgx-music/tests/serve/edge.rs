//! The server as a neighbour on a network sees it: one server per data directory, a port in use,
//! slow clients and SIGTERM, damaged databases, no server path in any answer, JSON logs.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::harness::{self, serve_until_exit, Server, LONG_DURATION};

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_exits_naming_the_first_ones_pid() {
    let data_dir = tempfile::tempdir().unwrap().keep();
    let first = Server::start(&data_dir, &[]).await;
    let (status, log, _) = serve_until_exit(&data_dir, 0, &[]).await;
    assert!(!status.success(), "{log}");
    assert!(log.contains(&format!("pid {}", first.pid())) && log.contains("--data-dir"), "{log}");
    assert!(!log.contains("loading model") && !log.contains("queued again"), "it touched the store: {log}");
    let health = reqwest::get(first.url("/api/v1/health")).await.unwrap();
    assert_eq!(health.status(), 200, "the first server goes on");
    assert!(first.stop().await.success());
    // The lock goes with its process: the directory is free again.
    Server::start(&data_dir, &[]).await.stop().await;
}

#[tokio::test]
async fn a_port_in_use_fails_at_once_with_one_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (status, log, took) = serve_until_exit(&tempfile::tempdir().unwrap().keep(), port, &[]).await;
    assert!(!status.success(), "{log}");
    assert_eq!(log.matches("cannot listen on").count(), 1, "one message: {log}");
    assert!(log.contains(&format!("127.0.0.1:{port}")) && log.contains("--port"), "{log}");
    assert!(!log.contains("loading model"), "the port is checked before the model loads: {log}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test]
async fn sigterm_ends_event_streams_at_once_and_half_sent_requests_within_the_grace_period() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let id = server.submit(json!({"prompt": "a long one", "duration": LONG_DURATION})).await;
    server.wait_for(&id, |job| job["status"] == "running").await;
    let mut events = reqwest::get(server.url(&format!("/api/v1/jobs/{id}/events"))).await.unwrap();
    assert_eq!(events.status(), 200);
    let stream_end = tokio::spawn(async move {
        loop {
            match events.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(Instant::now()),
                Err(err) => return Err(err.to_string()),
            }
        }
    });
    // Half a request head, and a full head with half its body.
    let mut half_head = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    half_head.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Wait: ").await.unwrap();
    let mut half_body = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /api/v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"prompt\": ";
    half_body.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = server.log_handle();
    let terminated = Instant::now();
    let status = server.stop().await;
    let exited = terminated.elapsed();
    assert!(status.success(), "{status:?}");
    let grace = dgx_music_server::SHUTDOWN_GRACE;
    assert!(exited < grace + Duration::from_secs(5), "exited {exited:?} after SIGTERM");
    let ended = stream_end.await.unwrap().expect("the event stream ends cleanly");
    assert!(ended.duration_since(terminated) < Duration::from_secs(3), "the stream ended only with the process");
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("their connections are dropped"), "the half-sent body was cut at the deadline:\n{log}");
}

#[tokio::test]
async fn an_empty_or_unreadable_database_stops_the_server_naming_the_file_and_the_fix() {
    for (what, bytes) in [("empty", Vec::new()), ("not a database", b"no SQLite here. ".repeat(512))] {
        let data_dir = tempfile::tempdir().unwrap().keep();
        let db = data_dir.join("dgx-music.db");
        std::fs::write(&db, &bytes).unwrap();
        let (status, log, _) = serve_until_exit(&data_dir, 0, &[]).await;
        assert!(!status.success(), "{what}: {log}");
        assert!(log.contains(&db.display().to_string()) && log.contains("move it away"), "{what}: {log}");
        assert!(!log.contains("listening on"), "{what}: {log}");
        assert_eq!(std::fs::read(&db).unwrap(), bytes, "{what}: the file is kept as it was");
    }
}

/// Every string in a JSON value, keys included.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out)
        }),
        _ => {}
    }
}

#[tokio::test]
async fn no_answer_names_a_server_path() {
    // Release 0.1's directory brings jobs of a checkpoint directory this server does not run.
    let (data_dir, _) = crate::v0_1_data_dir();
    let server = Server::start(&data_dir, &[]).await;
    let client = reqwest::Client::new();
    let job = server.submit(json!({"prompt": "paths", "duration": 1, "seed": 3})).await;
    server.wait_for(&job, |j| j["status"] == "completed").await;
    let upload = server.upload_ok("tone.wav", harness::tone_wav(1.0, 32000)).await;
    let upload = upload["id"].as_str().unwrap().to_string();
    let bad_upload = server.upload("broken.wav", b"RIFF....WAVEfmt ".to_vec()).await;
    let mut answers = vec![("POST /uploads (bad)".to_string(), bad_upload.text().await.unwrap())];
    for path in [
        "/api/v1/health".to_string(),
        "/api/v1/models".into(),
        "/api/v1/jobs?limit=100".into(),
        format!("/api/v1/jobs/{job}"),
        format!("/api/v1/jobs/{job}/events"),
        format!("/api/v1/uploads/{upload}"),
        "/api/v1/jobs/not-a-uuid".into(),
        "/api/v1/nothing-here".into(),
        "/metrics".into(),
        "/api/v1/openapi.json".into(),
    ] {
        let response = client.get(server.url(&path)).send().await.unwrap();
        let headers = format!("{:?}", response.headers());
        answers.push((path, format!("{headers}\n{}", response.text().await.unwrap())));
    }
    for body in [json!({"prompt": "x", "duration": 1, "melody": upload}), json!({"prompt": 1})] {
        let response = client.post(server.url("/api/v1/generate")).json(&body).send().await.unwrap();
        answers.push((format!("POST /generate {body}"), response.text().await.unwrap()));
    }
    let forbidden = [data_dir.display().to_string(), harness::fixture(), "/tmp/".into()];
    for (what, text) in &answers {
        let mut found: Vec<String> = match serde_json::from_str::<Value>(text) {
            Ok(value) => {
                let mut all = Vec::new();
                strings(&value, &mut all);
                all
            }
            Err(_) => vec![text.clone()],
        };
        found.push(text.clone());
        for path in &forbidden {
            assert!(!found.iter().any(|s| s.contains(path.as_str())), "{what} names {path}:\n{text}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn json_logs_carry_each_request_with_its_id() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &["--log-format", "json"]).await;
    let response =
        reqwest::Client::new().get(server.url("/api/v1/health")).header("x-request-id", "probe-7").send().await;
    assert_eq!(response.unwrap().headers()["x-request-id"], "probe-7");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        let lines: Vec<Value> = log.lines().map(|line| serde_json::from_str(line).expect(line)).collect();
        let logged = lines.iter().find(|line| line["span"]["id"] == "probe-7");
        if let Some(line) = logged {
            assert_eq!(line["span"]["path"], "/api/v1/health", "{line}");
            assert_eq!(line["fields"]["status"], 200, "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no log line of request probe-7 in\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

/// A tmpfs of `size` mounted on `dir` while it lives (root with CAP_SYS_ADMIN only; `None` elsewhere).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status();
        mounted.is_ok_and(|status| status.success()).then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Fills the file system: a file of every byte it takes.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_job_and_the_upload_saying_so_without_a_path() {
    let data_dir = tempfile::tempdir().unwrap().keep();
    let (Some(audio), Some(incoming)) =
        (Tmpfs::mount(&data_dir.join("audio"), "1m"), Tmpfs::mount(&data_dir.join("incoming"), "1m"))
    else {
        // The router tests inject ENOSPC through the AudioStore trait on every machine.
        eprintln!("cannot mount a tmpfs here (it needs root): the full disk is checked only by the router tests");
        return;
    };
    let server = Server::start(&data_dir, &[]).await;
    audio.fill();
    let id = server.submit(json!({"prompt": "no room", "duration": 1, "seed": 1})).await;
    let failed = server.wait_for(&id, |job| job["status"] != "queued" && job["status"] != "running").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("disk is full") && !error.contains('/'), "{error}");
    assert!(server.log().contains(&data_dir.join("audio").display().to_string()), "the log names the path");

    // An upload is received into incoming/: full too. The body (12.8 MB) is larger than the socket buffers,
    // so it is still being sent when the first write fails: the server reads the rest before it
    // answers, or the client would see a broken pipe instead of the answer.
    incoming.fill();
    let response = server.upload("tone.wav", harness::tone_wav(200.0, 32000)).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (507, Some("insufficient_storage")), "{body}");
    assert!(!body.to_string().contains(&data_dir.display().to_string()), "{body}");
    server.stop().await;
}
