//! Starting, stopping and talking to a real `dgx-music serve` process.

use std::io::{BufRead, BufReader, Cursor};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Seconds of audio for a job that must still be running while a test acts on it.
pub const LONG_DURATION: f64 = 120.0;
const WAIT: Duration = Duration::from_secs(600);

pub fn fixture() -> String {
    fixture_checkpoint("tiny-mono")
}

/// The canonical path of the checkpoint of fixture `name` (crates/musicgen/tests/fixtures/<name>).
pub fn fixture_checkpoint(name: &str) -> String {
    let dir = fixture_dir(name).join("checkpoint");
    dir.canonicalize().unwrap_or_else(|e| panic!("fixture {}: {e}", dir.display())).display().to_string()
}

/// How the server names a fixture checkpoint to clients: `local/<fixture>/checkpoint`, no path.
pub fn fixture_id(name: &str) -> String {
    format!("local/{name}/checkpoint")
}

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../musicgen/tests/fixtures").join(name)
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub base: String,
    pub data_dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_model(data_dir, &fixture(), extra).await
    }

    /// A server of another checkpoint.
    pub async fn start_model(data_dir: &Path, model: &str, extra: &[&str]) -> Server {
        Server::start_on(data_dir, model, "127.0.0.1", extra).await
    }

    /// A server bound to `host`.
    pub async fn start_on(data_dir: &Path, model: &str, host: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dgx-music"))
            .args(["serve", "--host", host, "--port", "0", "--device", "cpu", "--model", model])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dgx-music serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = port_tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = tokio::task::spawn_blocking(move || port_rx.recv_timeout(Duration::from_secs(300)))
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("the server did not start:\n{}", log.lock().unwrap().join("\n")));
        let mut addr: SocketAddr = addr.parse().unwrap();
        // A server on all interfaces is reached, as a browser on this machine would reach it, on loopback
        // (it refuses Host 0.0.0.0: that is no address of it).
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Server { child: Some(child), addr, base: format!("http://{addr}"), data_dir: data_dir.to_path_buf(), log }
    }

    /// Submits `body`, waits for the job to end, and returns it (completed) with its 16-bit samples.
    pub async fn finished(&self, body: Value) -> (Value, Vec<i16>) {
        let id = self.submit(body).await;
        let job = self.wait_for(&id, |job| job["status"] != "queued" && job["status"] != "running").await;
        assert_eq!(job["status"], "completed", "{job}\n{}", self.log());
        let (_, samples) = wav_pcm(&self.audio(&id).await);
        (job, samples)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log as it grows, readable after the server is stopped.
    pub fn log_handle(&self) -> Arc<Mutex<Vec<String>>> {
        self.log.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Posts `bytes` as the `file` field of a multipart form named `filename`.
    pub async fn upload(&self, filename: &str, bytes: Vec<u8>) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string());
        let form = reqwest::multipart::Form::new().part("file", part);
        reqwest::Client::new().post(self.url("/api/v1/uploads")).multipart(form).send().await.unwrap()
    }

    /// Uploads a file that must be accepted and returns its JSON.
    pub async fn upload_ok(&self, filename: &str, bytes: Vec<u8>) -> Value {
        let response = self.upload(filename, bytes).await;
        let status = response.status();
        let upload: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{filename} -> {upload}");
        upload
    }

    /// The WAV of a completed job.
    pub async fn audio(&self, id: &str) -> Vec<u8> {
        let response = reqwest::get(self.url(&format!("/api/v1/jobs/{id}/audio"))).await.unwrap();
        assert_eq!(response.status(), 200, "audio of {id}");
        response.bytes().await.unwrap().to_vec()
    }

    /// Posts a generation and returns its id.
    pub async fn submit(&self, body: Value) -> String {
        let response = reqwest::Client::new().post(self.url("/api/v1/generate")).json(&body).send().await.unwrap();
        let status = response.status();
        let job: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{body} -> {job}");
        job["id"].as_str().unwrap().to_string()
    }

    pub async fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let client = reqwest::Client::new();
        let result = tokio::time::timeout(WAIT, poll(&client, &self.base, id, done, WAIT)).await;
        result.unwrap_or_else(|_| panic!("job {id} timed out; log:\n{}", self.log()))
    }

    /// Every job event of a job's SSE stream, until the server ends it.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let mut response = reqwest::get(self.url(&format!("/api/v1/jobs/{id}/events"))).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let mut text = String::new();
        let deadline = Instant::now() + WAIT;
        while let Some(chunk) =
            tokio::time::timeout_at(deadline.into(), response.chunk()).await.expect("SSE timed out").unwrap()
        {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        text.split("\n\n")
            .filter(|block| block.lines().any(|l| l == "event: job"))
            .map(|block| {
                let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                serde_json::from_str(&data).unwrap()
            })
            .collect()
    }

    /// SIGTERM, then the exit status.
    pub async fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let terminated = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(terminated.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server ignored SIGTERM; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `serve` on `port` expecting it to stop by itself: its exit status, its stderr and how long it ran.
pub async fn serve_until_exit(data_dir: &Path, port: u16, extra: &[&str]) -> (ExitStatus, String, Duration) {
    let started = Instant::now();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dgx-music"))
        .args(["serve", "--host", "127.0.0.1", "--device", "cpu", "--model", &fixture()])
        .args(["--port", &port.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start dgx-music serve");
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the server was expected to stop by itself")
        .unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned(), started.elapsed())
}

pub async fn poll(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let job: Value = client.get(format!("{base}/api/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        if done(&job) {
            return job;
        }
        let status = job["status"].as_str().unwrap_or_default();
        assert!(!["completed", "failed", "cancelled"].contains(&status), "job ended unexpectedly: {job}");
        assert!(Instant::now() < deadline, "job {id} never got there: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the status and the fixed error JSON; `needle` must appear in the message.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str, field: Option<&str>, needle: &str) {
    let url = response.url().to_string();
    assert_eq!(response.status().as_u16(), status, "{url}");
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"), "{url}");
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], code, "{url}: {body}");
    assert_eq!(error["field"].as_str(), field, "{url}: {body}");
    assert!(error["message"].as_str().unwrap().contains(needle), "{url}: {needle:?} not in {body}");
}

/// A request sent byte for byte, for targets an HTTP client would normalise.
pub async fn raw_request(addr: SocketAddr, method: &str, target: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Names of the files in the audio directory, sorted.
pub fn audio_files(data_dir: &Path) -> Vec<String> {
    files_in(&data_dir.join("audio"))
}

/// Names of the files in a directory, sorted (none when it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|dir| dir.map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// A file of crates/musicgen/tests/fixtures/audio (0.2 s of a 440 Hz sine; tools/make_audio_fixtures.sh).
pub fn audio_fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../musicgen/tests/fixtures/audio").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `seconds` of a 440 Hz tone as a 16-bit mono WAV at `rate`.
pub fn tone_wav(seconds: f64, rate: u32) -> Vec<u8> {
    let spec =
        hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut bytes = Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut bytes, spec).unwrap();
    for i in 0..(seconds * rate as f64) as usize {
        let t = i as f64 / rate as f64;
        writer.write_sample(((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16).unwrap();
    }
    writer.finalize().unwrap();
    bytes.into_inner()
}

/// `dgx-music generate prompt --model model` greedy (top-k 1, CFG 3, seed 0) on the CPU for
/// `duration` seconds with `extra` arguments, as 16-bit samples; the requests the service tests
/// send with the same settings must give the same.
pub fn cli_pcm(model: &str, prompt: &str, duration: f64, extra: &[&std::ffi::OsStr], out: &Path) -> Vec<i16> {
    let output = Command::new(env!("CARGO_BIN_EXE_dgx-music"))
        .args(["generate", prompt, "--model", model])
        .args(extra)
        .args(["--duration", &duration.to_string(), "--top-k", "1", "--cfg-coef", "3", "--seed", "0"])
        .args(["--device", "cpu", "--quiet", "-o"])
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    wav_pcm(&std::fs::read(out).unwrap()).1
}

/// Sample-exact equality, reported as a count rather than two dumps of samples.
pub fn assert_same_pcm(ours: &[i16], cli: &[i16], what: &str) {
    let differing = ours.iter().zip(cli).filter(|(a, b)| a != b).count();
    assert!(
        ours.len() == cli.len() && differing == 0,
        "{what}: {} vs {} samples, {differing} differ",
        ours.len(),
        cli.len()
    );
}

pub fn wav_pcm(bytes: &[u8]) -> (hound::WavSpec, Vec<i16>) {
    let reader = hound::WavReader::new(Cursor::new(bytes)).expect("a valid WAV file");
    let spec = reader.spec();
    let samples = reader.into_samples::<i16>().collect::<Result<Vec<_>, _>>().expect("complete samples");
    (spec, samples)
}
