//! `GET /jobs/{id}/audio?format=`: converted once from the stored WAV, kept beside it, served with
//! its own type and file name, and deleted with the job.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{assert_error, audio_files, wav_pcm, Server};

/// The samples of an audio file as symphonia decodes it, at its own rate and channels.
fn decoded(bytes: &[u8], extension: &str) -> musicgen::Audio {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("track.{extension}"));
    std::fs::write(&path, bytes).unwrap();
    musicgen::audio::read_audio_native(&path, 600.0).unwrap()
}

#[tokio::test]
async fn a_track_is_converted_once_served_in_each_format_and_deleted_with_its_job() {
    let server = Server::start(&tempfile::tempdir().unwrap().keep(), &[]).await;
    let client = reqwest::Client::new();
    let id = server.submit(json!({"prompt": "ambient piano", "duration": 2, "seed": 11})).await;
    server.wait_for(&id, |job| job["status"] == "completed").await;
    let audio_url = server.url(&format!("/api/v1/jobs/{id}/audio"));
    let wav = server.audio(&id).await;
    let (spec, pcm) = wav_pcm(&wav);

    let flac = client.get(format!("{audio_url}?format=flac")).send().await.unwrap();
    assert_eq!(flac.status(), StatusCode::OK);
    assert_eq!(flac.headers()["content-type"], "audio/flac");
    assert_eq!(flac.headers()["content-disposition"], format!("inline; filename=\"dgx-music-{id}.flac\""));
    let flac = flac.bytes().await.unwrap();
    let samples = decoded(&flac, "flac");
    assert_eq!((samples.sample_rate, samples.channels.len()), (spec.sample_rate, spec.channels as usize));
    let flac_pcm: Vec<i16> = samples.channels[0].iter().map(|s| (s * 32768.0) as i16).collect();
    assert_eq!(flac_pcm, pcm, "the FLAC holds the WAV's samples exactly");

    // Kept beside the WAV; the second request is the same file (its modification time unchanged).
    let cached = server.data_dir.join("audio").join(format!("{id}.flac"));
    let made = std::fs::metadata(&cached).unwrap().modified().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let again = client.get(format!("{audio_url}?format=flac")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(again, flac);
    assert_eq!(std::fs::metadata(&cached).unwrap().modified().unwrap(), made);
    let converted = format!("audio of job {id} converted to flac");
    for _ in 0..50 {
        if server.log().contains(&converted) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(server.log().matches(&converted).count(), 1, "{}", server.log());

    // Range requests work on a conversion too.
    let part = client.get(format!("{audio_url}?format=flac")).header("Range", "bytes=0-3").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], format!("bytes 0-3/{}", flac.len()));
    assert_eq!(part.bytes().await.unwrap().as_ref(), b"fLaC");

    for (format, mime, extension, magic) in [
        ("mp3", "audio/mpeg", "mp3", &b"ID3"[..]),
        ("ogg", "audio/ogg", "ogg", &b"OggS"[..]),
        ("wav24", "audio/wav", "wav", &b"RIFF"[..]),
        ("wav-f32", "audio/wav", "wav", &b"RIFF"[..]),
        ("wav", "audio/wav", "wav", &b"RIFF"[..]),
    ] {
        let response = client.get(format!("{audio_url}?format={format}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{format}");
        assert_eq!(response.headers()["content-type"], mime, "{format}");
        let disposition = response.headers()["content-disposition"].to_str().unwrap().to_string();
        assert!(disposition.ends_with(&format!(".{extension}\"")), "{format}: {disposition}");
        let bytes = response.bytes().await.unwrap();
        assert!(bytes.starts_with(magic), "{format}");
        let back = decoded(&bytes, extension);
        assert!(back.len() >= pcm.len(), "{format}: {} samples of {}", back.len(), pcm.len());
    }
    // `wav` is the stored original itself.
    assert_eq!(client.get(format!("{audio_url}?format=wav")).send().await.unwrap().bytes().await.unwrap(), wav);

    for bad in ["aiff", "", "FLAC", "flac2"] {
        let response = client.get(format!("{audio_url}?format={bad}")).send().await.unwrap();
        assert_error(response, 400, "invalid_request", Some("format"), "wav16, wav24, wav-f32, flac, mp3 or ogg").await;
    }

    let openapi: Value = client.get(server.url("/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    let params = openapi["paths"]["/api/v1/jobs/{id}/audio"]["get"]["parameters"].as_array().unwrap();
    let format = params.iter().find(|p| p["name"] == "format").expect("a format parameter");
    assert_eq!(format["in"], "query");
    let names = enum_of(&openapi, &format["schema"]).unwrap_or_else(|| panic!("no enum in {format}"));
    assert_eq!(names, ["wav", "wav16", "wav24", "wav-f32", "flac", "mp3", "ogg"], "{format}");

    let mut files = audio_files(&server.data_dir);
    files.sort();
    let mut expected: Vec<String> =
        ["wav", "flac", "mp3", "ogg", "wav24", "wav-f32"].iter().map(|ext| format!("{id}.{ext}")).collect();
    expected.sort();
    assert_eq!(files, expected);
    let deleted = client.delete(server.url(&format!("/api/v1/jobs/{id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(audio_files(&server.data_dir).is_empty(), "{:?}", audio_files(&server.data_dir));
    server.stop().await;
}

/// The values of the enum a schema is, or refers to (through `$ref`, `oneOf`, `anyOf`, `allOf`).
fn enum_of(openapi: &Value, schema: &Value) -> Option<Vec<String>> {
    if let Some(values) = schema["enum"].as_array() {
        return Some(values.iter().filter_map(|v| v.as_str().map(str::to_string)).collect());
    }
    if let Some(reference) = schema["$ref"].as_str() {
        return enum_of(openapi, &openapi["components"]["schemas"][reference.rsplit('/').next()?]);
    }
    ["oneOf", "anyOf", "allOf"]
        .iter()
        .filter_map(|key| schema[*key].as_array())
        .flatten()
        .find_map(|inner| enum_of(openapi, inner))
}
