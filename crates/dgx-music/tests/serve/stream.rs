//! `GET /jobs/{id}/stream`: a running job's audio arrives while it is made, for a client that comes
//! early and one that comes late, and it is the stored track up to the one documented difference
//! (the stream's gain is fixed on its first audible piece, the file's on the whole track).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{assert_error, wav_pcm, Server, LONG_DURATION};

const HEADER: usize = 44;

/// A stream being read, with what it said when it was opened.
struct Reader {
    response: reqwest::Response,
    bytes: Vec<u8>,
}

impl Reader {
    async fn open(server: &Server, id: &str) -> Reader {
        let response = reqwest::get(server.url(&format!("/api/v1/jobs/{id}/stream"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "stream of {id}");
        assert_eq!(response.headers()["content-type"], "audio/wav");
        Reader { response, bytes: Vec::new() }
    }

    /// Reads until more than `n` bytes are in.
    async fn read_past(&mut self, n: usize) {
        while self.bytes.len() <= n {
            let chunk = tokio::time::timeout(Duration::from_secs(120), self.response.chunk())
                .await
                .expect("the stream stalled")
                .unwrap()
                .expect("the stream ended early");
            self.bytes.extend_from_slice(&chunk);
        }
    }

    async fn rest(mut self) -> Vec<u8> {
        while let Some(chunk) = self.response.chunk().await.unwrap() {
            self.bytes.extend_from_slice(&chunk);
        }
        self.bytes
    }
}

async fn job(server: &Server, id: &str) -> Value {
    reqwest::get(server.url(&format!("/api/v1/jobs/{id}"))).await.unwrap().json().await.unwrap()
}

/// The gain ratio `g_stream / g_file` that maps the file onto the stream, and the worst misfit in the
/// soft clip's domain: both are `tanh(g·x)` of the same samples `x`, so `atanh` of each is `g·x`.
/// Samples near full scale, where `atanh` magnifies the 16-bit step, are left out.
fn gain_fit(stream: &[i16], file: &[i16]) -> (f64, f64, usize) {
    let unclip = |s: i16| (f64::from(s) / 32768.0).atanh();
    let pairs: Vec<(f64, f64)> = stream
        .iter()
        .zip(file)
        .filter(|(&s, &f)| s.unsigned_abs() < 29_000 && f.unsigned_abs() < 29_000)
        .map(|(&s, &f)| (unclip(s), unclip(f)))
        .collect();
    let ratio = pairs.iter().map(|(s, f)| s * f).sum::<f64>() / pairs.iter().map(|(_, f)| f * f).sum::<f64>();
    let misfit = pairs.iter().map(|(s, f)| (s - ratio * f).abs()).fold(0.0, f64::max);
    (ratio, misfit, pairs.len())
}

/// Checks a stream of a whole track against the stored file: the same header, the first `head`
/// samples identical (an extended track's head is sent as stored), the rest one gain apart.
fn assert_is_the_track_up_to_gain(stream: &[u8], file: &[u8], head: usize, what: &str) {
    assert_eq!(stream.len(), file.len(), "{what}: the stream is as long as the file");
    assert_eq!(&stream[..HEADER], &file[..HEADER], "{what}: the stream's header is the file's");
    let (_, streamed) = wav_pcm(stream);
    let (_, stored) = wav_pcm(file);
    assert_eq!(&streamed[..head], &stored[..head], "{what}: the head is sent as stored");
    let (ratio, misfit, used) = gain_fit(&streamed[head..], &stored[head..]);
    eprintln!("{what}: stream/file gain {ratio:.4}, worst misfit {misfit:.2e} over {used} samples");
    assert!(used * 10 > (stored.len() - head) * 9, "{what}: only {used} samples below full scale");
    assert!(ratio.is_finite() && ratio > 0.0, "{what}: gain ratio {ratio}");
    // One 16-bit step below 29000/32768 is at most 1/(32768·(1−0.885²)) ≈ 1.4e-4 after atanh.
    assert!(misfit < 1e-3, "{what}: the stream is not the file at one gain (worst misfit {misfit})");
}

#[tokio::test]
async fn a_running_job_streams_to_early_and_late_listeners_and_equals_its_file_up_to_the_gain() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let id = server.submit(json!({"prompt": "a long drone", "duration": LONG_DURATION, "seed": 3})).await;
    let mut early = Reader::open(&server, &id).await;
    early.read_past(HEADER).await;
    let now = job(&server, &id).await;
    assert_eq!(now["status"], "running", "audio arrives while the job runs: {now}");

    let made = server.wait_for(&id, |j| j["audio_seconds_ready"].as_f64().unwrap() >= 8.0).await;
    let mut late = Reader::open(&server, &id).await;
    // Joined mid-job: the first bytes are everything made so far, not only what comes next.
    late.read_past(HEADER + 8 * 32000 * 2).await;
    let now = job(&server, &id).await;
    assert_eq!(now["status"], "running", "the late listener also hears it before it ends: {now}");
    assert!(made["audio_seconds_ready"].as_f64().unwrap() < LONG_DURATION, "{made}");

    let (early, late) = (early.rest().await, late.rest().await);
    let done = server.wait_for(&id, |j| j["status"] == "completed").await;
    assert_eq!(done["audio_seconds_ready"], LONG_DURATION, "{done}");
    assert_eq!(early, late, "every listener gets the same stream");
    let file = server.audio(&id).await;
    assert_is_the_track_up_to_gain(&early, &file, 0, "120 s job");

    // Once completed, the stream is the stored file.
    let after = Reader::open(&server, &id).await.rest().await;
    assert!(after == file, "a completed job's stream is GET /audio byte for byte");
    server.stop().await;
}

#[tokio::test]
async fn an_extended_track_streams_its_head_first_queued_jobs_wait_and_events_count_the_audio() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let first = server.submit(json!({"prompt": "ambient piano", "duration": 32, "seed": 5})).await;
    server.wait_for(&first, |j| j["status"] == "completed").await;
    let blocker = server.submit(json!({"prompt": "blocker", "duration": 10, "seed": 7})).await;
    let extended =
        server.submit(json!({"prompt": "ambient piano", "duration": 34, "continue_from": first, "seed": 6})).await;
    // Queued behind the blocker: its stream answers once it runs.
    let listen = async {
        let mut reader = Reader::open(&server, &extended).await;
        assert_eq!(job(&server, &blocker).await["status"], "completed", "the stream waited for the job ahead");
        reader.read_past(HEADER).await;
        reader.rest().await
    };
    let (events, streamed) = tokio::join!(server.events(&extended), listen);
    // Each piece is announced; the head is there from the first (0 only between the claim and the
    // live track's start), and the continued 30 s come with the first piece, re-synthesised.
    let ready: Vec<f64> = events
        .iter()
        .filter(|e| e["status"] == "running")
        .map(|e| e["audio_seconds_ready"].as_f64().unwrap())
        .collect();
    assert!(ready.len() >= 3 && ready.windows(2).all(|w| w[0] <= w[1]), "{ready:?}");
    assert!(ready.iter().filter(|&&s| s > 0.0).all(|&s| (2.0..=34.0).contains(&s)), "{ready:?}");
    assert!(ready.windows(2).filter(|w| w[0] < w[1]).count() >= 2, "audio_seconds_ready grows: {ready:?}");
    let last = events.last().unwrap();
    assert_eq!((&last["status"], last["audio_seconds_ready"].as_f64()), (&json!("completed"), Some(34.0)));
    server.wait_for(&extended, |j| j["status"] == "completed").await;
    let file = server.audio(&extended).await;
    // The engine continues the last 30 s of the 32 s track; the 2 s before are the head.
    assert_is_the_track_up_to_gain(&streamed, &file, 2 * 32000, "extension to 34 s");
    server.stop().await;
}

