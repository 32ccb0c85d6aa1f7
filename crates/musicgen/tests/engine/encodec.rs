//! EnCodec decoding: transformers parity on the committed fixtures, and the behaviour the
//! engine relies on (lengths, batching, both weight-norm namings, errors) on random weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use musicgen::internals::EncodecDecoder;
use musicgen::Checkpoint;
use musicgen::{internals::EncodecConfig, MusicgenConfig};

use crate::util::{checkpoint, reference, tensor_diff};

struct Fixture {
    config: MusicgenConfig,
    codec: EncodecDecoder,
}

fn load_fixture(name: &str) -> Fixture {
    let checkpoint = Checkpoint::open(&checkpoint(name)).unwrap();
    let config = checkpoint.config().clone();
    let vb = checkpoint.var_builder(DType::F32, &Device::Cpu).unwrap();
    let codec =
        EncodecDecoder::load(vb.pp("audio_encoder"), &config.audio_encoder, config.codebooks_per_channel()).unwrap();
    Fixture { config, codec }
}

fn assert_close(name: &str, actual: &Tensor, expected: &Tensor) {
    let diff = tensor_diff(actual, expected);
    println!("{name}: max abs diff {diff:e}");
    assert!(diff <= 1e-4, "{name}: max abs diff {diff} > 1e-4");
}

/// `encodec_codes -> encodec_audio` (random codes through the codec alone) and
/// `codes -> audio` (the codes transformers generated), stereo split even/odd per channel.
fn check_fixture(name: &str) {
    let f = load_fixture(name);
    let (r, _) = reference(name);
    let channels = f.config.decoder.audio_channels;
    let audio = f.codec.decode_interleaved(&r["encodec_codes"], channels).unwrap();
    assert_close(&format!("{name} encodec_codes"), &audio, &r["encodec_audio"]);
    let audio = f.codec.decode_interleaved(&r["codes"], channels).unwrap();
    assert_close(&format!("{name} codes"), &audio, &r["audio"]);
}

#[test]
fn encodec_decodes_like_transformers_mono() {
    check_fixture("tiny-mono");
}

#[test]
fn encodec_decodes_like_transformers_stereo() {
    check_fixture("tiny-stereo");
}

// ---- Random-weight codecs -------------------------------------------------------------------

/// How a synthetic checkpoint stores its convolution weights.
#[derive(Clone, Copy)]
enum Naming {
    Parametrizations,
    Legacy,
    Plain,
}

fn small_config(ratios: &[usize], pad_mode: &str) -> EncodecConfig {
    EncodecConfig {
        sampling_rate: 32000,
        hidden_size: 8,
        num_filters: 2,
        upsampling_ratios: ratios.to_vec(),
        use_causal_conv: false,
        pad_mode: pad_mode.into(),
        codebook_size: 16,
        ..EncodecConfig::default()
    }
}

/// Random weights in the checkpoint layout transformers uses for `cfg`, each weight-normed
/// convolution stored as a `(g, v)` pair so that every naming can be written from it.
struct RandomCodec {
    convs: Vec<(String, Tensor, Tensor)>,
    others: HashMap<String, Tensor>,
}

impl RandomCodec {
    fn new(cfg: &EncodecConfig, num_codebooks: usize) -> Self {
        let dev = Device::Cpu;
        let randn = |shape: &[usize], std: f64| Tensor::randn(0f32, std as f32, shape, &dev).unwrap();
        let mut convs = Vec::new();
        let mut others = HashMap::new();
        let mut conv = |name: String, shape: [usize; 3], others: &mut HashMap<String, Tensor>, out: usize| {
            let v = randn(&shape, 1.0);
            let g = (randn(&[shape[0], 1, 1], 0.2).abs().unwrap() + 0.5).unwrap();
            others.insert(format!("{name}.bias"), randn(&[out], 0.1));
            convs.push((name, g, v));
        };
        let d = "decoder.layers";
        let mut channels = cfg.num_filters << cfg.upsampling_ratios.len();
        conv(format!("{d}.0.conv"), [channels, cfg.hidden_size, cfg.kernel_size], &mut others, channels);
        for l in 0..cfg.num_lstm_layers {
            let scale = 1.0 / (channels as f64).sqrt();
            for (kind, shape) in
                [("weight_ih", vec![4 * channels, channels]), ("weight_hh", vec![4 * channels, channels])]
            {
                others.insert(format!("{d}.1.lstm.{kind}_l{l}"), randn(&shape, scale));
            }
            for kind in ["bias_ih", "bias_hh"] {
                others.insert(format!("{d}.1.lstm.{kind}_l{l}"), randn(&[4 * channels], 0.1));
            }
        }
        let mut index = 2;
        for &ratio in &cfg.upsampling_ratios {
            let half = channels / 2;
            conv(format!("{d}.{}.conv", index + 1), [channels, half, 2 * ratio], &mut others, half);
            for j in 0..cfg.num_residual_layers {
                let block = format!("{d}.{}", index + 2 + j);
                let hidden = half / cfg.compress;
                conv(format!("{block}.block.1.conv"), [hidden, half, cfg.residual_kernel_size], &mut others, hidden);
                conv(format!("{block}.block.3.conv"), [half, hidden, 1], &mut others, half);
                if cfg.use_conv_shortcut {
                    conv(format!("{block}.shortcut.conv"), [half, half, 1], &mut others, half);
                }
            }
            channels = half;
            index += 2 + cfg.num_residual_layers;
        }
        let audio = cfg.audio_channels;
        conv(format!("{d}.{}.conv", index + 1), [audio, cfg.num_filters, cfg.last_kernel_size], &mut others, audio);
        for k in 0..num_codebooks {
            others.insert(
                format!("quantizer.layers.{k}.codebook.embed"),
                randn(&[cfg.codebook_size, cfg.hidden_size], 1.0),
            );
        }
        Self { convs, others }
    }

