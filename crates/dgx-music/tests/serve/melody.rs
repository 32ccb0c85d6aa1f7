//! Melody through the service: `melody` on `POST /generate` with the tiny melody checkpoint. The
//! CLI's `--melody` is held to transformers by cli_generate.rs; here the service's tracks must equal
//! the CLI's for the same tune, whether the tune is an upload or a finished job's track.

use std::path::Path;

use serde_json::{json, Value};

use crate::harness::{assert_error, assert_same_pcm, cli_pcm, fixture_checkpoint, fixture_dir, Server};

const PROMPT: &str = "80s pop track with bassy drums and synth";

fn request(melody: &str, duration: f64) -> Value {
    json!({"prompt": PROMPT, "duration": duration, "melody": melody, "top_k": 1, "cfg_coef": 3, "seed": 0})
}

/// `dgx-music generate` with the same settings as [`request`] and `--melody tune`: 16-bit samples.
fn cli_track(model: &str, tune: &Path, duration: f64, out: &Path) -> Vec<i16> {
    cli_pcm(model, PROMPT, duration, &["--melody".as_ref(), tune.as_os_str()], out)
}

#[tokio::test]
async fn a_melody_upload_or_track_is_followed_as_the_cli_follows_it() {
    let model = fixture_checkpoint("tiny-melody");
    let server = Server::start_model(&tempfile::tempdir().unwrap().keep(), &model, &[]).await;
    let models: Value = reqwest::get(server.url("/api/v1/models")).await.unwrap().json().await.unwrap();
    assert_eq!(models["models"][0]["melody"], true, "{models}");
    let scratch = tempfile::tempdir().unwrap();
    let tunes = ["melody.wav", "melody2.wav"].map(|name| fixture_dir("tiny-melody").join(name));

    let mut tracks = Vec::new();
    for tune in &tunes {
        let name = tune.file_name().unwrap().to_str().unwrap();
        let upload = server.upload_ok(name, std::fs::read(tune).unwrap()).await;
        let (job, ours) = server.finished(request(upload["id"].as_str().unwrap(), 2.0)).await;
        assert_eq!(
            (job["melody"]["upload"].as_str(), job["melody"]["filename"].as_str()),
            (upload["id"].as_str(), Some(name))
        );
        let cli = cli_track(&model, tune, 2.0, &scratch.path().join(name));
        assert_same_pcm(&ours, &cli, &format!("{name}: the service's track against the CLI's"));
        tracks.push((job, ours));
    }
    let differing = tracks[0].1.iter().zip(&tracks[1].1).filter(|(a, b)| a != b).count();
    assert!(differing > tracks[0].1.len() / 2, "two melodies give different music ({differing} samples differ)");

    // "In the style of this track": a finished job's track is the melody, as its downloaded WAV is to the CLI.
    let (source, source_audio) = &tracks[0];
    let source_id = source["id"].as_str().unwrap();
    let wav = scratch.path().join("source.wav");
    std::fs::write(&wav, server.audio(source_id).await).unwrap();
    assert!(!source_audio.is_empty());
    let (styled, ours) = server.finished(request(source_id, 3.0)).await;
    assert_eq!(styled["melody"]["source_job"].as_str(), Some(source_id), "{styled}");
    let cli = cli_track(&model, &wav, 3.0, &scratch.path().join("styled.wav"));
    assert_same_pcm(&ours, &cli, "a job's track as the melody against the CLI given that track");

    // Extending a track that follows a melody: the same melody goes on.
    let extended = server
        .finished(
            json!({"prompt": PROMPT, "duration": 4, "continue_from": source_id, "melody": source["melody"]["upload"],
            "top_k": 1, "seed": 0}),
        )
        .await;
    assert_eq!(extended.0["melody"]["upload"], source["melody"]["upload"]);
    assert_eq!(extended.1.len(), 4 * 32000);

    // Deleting the source job leaves the snapshot the styled job follows.
    let client = reqwest::Client::new();
    let url = server.url(&format!("/api/v1/jobs/{source_id}"));
    assert_eq!(client.delete(&url).send().await.unwrap().status(), 204);
    let snapshot = styled["melody"]["upload"].as_str().unwrap();
    assert_eq!(reqwest::get(server.url(&format!("/api/v1/uploads/{snapshot}"))).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_text_to_music_server_refuses_a_melody() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let tune = fixture_dir("tiny-melody").join("melody.wav");
    let upload = server.upload_ok("melody.wav", std::fs::read(tune).unwrap()).await;
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/generate"))
        .json(&request(upload["id"].as_str().unwrap(), 2.0))
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_request", Some("melody"), "facebook/musicgen-melody").await;
}
