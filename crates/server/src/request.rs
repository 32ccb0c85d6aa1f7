//! Turning a `POST /generate` body into validated [`JobParams`]. The body is read by an extractor
//! ([`Generate`]) that names the field at fault when it does not deserialize (through
//! `serde_path_to_error`); value ranges are the engine's rules (`GenerationItem::validate`,
//! `validate_duration_within`, `validate_extend_stride`), so the server and `dgx-music generate`
//! accept the same requests. What `continue_from` and `melody` name is looked up by the handler,
//! which checks a continuation with `validate_continuation` (`api/uploads.rs`).

use std::ops::RangeInclusive;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use musicgen::request::{validate_duration_within, validate_extend_stride, DEFAULT_EXTEND_STRIDE_SECS, WINDOW_SECS};
use musicgen::{GenerationItem, ModelInfo, SamplingParams};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::job::{public_model_id, JobParams};
use crate::state::AppState;

/// Seconds of audio a job may ask for.
pub const DURATION_LIMITS: RangeInclusive<f64> = 1.0..=300.0;
/// Seeds stay within JavaScript's exact integers so that the web page shows the seed it got.
pub const MAX_SEED: u64 = (1 << 53) - 1;
/// Largest accepted request body; a maximal prompt is 2000 characters (at most 8000 bytes).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The body of `POST /api/v1/generate`. Every field is optional to serde so that a missing
/// `prompt` or `duration` gets its own message; the schema marks them required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// What the music should sound like.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 2000, pattern = r"\S", example = "ambient piano")]
    pub prompt: Option<String>,
    /// Seconds of audio, 1..=300.
    #[schema(value_type = f64, required = true, minimum = 1.0, maximum = 300.0, example = 16.0)]
    pub duration: Option<f64>,
    /// Sample from the k most likely tokens; 1 is greedy. 1..=the model's vocabulary size. Default 250.
    #[schema(minimum = 1)]
    pub top_k: Option<u64>,
    /// Nucleus sampling threshold in [0, 1]; 0 turns it off. Default 0.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// Softmax temperature, > 0. Default 1.
    #[schema(exclusive_minimum = 0.0)]
    pub temperature: Option<f64>,
    /// Classifier-free guidance coefficient, >= 0. Default 3.
    #[schema(minimum = 0.0)]
    pub cfg_coef: Option<f64>,
    /// Random seed, 0..=2^53-1; a random one is chosen (and reported) when absent.
    #[schema(minimum = 0, maximum = 9007199254740991.0)]
    pub seed: Option<u64>,
    /// Audio the track continues: the id of an upload (`POST /api/v1/uploads`) or of a completed job,
    /// whose track is then extended (its last 30 s prompt the model, what comes before is kept as it is).
    /// `duration` stays the length of the whole track, so it must exceed that audio's length.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub continue_from: Option<String>,
    /// The tune to follow, for a melody model (`GET /api/v1/models` says `melody`): the id of an upload
    /// or of a completed job ("in the style of this track"). It is mixed to mono; each 30 s window
    /// follows the 30 s of melody from its start in the track, and a short melody loops. Without it a
    /// melody model follows the text alone.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub melody: Option<String>,
    /// Seconds each 30 s window of a track longer than 30 s moves on from the last, in (0, 30). Default 18.
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 30.0, example = 18.0)]
    pub extend_stride: Option<f64>,
    /// The model to generate with, one of `GET /api/v1/models` (its `id`, or a short name such as
    /// `small`); the server's first model when absent.
    #[schema(example = "facebook/musicgen-small")]
    pub model: Option<String>,
}

