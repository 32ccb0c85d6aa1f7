//! One server, several models (`--model` repeated): each job runs on the model it names, with the
//! same samples as `dgx-music generate` on that model, while `--max-loaded` unloads and reloads
//! models between jobs and checkpoints with the same T5 and EnCodec share one copy.

use serde_json::{json, Value};

use crate::harness::{assert_error, assert_same_pcm, cli_pcm, fixture_checkpoint, fixture_dir, fixture_id, Server};

const PROMPT: &str = "lofi beat with warm keys";

fn request(model: &str, duration: f64) -> Value {
    json!({"prompt": PROMPT, "duration": duration, "model": model, "top_k": 1, "cfg_coef": 3, "seed": 0})
}

async fn models(server: &Server) -> Vec<Value> {
    let page: Value = reqwest::get(server.url("/api/v1/models")).await.unwrap().json().await.unwrap();
    page["models"].as_array().unwrap().clone()
}

fn loaded(models: &[Value]) -> Vec<bool> {
    models.iter().map(|model| model["loaded"].as_bool().unwrap()).collect()
}

#[tokio::test]
async fn each_job_runs_on_its_model_within_the_memory_budget() {
    let (mono, melody) = (fixture_checkpoint("tiny-mono"), fixture_checkpoint("tiny-melody"));
    // tiny-mono's files in another directory: another checkpoint with the same T5 and EnCodec.
    let twin_root = tempfile::tempdir().unwrap();
    let twin = twin_root.path().join("twin");
    std::fs::create_dir(&twin).unwrap();
    for entry in std::fs::read_dir(&mono).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), twin.join(entry.file_name())).unwrap();
    }
    let twin = twin.display().to_string();
    let extra = ["--model", &twin, "--model", &melody, "--max-loaded", "2"];
    let server = Server::start_model(&tempfile::tempdir().unwrap().keep(), &mono, &extra).await;
    let log = server.log();
    assert!(log.contains("uses its T5 encoder and EnCodec from"), "the twin borrows both:\n{log}");
    assert!(log.contains("unloading model"), "three models, room for two:\n{log}");

    let listed = models(&server).await;
    let twin_id = listed[1]["id"].as_str().unwrap().to_string();
    assert!(twin_id.starts_with("local/") && twin_id.ends_with("/twin"), "{twin_id}");
    let ids: Vec<&str> = listed.iter().map(|model| model["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [fixture_id("tiny-mono").as_str(), &twin_id, &fixture_id("tiny-melody")]);
    assert_eq!(listed.iter().map(|m| m["default"] == true).collect::<Vec<_>>(), [true, false, false]);
    assert_eq!(listed.iter().map(|m| m["melody"] == true).collect::<Vec<_>>(), [false, false, true]);
    assert_eq!(loaded(&listed), [false, true, true], "the first was unloaded for the third");

    // The unloaded default is loaded again for its job, unloading the least recently used (the twin).
    let scratch = tempfile::tempdir().unwrap();
    let mut default = request("", 1.5);
    default.as_object_mut().unwrap().remove("model");
    let (job, mono_track) = server.finished(default).await;
    assert_eq!(job["model"], fixture_id("tiny-mono"), "no model: the first");
    let cli = cli_pcm(&mono, PROMPT, 1.5, &[], &scratch.path().join("mono.wav"));
    assert_same_pcm(&mono_track, &cli, "the default model against the CLI");
    assert_eq!(loaded(&models(&server).await), [true, false, true]);

    let tune_file = fixture_dir("tiny-melody").join("melody.wav");
    let tune = server.upload_ok("melody.wav", std::fs::read(&tune_file).unwrap()).await;
    let mut body = request(&fixture_id("tiny-melody"), 1.5);
    body["melody"] = tune["id"].clone();
    let (job, ours) = server.finished(body).await;
    assert_eq!(job["model"], fixture_id("tiny-melody"));
    let cli =
        cli_pcm(&melody, PROMPT, 1.5, &["--melody".as_ref(), tune_file.as_os_str()], &scratch.path().join("m.wav"));
    assert_same_pcm(&ours, &cli, "the melody model against the CLI");

    // The twin is loaded again (the default, used least recently, makes room) and sounds like tiny-mono.
    let (job, twin_track) = server.finished(request(&twin_id, 1.5)).await;
    assert_eq!(job["model"], twin_id.as_str());
    assert_same_pcm(&twin_track, &mono_track, "the twin against tiny-mono");
    assert_eq!(loaded(&models(&server).await), [false, true, true]);

    let response = reqwest::Client::new().post(server.url("/api/v1/generate")).json(&request("large", 2.0)).send();
    assert_error(response.await.unwrap(), 400, "invalid_request", Some("model"), "not one this server runs").await;
}
