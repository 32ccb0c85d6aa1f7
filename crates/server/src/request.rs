//! Turning a `POST /generate` body into validated [`JobParams`], with messages that name the
//! field and its accepted range. Parsing is done by hand from a JSON value (rather than a serde
//! derive) so that a wrong type gets the same precise message as a wrong value.

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::job::JobParams;

pub const MIN_DURATION: f64 = 1.0;
pub const MAX_DURATION: f64 = 300.0;
pub const MAX_PROMPT_CHARS: usize = musicgen::request::MAX_PROMPT_CHARS;
/// Seeds stay within JavaScript's exact integers so that the web page shows the seed it got.
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// The body of `POST /api/v1/generate`. Documentation only: parsing is [`parse_generate`].
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// What the music should sound like.
    #[schema(min_length = 1, max_length = 2000, pattern = r"\S", example = "ambient piano")]
    pub prompt: String,
    /// Seconds of audio, 1..=300.
    #[schema(minimum = 1.0, maximum = 300.0, example = 16.0)]
    pub duration: f64,
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
}

const FIELDS: [&str; 7] = ["prompt", "duration", "top_k", "top_p", "temperature", "cfg_coef", "seed"];

/// Validates a parsed JSON body. `vocab_size` bounds `top_k`; `random_seed` is used when the
/// body has none.
pub fn parse_generate(body: &Value, vocab_size: usize, random_seed: u64) -> Result<JobParams, ApiError> {
    let object = body.as_object().ok_or_else(|| {
        ApiError::invalid(None, "the body must be a JSON object like {\"prompt\": \"ambient piano\", \"duration\": 16}")
    })?;
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            None,
            format!("unknown field {unknown:?}; accepted fields are {}", FIELDS.join(", ")),
        ));
    }
    let defaults = musicgen::SamplingParams::default();

    let prompt = match object.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                Some("prompt"),
                "prompt is required: describe the music, e.g. \"ambient piano\"",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(Some("prompt"), format!("prompt must be a string, got {}", kind(other))))
        }
    };
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid(Some("prompt"), "prompt is empty; describe the music, e.g. \"ambient piano\""));
    }
    let chars = prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            Some("prompt"),
            format!("prompt is {chars} characters long; the limit is {MAX_PROMPT_CHARS}"),
        ));
    }

    let duration = match number(object, "duration", "a number of seconds within 1..=300")? {
        Some(d) => d,
        None => {
            return Err(ApiError::invalid(Some("duration"), "duration is required: seconds of audio within 1..=300"))
        }
    };
    if !(MIN_DURATION..=MAX_DURATION).contains(&duration) {
        return Err(ApiError::invalid(Some("duration"), format!("duration {duration} is outside 1..=300 seconds")));
    }

    let top_k_range = format!("an integer within 1..={vocab_size}");
    let top_k = match object.get("top_k") {
        None | Some(Value::Null) => defaults.top_k.min(vocab_size),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(k) if (1..=vocab_size as u64).contains(&k) => k as usize,
            _ => {
                return Err(ApiError::invalid(
                    Some("top_k"),
                    format!("top_k {n} is outside 1..={vocab_size} (the model's vocabulary; 1 is greedy)"),
                ))
            }
        },
        Some(other) => {
            return Err(ApiError::invalid(Some("top_k"), format!("top_k must be {top_k_range}, got {}", kind(other))))
        }
    };

    let top_p = number(object, "top_p", "a number within [0, 1]")?.unwrap_or(defaults.top_p);
    if !(0.0..=1.0).contains(&top_p) {
        return Err(ApiError::invalid(Some("top_p"), format!("top_p {top_p} is outside [0, 1] (0 turns it off)")));
    }
    let temperature = number(object, "temperature", "a number > 0")?.unwrap_or(defaults.temperature);
    if temperature <= 0.0 {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("temperature {temperature} must be > 0 (1 is neutral)"),
        ));
    }
    let cfg_coef = number(object, "cfg_coef", "a number >= 0")?.unwrap_or(defaults.cfg_coef);
    if cfg_coef < 0.0 {
        return Err(ApiError::invalid(
            Some("cfg_coef"),
            format!("cfg_coef {cfg_coef} must be >= 0 (3 is the default, 1 disables guidance)"),
        ));
    }
    let seed = match object.get("seed") {
        None | Some(Value::Null) => random_seed & MAX_SEED,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(s) if s <= MAX_SEED => s,
            _ => return Err(ApiError::invalid(Some("seed"), format!("seed {n} is outside 0..={MAX_SEED}"))),
        },
        Some(other) => {
            return Err(ApiError::invalid(
                Some("seed"),
                format!("seed must be an integer within 0..={MAX_SEED}, got {}", kind(other)),
            ))
        }
    };

    Ok(JobParams { prompt, duration, top_k, top_p, temperature, cfg_coef, seed })
}

