//! Checkpoints, tokenizer and hub resolution against the fixtures made by tools/make_fixtures.py
//! (tiny random MusicGen checkpoints saved by transformers 5.17, plus the legacy layouts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use musicgen::hub::{self, HubSettings};
use musicgen::internals::T5Encoder;
use musicgen::internals::Tokenizer;
use musicgen::Error;
use musicgen::{internals::WeightFormat, Checkpoint};

use crate::util::{checkpoint, copy_checkpoint, copy_checkpoint_with, prompts, reference, tensor_diff};

fn as_u32(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::U32).unwrap().to_vec2().unwrap()
}

fn open_err(dir: &Path) -> Error {
    Checkpoint::open(dir).expect_err("the checkpoint should be refused")
}

/// The error of loading the T5 encoder of a checkpoint that opens but holds a bad tensor.
fn load_t5_err(dir: &Path) -> Error {
    let ckpt = Checkpoint::open(dir).unwrap();
    let vb = ckpt.var_builder(DType::F32, &Device::Cpu).unwrap();
    T5Encoder::load(vb.pp("text_encoder"), &ckpt.config().text_encoder)
        .map(|_| ())
        .map_err(|e| ckpt.load_error(e))
        .expect_err("the tensor should be refused")
}

#[test]
fn tokenizer_matches_transformers_padding_and_eos() {
    for name in ["tiny-mono", "tiny-stereo"] {
        let ckpt = Checkpoint::open(&checkpoint(name)).unwrap();
        let tokenizer = Tokenizer::from_file(ckpt.tokenizer_path()).unwrap();
        let (reference, json) = reference(name);
        for (prompt_key, suffix) in [("prompts", ""), ("prompts_single", "_single")] {
            let prompts = prompts(&json, prompt_key);
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            let (ids, mask) = tokenizer.encode_batch(&refs, &Device::Cpu).unwrap();
            assert_eq!(ids.dtype(), DType::U32);
            assert_eq!(as_u32(&ids), as_u32(&reference[&format!("input_ids{suffix}")]), "{name} {prompt_key}");
            assert_eq!(as_u32(&mask), as_u32(&reference[&format!("attention_mask{suffix}")]), "{name} {prompt_key}");
        }
        // T5 appends </s> (id 1) and pads with <pad> (id 0) on the right.
        let ids = tokenizer.encode("lofi beat").unwrap();
        assert_eq!(ids.last(), Some(&1));
        assert_eq!(tokenizer.pad_id(), 0);
    }
}

#[test]
fn tokenizer_refuses_an_empty_batch() {
    let tokenizer = Tokenizer::from_file(&checkpoint("tiny-mono").join("tokenizer.json")).unwrap();
    assert!(tokenizer.encode_batch(&[], &Device::Cpu).is_err());
}

/// Names as transformers 5.x writes them: weight norm as parametrizations, the T5 embedding as `shared`.
fn canonical(name: &str) -> String {
    if name == "text_encoder.encoder.embed_tokens.weight" {
        return "text_encoder.shared.weight".into();
    }
    name.replace(".weight_g", ".parametrizations.weight.original0")
        .replace(".weight_v", ".parametrizations.weight.original1")
}

fn all_tensors(ckpt: &Checkpoint) -> BTreeMap<String, Tensor> {
    let vb = ckpt.var_builder(DType::F32, &Device::Cpu).unwrap();
    let mut tensors = BTreeMap::new();
    for name in ckpt.tensor_names() {
        let tensor = vb.get_unchecked(&name).unwrap();
        if let Some(previous) = tensors.insert(canonical(&name), tensor.clone()) {
            assert_eq!(tensor_diff(&previous, &tensor), 0.0, "tied copies of {name} differ");
        }
    }
    tensors
}

