//! One process, several checkpoints: what `MusicGen::load_sharing` takes from models already loaded
//! (T5 and EnCodec with the same tensors) and that a model built that way generates exactly what it
//! generates loaded on its own.

use musicgen::{CancelToken, GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams, SharedParts};

use crate::util::{checkpoint, copy_checkpoint, copy_checkpoint_with};

fn track(model: &MusicGen) -> Vec<f32> {
    let sampling = SamplingParams { top_k: 8, ..SamplingParams::default() };
    let item = GenerationItem { prompt: "ambient piano".into(), sampling, seed: 11 };
    let request = GenerationRequest::new(vec![item], 0.4);
    let mut tracks = model.generate(&request, &mut |_| {}, &CancelToken::default()).unwrap();
    tracks.remove(0).channels.remove(0)
}

fn load(dir: &std::path::Path, loaded: &[&MusicGen]) -> MusicGen {
    MusicGen::load_sharing(dir.to_str().unwrap(), &LoadOptions::default(), loaded).unwrap()
}

#[test]
fn a_checkpoint_borrows_exactly_the_parts_it_has_in_common() {
    let options = LoadOptions::default();
    let first = load(&checkpoint("tiny-mono"), &[]);
    // A copy in another directory: the same T5 and EnCodec, so both are borrowed.
    let copy = copy_checkpoint("tiny-mono");
    let twin = load(copy.path(), &[&first]);
    assert_eq!(twin.shared_with(&first), SharedParts { text_encoder: true, codec: true });
    // The same checkpoint with one T5 weight changed keeps its own T5 and borrows EnCodec.
    let edited = copy_checkpoint_with("tiny-mono", |tensors| {
        let name = "text_encoder.encoder.block.0.layer.0.SelfAttention.q.weight";
        let weight = &tensors[name];
        tensors.insert(name.into(), (weight * 1.5).unwrap());
    });
    let retrained = load(edited.path(), &[&first, &twin]);
    assert_eq!(retrained.shared_with(&first), SharedParts { text_encoder: false, codec: true });
    // Another architecture: the fixtures' melody checkpoint was made with tiny-mono's T5 (as
    // musicgen-melody has t5-base) and an EnCodec of its own.
    let melody = load(&checkpoint("tiny-melody"), &[&first, &twin, &retrained]);
    assert_eq!(melody.shared_with(&first), SharedParts { text_encoder: true, codec: false });
    let melody_alone = MusicGen::load(checkpoint("tiny-melody").to_str().unwrap(), &options).unwrap();
    assert_eq!(track(&melody), track(&melody_alone));
    // A model loaded without fingerprints (`generate`, `bench`) is never matched.
    let alone = MusicGen::load(copy.path().to_str().unwrap(), &options).unwrap();
    assert_eq!(alone.shared_with(&first), SharedParts::default());

    // Borrowed parts give sample-for-sample the same audio as the model's own.
    assert_eq!(track(&twin), track(&alone));
    let retrained_alone = MusicGen::load(edited.path().to_str().unwrap(), &options).unwrap();
    let (own, borrowed) = (track(&retrained_alone), track(&retrained));
    assert_eq!(borrowed, own);
    assert_ne!(own, track(&first), "the edited T5 changes the track, so keeping it is visible");
    // The lender can go: what was borrowed stays valid.
    drop(first);
    assert_eq!(track(&twin), track(&alone));
}
