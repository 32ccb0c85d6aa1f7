//! Prompt tokenization, identical to transformers' `tokenizer(prompts, padding=True)`.
//!
//! transformers' fast tokenizer overrides whatever padding and truncation `tokenizer.json`
//! carries on every call: with `padding=True` and no truncation it pads each batch to its
//! longest prompt, on the right, with the tokenizer's pad token, and never truncates. We set
//! the same parameters once at load time. The T5 post-processor in `tokenizer.json` appends
//! `</s>` to every prompt.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy};

use crate::error::{Error, Result};

/// Pad token of T5 tokenizers when the checkpoint's tokenizer files do not name one.
const DEFAULT_PAD_TOKEN: &str = "<pad>";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
}

impl Tokenizer {
    /// Loads `tokenizer.json`; the pad token comes from `tokenizer_config.json` or
    /// `special_tokens_map.json` beside it (as transformers reads it), else `<pad>`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::BadCheckpoint {
            path: path.to_path_buf(),
            message: format!("cannot load the tokenizer ({e}); copy tokenizer.json from facebook/musicgen-small"),
        })?;
        let pad_token = path.parent().and_then(configured_pad_token).unwrap_or_else(|| DEFAULT_PAD_TOKEN.to_string());
        let pad_id = inner.token_to_id(&pad_token).ok_or_else(|| Error::BadCheckpoint {
            path: path.to_path_buf(),
            message: format!("the pad token {pad_token:?} is not in the vocabulary"),
        })?;
        inner.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self { inner, pad_id })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of one prompt, special tokens included, unpadded.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(prompt, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `input_ids` and `attention_mask`, both `(B, L)` u32 on `device`, `L` the longest prompt.
    pub fn encode_batch(&self, prompts: &[&str], device: &Device) -> Result<(Tensor, Tensor)> {
        if prompts.is_empty() {
            return Err(Error::invalid("prompts", "no prompt to tokenize"));
        }
        let encodings = self.inner.encode_batch(prompts.to_vec(), true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let batch = encodings.len();
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * len);
        let mut mask = Vec::with_capacity(batch * len);
        for encoding in &encodings {
            if encoding.get_ids().len() != len {
                return Err(Error::Tokenizer(format!(
                    "padding gave {} tokens where the batch has {len}",
                    encoding.get_ids().len()
                )));
            }
            ids.extend_from_slice(encoding.get_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (batch, len), device)?;
        let mask = Tensor::from_vec(mask, (batch, len), device)?;
        Ok((ids, mask))
    }
}

/// The `pad_token` named by `tokenizer_config.json` or `special_tokens_map.json` in `dir`.
fn configured_pad_token(dir: &Path) -> Option<String> {
    ["tokenizer_config.json", "special_tokens_map.json"].iter().find_map(|file| {
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        match json.get("pad_token")? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
            _ => None,
        }
    })
}