#[test]
fn the_three_layouts_hold_the_same_tensors() {
    let mono = Checkpoint::open(&checkpoint("tiny-mono")).unwrap();
    let legacy = Checkpoint::open(&checkpoint("tiny-mono-legacy")).unwrap();
    let bin = Checkpoint::open(&checkpoint("tiny-mono-bin")).unwrap();
    assert_eq!(mono.format(), WeightFormat::Safetensors);
    assert_eq!(legacy.format(), WeightFormat::ShardedSafetensors);
    assert_eq!(legacy.weight_files().len(), 2);
    assert_eq!(bin.format(), WeightFormat::PytorchBin);
    assert!(legacy.tensor_names().iter().any(|n| n.ends_with(".weight_g")));
    assert!(mono.tensor_names().iter().any(|n| n.ends_with(".parametrizations.weight.original0")));

    let expected = all_tensors(&mono);
    assert!(expected.len() > 100, "only {} tensors", expected.len());
    for other in [&legacy, &bin] {
        let got = all_tensors(other);
        assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{:?}", other.dir());
        for (name, tensor) in &expected {
            assert_eq!(tensor_diff(tensor, &got[name]), 0.0, "{name} differs in {:?}", other.dir());
        }
    }
    // Both config dialects describe the same model.
    assert_eq!(format!("{:?}", mono.config().decoder), format!("{:?}", legacy.config().decoder));
    assert_eq!(
        format!("{:?}", mono.config().text_encoder.d_model),
        format!("{:?}", legacy.config().text_encoder.d_model)
    );
    assert_eq!(mono.parameter_count(), bin.parameter_count());
}

#[test]
fn var_builder_converts_dtype() {
    let ckpt = Checkpoint::open(&checkpoint("tiny-mono")).unwrap();
    let vb = ckpt.var_builder(DType::BF16, &Device::Cpu).unwrap();
    let t =
        vb.get((32, 4), "text_encoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight").unwrap();
    assert_eq!(t.dtype(), DType::BF16);
}

#[test]
fn generation_config_with_fallbacks_to_the_decoder() {
    let ckpt = Checkpoint::open(&checkpoint("tiny-mono")).unwrap();
    let g = ckpt.generation();
    assert_eq!((g.decoder_start_token_id, g.pad_token_id), (64, 64));
    assert_eq!(g.guidance_scale, Some(3.0));
    assert_eq!(g.top_k, Some(250));
    assert_eq!(g.max_length, Some(1500));

    let tmp = copy_checkpoint("tiny-mono");
    std::fs::remove_file(tmp.path().join("generation_config.json")).unwrap();
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let g = ckpt.generation();
    assert_eq!((g.decoder_start_token_id, g.pad_token_id), (64, 64));
    assert_eq!(g.guidance_scale, None);

    std::fs::write(tmp.path().join("generation_config.json"), "{not json").unwrap();
    let err = open_err(tmp.path());
    assert!(matches!(&err, Error::BadCheckpoint { path, .. } if path.ends_with("generation_config.json")), "{err}");
}

#[test]
fn missing_files_are_named() {
    for (file, must_mention) in [
        ("config.json", "config.json"),
        ("tokenizer.json", "tokenizer.json"),
        ("model.safetensors", "model.safetensors"),
    ] {
        let tmp = copy_checkpoint("tiny-mono");
        std::fs::remove_file(tmp.path().join(file)).unwrap();
        let err = open_err(tmp.path());
        assert!(matches!(err, Error::MissingFile { .. }), "{file}: {err}");
        assert!(err.to_string().contains(must_mention), "{err}");
    }
    let err = open_err(&checkpoint("no-such-fixture"));
    assert!(err.to_string().contains("hub id"), "{err}");

    let tmp = copy_checkpoint("tiny-mono-legacy");
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = open_err(tmp.path());
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn corrupt_safetensors_are_refused_with_the_file_name() {
    let tmp = copy_checkpoint("tiny-mono");
    let file = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = open_err(tmp.path());
    assert!(matches!(&err, Error::BadCheckpoint { path, .. } if *path == file), "{err}");
    assert!(err.to_string().contains("truncated or corrupt"), "{err}");

    std::fs::write(&file, b"this is not a safetensors file").unwrap();
    assert!(matches!(open_err(tmp.path()), Error::BadCheckpoint { .. }));
}

#[test]
fn a_wrong_tensor_shape_names_tensor_and_shapes() {
    let name = "text_encoder.encoder.block.1.layer.1.DenseReluDense.wi.weight";
    let tmp = copy_checkpoint_with("tiny-mono", |tensors| {
        tensors.insert(name.to_string(), Tensor::zeros((48, 32), DType::F32, &Device::Cpu).unwrap());
    });
    let file = tmp.path().join("model.safetensors");
    let err = load_t5_err(tmp.path());
    let message = err.to_string();
    assert!(matches!(&err, Error::BadCheckpoint { path, .. } if *path == file), "{message}");
    assert!(message.contains(name) && message.contains("[48, 32]") && message.contains("[64, 32]"), "{message}");
}

#[test]
fn a_missing_tensor_is_a_bad_checkpoint() {
    let tmp = copy_checkpoint_with("tiny-mono", |tensors| {
        tensors.remove("text_encoder.encoder.final_layer_norm.weight").unwrap();
    });
    let err = load_t5_err(tmp.path());
    assert!(matches!(err, Error::BadCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("text_encoder.encoder.final_layer_norm.weight"), "{err}");
}

#[test]
fn unknown_architectures_are_refused_by_name() {
    let tmp = copy_checkpoint("tiny-mono");
    let path = tmp.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["model_type"] = "musicgen_melody".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let err = open_err(tmp.path());
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("musicgen_melody"), "{err}");

    config["model_type"] = "musicgen".into();
    config["text_encoder"]["feed_forward_proj"] = "gated-mish".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let err = open_err(tmp.path());
    assert!(err.to_string().contains("mish"), "{err}");

    std::fs::write(&path, "{\"model_type\": ").unwrap();
    let err = open_err(tmp.path());
    assert!(matches!(&err, Error::BadCheckpoint { path: p, .. } if *p == path), "{err}");
}

#[test]
fn local_directories_resolve_to_themselves() {
    let dir = checkpoint("tiny-mono");
    let settings = HubSettings { cache_dir: PathBuf::from("/nonexistent"), offline: true };
    assert_eq!(hub::resolve(dir.to_str().unwrap(), &settings, None).unwrap(), dir);
    let err = hub::resolve("./no/such/dir", &settings, None).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
}

#[test]
fn offline_without_a_cached_copy_advises_a_local_directory() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap().to_string();
    let settings = HubSettings::from_lookup(|key| match key {
        "HF_HUB_OFFLINE" => Some("1".into()),
        "HF_HUB_CACHE" => Some(cache_dir.clone()),
        _ => None,
    });
    assert!(settings.offline);
    let err = hub::resolve("facebook/musicgen-small", &settings, None).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Download { .. }), "{message}");
    assert!(message.contains("--model /path/to/dir") && message.contains("HF_HUB_OFFLINE"), "{message}");
    // Nothing was written: offline means no network and no cache entries.
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}