impl GenerateBody {
    /// Applies the defaults and the engine's rules. `vocab_size` bounds `top_k` (and caps its
    /// default); `random_seed` is used when the body has no seed. The stored audio is left to the
    /// handler: [`Validated::continue_from`] and [`Validated::melody`] are only parsed here; `model`
    /// is left to the caller, which picked `vocab_size` by it.
    pub fn into_params(self, vocab_size: usize, random_seed: u64) -> Result<Validated, ApiError> {
        let prompt = self.prompt.ok_or_else(|| {
            ApiError::invalid(Some("prompt"), "prompt is required: describe the music, e.g. \"ambient piano\"")
        })?;
        let duration_secs = self.duration.ok_or_else(|| {
            ApiError::invalid(Some("duration"), "duration is required: seconds of audio within 1..=300")
        })?;
        let defaults = SamplingParams::default();
        let seed = self.seed.unwrap_or(random_seed & MAX_SEED);
        let item = GenerationItem {
            prompt,
            sampling: SamplingParams {
                top_k: self.top_k.map_or(defaults.top_k.min(vocab_size), |k| usize::try_from(k).unwrap_or(usize::MAX)),
                top_p: self.top_p.unwrap_or(defaults.top_p),
                temperature: self.temperature.unwrap_or(defaults.temperature),
                cfg_coef: self.cfg_coef.unwrap_or(defaults.cfg_coef),
            },
            seed,
        };
        item.validate(vocab_size)?;
        validate_duration_within(duration_secs, DURATION_LIMITS)?;
        if seed > MAX_SEED {
            return Err(ApiError::invalid(Some("seed"), format!("seed {seed} is outside 0..={MAX_SEED}")));
        }
        let extend_stride_secs = self.extend_stride.unwrap_or(DEFAULT_EXTEND_STRIDE_SECS);
        validate_extend_stride(extend_stride_secs)?;
        let continue_from = self.continue_from.map(|text| parse_upload_id("continue_from", &text)).transpose()?;
        let melody = self.melody.map(|text| parse_upload_id("melody", &text)).transpose()?;
        let params = JobParams { extend_stride_secs, ..JobParams::new(item, duration_secs) };
        Ok(Validated { params, continue_from, melody })
    }
}

fn accepted_upload_id() -> &'static str {
    "the id (a UUID) of an upload (POST /api/v1/uploads) or of a completed job"
}

fn parse_upload_id(field: &'static str, text: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(text).map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        ApiError::invalid(Some(field), format!("{field} {shown:?} is not an id: {}", accepted_upload_id()))
    })
}

/// What a field accepts, for messages about a value of the wrong type.
fn accepted(field: &str, vocab_size: usize) -> Option<String> {
    Some(match field {
        "prompt" => "a string describing the music, e.g. \"ambient piano\"".into(),
        "duration" => "a number of seconds within 1..=300".into(),
        "top_k" => format!("an integer within 1..={vocab_size}"),
        "top_p" => "a number within [0, 1]".into(),
        "temperature" => "a number > 0".into(),
        "cfg_coef" => "a number >= 0".into(),
        "seed" => format!("an integer within 0..={MAX_SEED}"),
        "continue_from" | "melody" => accepted_upload_id().into(),
        "model" => "a model id of GET /api/v1/models, e.g. \"facebook/musicgen-small\"".into(),
        "extend_stride" => {
            format!("a number of seconds above 0 and below {WINDOW_SECS} (default {DEFAULT_EXTEND_STRIDE_SECS})")
        }
        _ => return None,
    })
}

/// Deserializes a body; a value of the wrong type is reported with its field and what it accepts.
pub fn parse_body(bytes: &[u8], vocab_size: usize) -> Result<GenerateBody, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let body: GenerateBody = serde_path_to_error::deserialize(&mut json).map_err(|err| {
        // Only an object's keys are fields: a path into an array means the body is not an object.
        let field = match err.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
            _ => None,
        };
        let err = err.into_inner();
        if err.is_syntax() || err.is_eof() {
            return ApiError::invalid(None, format!("malformed JSON: {err}"));
        }
        match field.as_deref().map(|field| (field, accepted(field, vocab_size))) {
            Some((field, Some(accepted))) => {
                ApiError::invalid(Some(field), format!("{field} must be {accepted} ({err})"))
            }
            // An unknown field: serde's message lists the accepted ones.
            Some((_, None)) => ApiError::invalid(None, err.to_string()),
            None => ApiError::invalid(
                None,
                format!(
                    "the body must be a JSON object like {{\"prompt\": \"ambient piano\", \"duration\": 16}} ({err})"
                ),
            ),
        }
    })?;
    json.end().map_err(|err| ApiError::invalid(None, format!("malformed JSON: {err}")))?;
    Ok(body)
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A body's parameters, checked against the rules of the model it is for.
pub struct Validated {
    /// Everything but the continuation, which the handler resolves from `continue_from`.
    pub params: JobParams,
    /// The upload or completed job named by `continue_from`, not yet looked up.
    pub continue_from: Option<Uuid>,
    /// The upload or completed job named by `melody`, not yet looked up.
    pub melody: Option<Uuid>,
}

/// A `POST /generate` request: the model it is for and its validated parameters.
pub struct Generate {
    pub model: ModelInfo,
    pub request: Validated,
}