/// An optional finite number field; a present value of another type names the expected one.
fn number(object: &Map<String, Value>, field: &'static str, expected: &str) -> Result<Option<f64>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(ApiError::invalid(Some(field), format!("{field} {n} is not a finite number; use {expected}"))),
        },
        Some(other) => Err(ApiError::invalid(Some(field), format!("{field} must be {expected}, got {}", kind(other)))),
    }
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() <= 40 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(body: Value) -> (Option<&'static str>, String) {
        match parse_generate(&body, 2048, 5).unwrap_err() {
            ApiError::InvalidRequest { field, message } => (field, message),
            other => panic!("expected invalid_request, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_missing_parameters() {
        let p = parse_generate(&json!({"prompt": "ambient piano", "duration": 16}), 2048, 99).unwrap();
        assert_eq!(p.prompt, "ambient piano");
        assert_eq!(p.duration, 16.0);
        assert_eq!((p.top_k, p.top_p, p.temperature, p.cfg_coef, p.seed), (250, 0.0, 1.0, 3.0, 99));
        let small_vocab = parse_generate(&json!({"prompt": "x", "duration": 1}), 64, 1).unwrap();
        assert_eq!(small_vocab.top_k, 64);
    }

    #[test]
    fn explicit_parameters_are_kept() {
        let body = json!({"prompt": "p", "duration": 1.5, "top_k": 1, "top_p": 1.0, "temperature": 0.5, "cfg_coef": 0, "seed": 42});
        let p = parse_generate(&body, 2048, 0).unwrap();
        assert_eq!((p.duration, p.top_k, p.top_p, p.temperature, p.cfg_coef, p.seed), (1.5, 1, 1.0, 0.5, 0.0, 42));
    }

    #[test]
    fn every_bad_field_is_named_with_its_range() {
        let cases = [
            (json!({"prompt": "", "duration": 5}), "prompt", "empty"),
            (json!({"prompt": "   ", "duration": 5}), "prompt", "empty"),
            (json!({"prompt": "a".repeat(2001), "duration": 5}), "prompt", "2000"),
            (json!({"prompt": 3, "duration": 5}), "prompt", "string"),
            (json!({"duration": 5}), "prompt", "required"),
            (json!({"prompt": "p"}), "duration", "required"),
            (json!({"prompt": "p", "duration": 0}), "duration", "1..=300"),
            (json!({"prompt": "p", "duration": 301}), "duration", "1..=300"),
            (json!({"prompt": "p", "duration": "x"}), "duration", "\"x\""),
            (json!({"prompt": "p", "duration": 5, "top_k": 0}), "top_k", "1..=2048"),
            (json!({"prompt": "p", "duration": 5, "top_k": 2049}), "top_k", "1..=2048"),
            (json!({"prompt": "p", "duration": 5, "top_k": 2.5}), "top_k", "1..=2048"),
            (json!({"prompt": "p", "duration": 5, "top_p": -0.1}), "top_p", "[0, 1]"),
            (json!({"prompt": "p", "duration": 5, "top_p": 1.1}), "top_p", "[0, 1]"),
            (json!({"prompt": "p", "duration": 5, "temperature": 0}), "temperature", "> 0"),
            (json!({"prompt": "p", "duration": 5, "cfg_coef": -1}), "cfg_coef", ">= 0"),
            (json!({"prompt": "p", "duration": 5, "seed": -1}), "seed", "0..="),
            (json!({"prompt": "p", "duration": 5, "seed": "7"}), "seed", "integer"),
        ];
        for (body, field, needle) in cases {
            let (got_field, msg) = message(body.clone());
            assert_eq!(got_field, Some(field), "{body}: {msg}");
            assert!(msg.contains(field) && msg.contains(needle), "{body}: {msg}");
        }
    }

    #[test]
    fn a_prompt_of_exactly_the_limit_is_accepted() {
        let body = json!({"prompt": "é".repeat(2000), "duration": 300});
        assert!(parse_generate(&body, 2048, 0).is_ok());
    }

    #[test]
    fn unknown_fields_and_non_objects_are_refused() {
        let (field, msg) = message(json!({"prompt": "p", "duration": 5, "temprature": 1}));
        assert_eq!(field, None);
        assert!(msg.contains("temprature") && msg.contains("temperature"), "{msg}");
        let (_, msg) = message(json!(["p", 5]));
        assert!(msg.contains("JSON object"), "{msg}");
    }
}
