//! What the tests of every [`AudioStore`] share: a track to store and a request to serve it.

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::response::Response;
use musicgen::audio::Format;
use uuid::Uuid;

use super::AudioStore;

/// A tenth of a second of stereo at 32 kHz, the right channel loud enough to clip.
pub(super) fn tone() -> musicgen::Audio {
    let left: Vec<f32> = (0..3200).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
    let right: Vec<f32> = left.iter().map(|s| -s * 2.5).collect();
    musicgen::Audio { sample_rate: 32000, channels: vec![left, right] }
}

/// `store.serve` of a request with `headers`, for audio that is there.
pub(super) async fn get(
    store: &dyn AudioStore,
    id: Uuid,
    method: Method,
    headers: &[(header::HeaderName, &str)],
) -> Response {
    let mut request = Request::builder().method(method);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    store.serve(id, Format::Wav16, request.body(Body::empty()).unwrap()).await.unwrap().expect("audio to serve")
}

pub(super) async fn body(response: Response) -> Vec<u8> {
    axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap().to_vec()
}