impl FromRequest<AppState> for Generate {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with the header Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!(
                    "the body is over {} KiB; a request needs only a prompt (at most 2000 characters) and parameters",
                    BODY_LIMIT / 1024
                ))
            } else {
                ApiError::invalid(None, format!("cannot read the body: {}", rejection.body_text()))
            }
        })?;
        let mut models = state.models();
        if models.default_model().is_none() {
            // An API node a worker joined since its last look.
            state.models.refresh(&*state.jobs).await;
            models = state.models();
        }
        let default = models.default_model().ok_or_else(no_models)?;
        let mut body = parse_body(&bytes, default.vocab_size)?;
        if body.model.as_deref().is_some_and(|name| models.find(name).is_none()) {
            state.models.refresh(&*state.jobs).await;
            models = state.models();
        }
        let default = models.default_model().ok_or_else(no_models)?;
        let model = match body.model.take() {
            None => default,
            Some(name) => models.find(&name).ok_or_else(|| unknown_model(&name, state))?,
        };
        // A fresh v4 UUID is 122 bits from the OS generator: a good random seed without another RNG.
        let random_seed = Uuid::new_v4().as_u64_pair().0;
        let request = body.into_params(model.vocab_size, random_seed)?;
        Ok(Generate { model: model.clone(), request })
    }
}

/// An API node before any worker registered (or after the last one left).
pub(crate) fn no_models() -> ApiError {
    ApiError::Unavailable(
        "no worker is running any model now; start one (`dgx-music worker --database ... --storage ...`) \
         and retry: its models are offered once it has loaded them"
            .into(),
    )
}