    fn tensors(&self, naming: Naming) -> HashMap<String, Tensor> {
        let mut tensors = self.others.clone();
        for (name, g, v) in &self.convs {
            match naming {
                Naming::Parametrizations => {
                    tensors.insert(format!("{name}.parametrizations.weight.original0"), g.clone());
                    tensors.insert(format!("{name}.parametrizations.weight.original1"), v.clone());
                }
                Naming::Legacy => {
                    tensors.insert(format!("{name}.weight_g"), g.clone());
                    tensors.insert(format!("{name}.weight_v"), v.clone());
                }
                Naming::Plain => {
                    let norm = v.sqr().unwrap().sum_keepdim((1, 2)).unwrap().sqrt().unwrap();
                    tensors
                        .insert(format!("{name}.weight"), v.broadcast_mul(&g.broadcast_div(&norm).unwrap()).unwrap());
                }
            }
        }
        tensors
    }

    fn load(&self, cfg: &EncodecConfig, naming: Naming, num_codebooks: usize) -> EncodecDecoder {
        let vb = VarBuilder::from_tensors(self.tensors(naming), DType::F32, &Device::Cpu);
        EncodecDecoder::load(vb, cfg, num_codebooks).unwrap()
    }
}

fn random_codes(batch: usize, codebooks: usize, frames: usize, codebook_size: usize) -> Tensor {
    let values: Vec<u32> = (0..batch * codebooks * frames).map(|i| ((i * 7919 + 13) % codebook_size) as u32).collect();
    Tensor::from_vec(values, (batch, codebooks, frames), &Device::Cpu).unwrap()
}

#[test]
fn encodec_output_is_frames_times_hop_length_for_any_frame_count() {
    for (ratios, pad_mode) in [(&[8, 5, 4, 4][..], "reflect"), (&[3, 2][..], "reflect"), (&[3, 2][..], "constant")] {
        let cfg = small_config(ratios, pad_mode);
        let codec = RandomCodec::new(&cfg, 4).load(&cfg, Naming::Parametrizations, 4);
        for frames in [1, 2, 3, 4, 7, 50] {
            let audio = codec.decode(&random_codes(1, 4, frames, cfg.codebook_size)).unwrap();
            assert_eq!(audio.dims(), [1, 1, frames * cfg.hop_length()], "ratios {ratios:?}, {frames} frames");
            let finite = audio.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite());
            assert!(finite, "ratios {ratios:?}, {frames} frames: non-finite samples");
        }
    }
}

#[test]
fn encodec_every_weight_norm_naming_decodes_the_same() {
    let cfg = small_config(&[4, 2], "reflect");
    let random = RandomCodec::new(&cfg, 2);
    let codes = random_codes(1, 2, 9, cfg.codebook_size);
    let reference = random.load(&cfg, Naming::Parametrizations, 2).decode(&codes).unwrap();
    let legacy = random.load(&cfg, Naming::Legacy, 2).decode(&codes).unwrap();
    let plain = random.load(&cfg, Naming::Plain, 2).decode(&codes).unwrap();
    assert_eq!(tensor_diff(&reference, &legacy), 0.0);
    assert!(tensor_diff(&reference, &plain) < 1e-5);
}

#[test]
fn encodec_a_batch_decodes_as_its_items_alone() {
    let cfg = small_config(&[4, 2], "reflect");
    let codec = RandomCodec::new(&cfg, 4).load(&cfg, Naming::Legacy, 4);
    let codes = random_codes(3, 4, 11, cfg.codebook_size);
    let batch = codec.decode(&codes).unwrap();
    for i in 0..3 {
        let alone = codec.decode(&codes.narrow(0, i, 1).unwrap()).unwrap();
        assert!(tensor_diff(&batch.narrow(0, i, 1).unwrap(), &alone) < 1e-6, "item {i}");
    }
    // i64 codes, as transformers and the fixtures store them, decode identically.
    let wide = codec.decode(&codes.to_dtype(DType::I64).unwrap()).unwrap();
    assert_eq!(tensor_diff(&batch, &wide), 0.0);
}