#[tokio::test]
async fn streams_of_unknown_and_unfinished_jobs_are_json_errors() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let client = reqwest::Client::new();
    let unknown = "0b6f6c2e-8f0e-4a51-9d7c-2f1f6f0c3a10";
    let get = |id: &str| client.get(server.url(&format!("/api/v1/jobs/{id}/stream"))).send();
    assert_error(get(unknown).await.unwrap(), 404, "not_found", None, unknown).await;
    assert_error(get("not-a-uuid").await.unwrap(), 404, "not_found", None, "UUID").await;

    let long = server.submit(json!({"prompt": "a long drone", "duration": LONG_DURATION, "seed": 1})).await;
    let mut reader = Reader::open(&server, &long).await;
    reader.read_past(HEADER).await;
    client.delete(server.url(&format!("/api/v1/jobs/{long}"))).send().await.unwrap();
    // A stream open at the cancel ends where the audio ended, short of the header's length.
    let cut = tokio::time::timeout(Duration::from_secs(60), reader.rest()).await.expect("the stream ended");
    let announced = u32::from_le_bytes(cut[40..44].try_into().unwrap()) as usize;
    assert!(cut.len() > HEADER && cut.len() - HEADER < announced, "{} of {announced} bytes", cut.len() - HEADER);
    assert_error(get(&long).await.unwrap(), 409, "conflict", None, "cancelled").await;
    server.stop().await;
}