/// Lays a fixture out as huggingface_hub does: blobs, a snapshot of symlinks, refs/main.
fn fake_cache(cache: &Path, id: &str, fixture_name: &str) -> PathBuf {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, entry) in std::fs::read_dir(checkpoint(fixture_name)).unwrap().enumerate() {
        let entry = entry.unwrap();
        let blob = format!("blob{i:04}");
        std::fs::copy(entry.path(), repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot.join(entry.file_name())).unwrap();
    }
    snapshot
}

#[test]
fn offline_resolution_lists_and_removal_use_the_hf_cache() {
    let cache = tempfile::tempdir().unwrap();
    let snapshot = fake_cache(cache.path(), "someone/musicgen-tiny", "tiny-mono-legacy");
    let settings = HubSettings { cache_dir: cache.path().to_path_buf(), offline: true };

    let dir = hub::resolve("someone/musicgen-tiny", &settings, None).unwrap();
    assert_eq!(dir, snapshot);
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert_eq!(ckpt.format(), WeightFormat::ShardedSafetensors);

    let listed = hub::cached_models(&settings).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, "someone/musicgen-tiny");
    assert_eq!(listed[0].path, snapshot);
    assert!(listed[0].supported);
    assert!(listed[0].size_bytes > 1_000_000, "{}", listed[0].size_bytes);

    let freed = hub::remove_cached("someone/musicgen-tiny", &settings).unwrap();
    assert!(freed >= listed[0].size_bytes, "{freed}");
    assert!(hub::cached_models(&settings).unwrap().is_empty());
    let err = hub::remove_cached("someone/musicgen-tiny", &settings).unwrap_err();
    assert!(err.to_string().contains("models list"), "{err}");
}

#[test]
fn melody_checkpoints_have_short_names_and_download_like_the_others() {
    assert_eq!(hub::hub_id("melody").as_deref(), Some("facebook/musicgen-melody"));
    assert_eq!(hub::hub_id("stereo-melody-large").as_deref(), Some("facebook/musicgen-stereo-melody-large"));
    // Offline and not cached: the same clear download error as any other model, not a refusal.
    let cache = tempfile::tempdir().unwrap();
    let settings = HubSettings { cache_dir: cache.path().to_path_buf(), offline: true };
    let err = hub::resolve("melody", &settings, None).unwrap_err();
    assert!(matches!(err, Error::Download { .. }), "{err}");
}