pub(crate) fn unknown_model(name: &str, state: &AppState) -> ApiError {
    let shown: String = name.chars().take(100).collect();
    let offered: Vec<String> = state.models().all().iter().map(|model| public_model_id(&model.id)).collect();
    if offered.is_empty() {
        return no_models();
    }
    ApiError::invalid(
        Some("model"),
        format!(
            "model {shown:?} is not one this server runs; it runs {} (GET /api/v1/models), or leave model out for {}",
            offered.join(", "),
            offered[0]
        ),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn parse(body: &Value, vocab_size: usize, random_seed: u64) -> Result<JobParams, ApiError> {
        Ok(parse_request(body, vocab_size, random_seed)?.params)
    }

    fn parse_request(body: &Value, vocab_size: usize, random_seed: u64) -> Result<Validated, ApiError> {
        parse_body(body.to_string().as_bytes(), vocab_size)?.into_params(vocab_size, random_seed)
    }

    fn message(body: Value) -> (Option<String>, String) {
        match parse(&body, 2048, 5).unwrap_err() {
            ApiError::InvalidRequest { field, message } => (field, message),
            other => panic!("expected invalid_request, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_missing_parameters() {
        let p = parse(&json!({"prompt": "ambient piano", "duration": 16}), 2048, 99).unwrap();
        assert_eq!(p.item.prompt, "ambient piano");
        assert_eq!(p.duration_secs, 16.0);
        assert_eq!(p.item.sampling, SamplingParams::default());
        assert_eq!(p.item.seed, 99);
        let small_vocab = parse(&json!({"prompt": "x", "duration": 1}), 64, 1).unwrap();
        assert_eq!(small_vocab.item.sampling.top_k, 64);
        let big_seed = parse(&json!({"prompt": "x", "duration": 1}), 64, u64::MAX).unwrap();
        assert_eq!(big_seed.item.seed, MAX_SEED, "random seeds stay within MAX_SEED");
        let plain = parse_request(&json!({"prompt": "x", "duration": 1}), 64, 1).unwrap();
        assert_eq!(
            (plain.continue_from, plain.params.continue_from, plain.params.extend_stride_secs),
            (None, None, 18.0)
        );
    }

    #[test]
    fn continue_from_and_extend_stride_are_parsed_and_kept() {
        let id = Uuid::new_v4();
        let tune = Uuid::new_v4();
        let body = json!({"prompt": "p", "duration": 40, "continue_from": id.to_string(), "extend_stride": 10,
            "melody": tune.to_string()});
        let request = parse_request(&body, 2048, 0).unwrap();
        assert_eq!(
            (request.continue_from, request.melody, request.params.extend_stride_secs),
            (Some(id), Some(tune), 10.0)
        );
        assert_eq!((request.params.continue_from, request.params.melody), (None, None), "the handler resolves the ids");
    }

    #[test]
    fn explicit_parameters_are_kept() {
        let body = json!({"prompt": "p", "duration": 1.5, "top_k": 1, "top_p": 1.0, "temperature": 0.5, "cfg_coef": 0, "seed": 42});
        let p = parse(&body, 2048, 0).unwrap();
        let expected = SamplingParams { top_k: 1, top_p: 1.0, temperature: 0.5, cfg_coef: 0.0 };
        assert_eq!((p.duration_secs, p.item.sampling, p.item.seed), (1.5, expected, 42));
    }

    #[test]
    fn every_bad_field_is_named_with_its_range() {
        let cases = [
            (json!({"prompt": "", "duration": 5}), "prompt", "empty"),
            (json!({"prompt": "   ", "duration": 5}), "prompt", "empty"),
            (json!({"prompt": "a".repeat(2001), "duration": 5}), "prompt", "2000"),
            (json!({"prompt": 3, "duration": 5}), "prompt", "string"),
            (json!({"duration": 5}), "prompt", "required"),
            (json!({"prompt": null, "duration": 5}), "prompt", "required"),
            (json!({"prompt": "p"}), "duration", "required"),
            (json!({"prompt": "p", "duration": 0}), "duration", "1..=300"),
            (json!({"prompt": "p", "duration": 301}), "duration", "1..=300"),
            (json!({"prompt": "p", "duration": "x"}), "duration", "\"x\""),
            (json!({"prompt": "p", "duration": "x"}), "duration", "1..=300"),
            (json!({"prompt": "p", "duration": 5, "top_k": 0}), "top_k", "1..=2048"),
            (json!({"prompt": "p", "duration": 5, "top_k": 2049}), "top_k", "1..=2048"),
            (json!({"prompt": "p", "duration": 5, "top_k": 2.5}), "top_k", "1..=2048"),
            (json!({"prompt": "p", "duration": 5, "top_k": "x"}), "top_k", "string \"x\""),
            (json!({"prompt": "p", "duration": 5, "top_p": -0.1}), "top_p", "[0, 1]"),
            (json!({"prompt": "p", "duration": 5, "top_p": 1.1}), "top_p", "[0, 1]"),
            (json!({"prompt": "p", "duration": 5, "temperature": 0}), "temperature", "> 0"),
            (json!({"prompt": "p", "duration": 5, "temperature": true}), "temperature", "> 0"),
            (json!({"prompt": "p", "duration": 5, "cfg_coef": -1}), "cfg_coef", ">= 0"),
            (json!({"prompt": "p", "duration": 5, "seed": -1}), "seed", "0..="),
            (json!({"prompt": "p", "duration": 5, "seed": MAX_SEED + 1}), "seed", "0..="),
            (json!({"prompt": "p", "duration": 5, "seed": "7"}), "seed", "integer"),
            (json!({"prompt": "p", "duration": 5, "extend_stride": 0}), "extend_stride", "above 0 and below the 30 s"),
            (json!({"prompt": "p", "duration": 5, "extend_stride": 30}), "extend_stride", "30"),
            (json!({"prompt": "p", "duration": 5, "extend_stride": -2.5}), "extend_stride", "-2.5"),
            (json!({"prompt": "p", "duration": 5, "extend_stride": "x"}), "extend_stride", "below 30"),
            (
                json!({"prompt": "p", "duration": 5, "continue_from": "riff.wav"}),
                "continue_from",
                "\"riff.wav\" is not an id",
            ),
            (json!({"prompt": "p", "duration": 5, "continue_from": 7}), "continue_from", "UUID"),
            (json!({"prompt": "p", "duration": 5, "melody": "hum.wav"}), "melody", "\"hum.wav\" is not an id"),
            (json!({"prompt": "p", "duration": 5, "melody": ["a"]}), "melody", "completed job"),
        ];
        for (body, field, needle) in cases {
            let (got_field, msg) = message(body.clone());
            assert_eq!(got_field.as_deref(), Some(field), "{body}: {msg}");
            assert!(msg.starts_with(&format!("{field} ")), "{body}: the message starts with the field: {msg}");
            assert!(msg.contains(needle), "{body}: {needle:?} not in {msg}");
        }
    }

    #[test]
    fn a_prompt_of_exactly_the_limit_is_accepted() {
        let body = json!({"prompt": "é".repeat(2000), "duration": 300});
        assert!(parse(&body, 2048, 0).is_ok());
    }

    #[test]
    fn unknown_fields_malformed_json_and_non_objects_are_refused() {
        let (field, msg) = message(json!({"prompt": "p", "duration": 5, "temprature": 1}));
        assert_eq!(field, None);
        assert!(msg.contains("temprature") && msg.contains("temperature"), "{msg}");
        for body in [json!(["p", 5]), json!([1, 2]), json!("p"), json!(null)] {
            let (field, msg) = message(body.clone());
            assert_eq!(field, None, "{body}");
            assert!(msg.contains("JSON object"), "{body}: {msg}");
        }
        for bytes in [&b"{\"prompt\": \"p\", \"duration\": "[..], b"{\"prompt\": \"p\", \"duration\": 5} x", b""] {
            match parse_body(bytes, 2048).unwrap_err() {
                ApiError::InvalidRequest { field: None, message } => assert!(message.contains("malformed JSON")),
                other => panic!("{other:?}"),
            }
        }
    }
}
