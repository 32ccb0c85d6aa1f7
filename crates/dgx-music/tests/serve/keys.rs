//! API keys as an operator meets them: `dgx-music keys` on a data directory, a network server that
//! will not start without one, and keys made and revoked while the server runs.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{fixture, Server};

fn dgx_music(args: &[&str], data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dgx-music")).args(args).arg("--data-dir").arg(data_dir).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `keys create` and the token it prints.
fn create_key(data_dir: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--name", name];
    args.extend(extra);
    let out = dgx_music(&args, data_dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("dgxm_") && token.len() == 69, "{token:?}");
    token
}

#[tokio::test]
async fn a_network_server_needs_a_key_to_start_and_keys_work_while_it_runs() {
    let data_dir = tempfile::tempdir().unwrap().keep();
    let refused = dgx_music(&["serve", "--host", "0.0.0.0", "--port", "0", "--model", &fixture()], &data_dir);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("no API key") && message.contains("dgx-music keys create"), "{message}");
    assert!(message.contains("--insecure-no-auth"), "{message}");

    let insecure = Server::start_on(&data_dir, &fixture(), "0.0.0.0", &["--insecure-no-auth"]).await;
    assert_eq!(reqwest::get(insecure.url("/api/v1/jobs")).await.unwrap().status(), 200);
    assert!(insecure.log().contains("--insecure-no-auth"), "the server warns: {}", insecure.log());
    insecure.stop().await;

    let laptop = create_key(&data_dir, "laptop", &[]);
    let admin = create_key(&data_dir, "root", &["--admin"]);
    let server = Server::start_on(&data_dir, &fixture(), "0.0.0.0", &[]).await;
    let client = reqwest::Client::new();
    let jobs = || client.get(server.url("/api/v1/jobs"));
    assert_eq!(jobs().send().await.unwrap().status(), 401);
    assert_eq!(jobs().bearer_auth(&laptop).send().await.unwrap().status(), 200);

    // A key made while the server runs works at once; a revoked one stops at once.
    let phone = create_key(&data_dir, "phone", &[]);
    assert_eq!(jobs().bearer_auth(&phone).send().await.unwrap().status(), 200);
    let listed = dgx_music(&["keys", "list", "--json"], &data_dir);
    let keys: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = keys.as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["laptop", "root", "phone"]);
    assert_eq!(keys[1]["admin"], true);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&phone[5..]), "tokens are never listed");
    let revoked = dgx_music(&["keys", "revoke", "phone"], &data_dir);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let response = jobs().bearer_auth(&phone).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.text().await.unwrap().contains("revoked"));
    let again = dgx_music(&["keys", "revoke", "phone"], &data_dir);
    assert!(!again.status.success() && stderr(&again).contains("already revoked"), "{}", stderr(&again));
    let unknown = dgx_music(&["keys", "revoke", "tablet"], &data_dir);
    assert!(!unknown.status.success() && stderr(&unknown).contains("keys list"), "{}", stderr(&unknown));

    // Each key sees its own jobs; the admin key sees all.
    let id = {
        let body = serde_json::json!({"prompt": "p", "duration": 1});
        let response =
            client.post(server.url("/api/v1/generate")).bearer_auth(&laptop).json(&body).send().await.unwrap();
        let job: Value = response.json().await.unwrap();
        job["id"].as_str().unwrap().to_string()
    };
    let job_url = server.url(&format!("/api/v1/jobs/{id}"));
    assert_eq!(client.get(&job_url).bearer_auth(&admin).send().await.unwrap().status(), 200);
    let bad = create_key(&data_dir, "other", &[]);
    assert_eq!(client.get(&job_url).bearer_auth(&bad).send().await.unwrap().status(), 404);
    let stream_url = format!("{job_url}/stream");
    assert_eq!(client.get(&stream_url).bearer_auth(&bad).send().await.unwrap().status(), 404, "as /audio");
    let own = client.get(&stream_url).bearer_auth(&laptop).send().await.unwrap();
    assert_eq!(own.status(), 200);
    assert!(own.bytes().await.unwrap().starts_with(b"RIFF"), "its owner hears it");
    server.stop().await;
}