#[test]
fn encodec_interleaved_codebooks_decode_per_channel() {
    let cfg = small_config(&[4, 2], "reflect");
    let codec = RandomCodec::new(&cfg, 4).load(&cfg, Naming::Parametrizations, 4);
    let codes = random_codes(2, 8, 5, cfg.codebook_size);
    let stereo = codec.decode_interleaved(&codes, 2).unwrap();
    assert_eq!(stereo.dims(), [2, 2, 5 * cfg.hop_length()]);
    let even = Tensor::new(&[0u32, 2, 4, 6], &Device::Cpu).unwrap();
    let odd = Tensor::new(&[1u32, 3, 5, 7], &Device::Cpu).unwrap();
    let left = codec.decode(&codes.index_select(&even, 1).unwrap()).unwrap();
    let right = codec.decode(&codes.index_select(&odd, 1).unwrap()).unwrap();
    assert!(tensor_diff(&stereo.narrow(1, 0, 1).unwrap(), &left) < 1e-6);
    assert!(tensor_diff(&stereo.narrow(1, 1, 1).unwrap(), &right) < 1e-6);
    assert!(codec.decode_interleaved(&codes, 3).is_err());
}

#[test]
fn encodec_fewer_codebooks_than_loaded_decode_with_the_first_ones() {
    let cfg = small_config(&[2], "reflect");
    let random = RandomCodec::new(&cfg, 4);
    let codes = random_codes(1, 2, 6, cfg.codebook_size);
    let from_four = random.load(&cfg, Naming::Plain, 4).decode(&codes).unwrap();
    let from_two = random.load(&cfg, Naming::Plain, 2).decode(&codes).unwrap();
    assert_eq!(tensor_diff(&from_four, &from_two), 0.0);
}

#[test]
fn encodec_bad_codes_are_errors_that_say_what_is_wrong() {
    let cfg = small_config(&[2], "reflect");
    let codec = RandomCodec::new(&cfg, 4).load(&cfg, Naming::Legacy, 4);
    let dev = Device::Cpu;
    // MusicGen's pad token is codebook_size: left in by mistake, it must not index past the end.
    let pad = Tensor::from_vec(vec![1u32, 2, 16, 3], (1, 1, 4), &dev).unwrap();
    let err = codec.decode(&pad).unwrap_err().to_string();
    assert!(err.contains("code 16") && err.contains("frame 2") && err.contains("0..16"), "{err}");
    let negative = Tensor::from_vec(vec![-1i64], (1, 1, 1), &dev).unwrap();
    assert!(codec.decode(&negative).unwrap_err().to_string().contains("code -1"));
    let too_many = random_codes(1, 5, 3, cfg.codebook_size);
    assert!(codec.decode(&too_many).unwrap_err().to_string().contains("5 codebooks"));
    let floats = Tensor::zeros((1, 1, 3), DType::F32, &dev).unwrap();
    assert!(codec.decode(&floats).unwrap_err().to_string().contains("F32"));
    let empty = Tensor::zeros((1, 1, 0), DType::U32, &dev).unwrap();
    assert!(codec.decode(&empty).is_err());
}

#[test]
fn encodec_a_missing_weight_is_named() {
    let cfg = small_config(&[2], "reflect");
    let mut tensors = RandomCodec::new(&cfg, 1).tensors(Naming::Legacy);
    tensors.remove("decoder.layers.3.conv.weight_v");
    let tensors = tensors.into_iter().map(|(name, t)| (format!("audio_encoder.{name}"), t)).collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let err = EncodecDecoder::load(vb.pp("audio_encoder"), &cfg, 1).unwrap_err().to_string();
    // The prefix is part of the name so the user can find it in the checkpoint.
    assert!(err.contains("audio_encoder.decoder.layers.3.conv"), "{err}");
}

#[test]
fn encodec_unsupported_settings_are_refused_by_name() {
    let dev = Device::Cpu;
    let vb = VarBuilder::zeros(DType::F32, &dev);
    type Edit = fn(&mut EncodecConfig);
    let cases: [(&str, Edit); 5] = [
        ("time_group_norm", |c| c.norm_type = "time_group_norm".into()),
        ("replicate", |c| c.pad_mode = "replicate".into()),
        ("codebook_dim 4", |c| c.codebook_dim = Some(4)),
        ("trim_right_ratio 0.5", |c| c.trim_right_ratio = 0.5),
        ("compress 0", |c| c.compress = 0),
    ];
    for (needle, edit) in cases {
        let mut cfg = small_config(&[2], "reflect");
        edit(&mut cfg);
        let err = EncodecDecoder::load(vb.clone(), &cfg, 4).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}
