//! The checkpoints one server offers, and which of them the worker holds loaded: at most
//! `max_loaded` at once, the least recently used unloaded to make room for the one a batch needs.
//! Checkpoints that have the same T5 or EnCodec (every facebook/musicgen-* text model has t5-base
//! and the 32 kHz EnCodec) keep one copy of it between them (`MusicGen::load_sharing`).

use musicgen::{LoadOptions, ModelInfo, MusicGen};

/// Why the models could not be loaded.
pub enum LoadError {
    /// The engine's error for `model` (the `--model` value as given).
    Engine { model: String, source: musicgen::Error },
    /// Two `--model` values name one checkpoint (canonical id `id`).
    Twice { first: String, second: String, id: String },
}

impl From<LoadError> for crate::ServerError {
    fn from(err: LoadError) -> Self {
        match err {
            LoadError::Engine { model, source } => crate::ServerError::Model { model, source },
            LoadError::Twice { first, second, id } => crate::ServerError::ModelTwice { first, second, id },
        }
    }
}

struct Slot {
    /// The `--model` value, to load it again after it was unloaded.
    source: String,
    info: ModelInfo,
    engine: Option<MusicGen>,
    /// When a batch last used it, on [`Engines::clock`].
    last_used: u64,
}

/// Told the canonical ids of the loaded models whenever they change.
pub type OnChange = Box<dyn Fn(Vec<String>) + Send>;

pub struct Engines {
    slots: Vec<Slot>,
    max_loaded: usize,
    options: LoadOptions,
    clock: u64,
    on_change: OnChange,
}

impl Engines {
    /// Loads each of `models` in order (so each is checked and described at start-up), keeping at
    /// most `max_loaded` loaded: with fewer, the first ones are unloaded again as the later ones load.
    pub fn load_all(
        models: &[String],
        max_loaded: usize,
        options: LoadOptions,
        on_change: OnChange,
    ) -> Result<Self, LoadError> {
        let slots = Vec::with_capacity(models.len());
        let mut engines = Engines { slots, max_loaded: max_loaded.max(1), options, clock: 0, on_change };
        for model in models {
            let engine = engines.load(model)?;
            let info = engine.info().clone();
            if let Some(same) = engines.slots.iter().find(|slot| slot.info.id == info.id) {
                return Err(LoadError::Twice { first: same.source.clone(), second: model.clone(), id: info.id });
            }
            engines.clock += 1;
            engines.slots.push(Slot { source: model.clone(), info, engine: Some(engine), last_used: engines.clock });
            (engines.on_change)(engines.loaded());
        }
        Ok(engines)
    }

    /// What each model is, in the order given (the first is the default).
    pub fn infos(&self) -> Vec<ModelInfo> {
        self.slots.iter().map(|slot| slot.info.clone()).collect()
    }

    /// The canonical ids of the models, the jobs the worker may claim.
    pub fn ids(&self) -> Vec<String> {
        self.slots.iter().map(|slot| slot.info.id.clone()).collect()
    }

    /// The engine of the model with canonical id `id`, loaded first if it is not (unloading the
    /// least recently used one when `max_loaded` are). `None` for a model this server does not offer.
    pub fn get(&mut self, id: &str) -> Option<Result<&MusicGen, LoadError>> {
        let index = self.slots.iter().position(|slot| slot.info.id == id)?;
        self.clock += 1;
        self.slots[index].last_used = self.clock;
        if self.slots[index].engine.is_none() {
            let source = self.slots[index].source.clone();
            let loaded = self.load(&source).map(|engine| self.slots[index].engine = Some(engine));
            (self.on_change)(self.loaded());
            if let Err(err) = loaded {
                return Some(Err(err));
            }
        }
        self.slots[index].engine.as_ref().map(Ok)
    }

    /// Loads `model`, borrowing what it shares from the loaded ones, after making room for it.
    fn load(&mut self, model: &str) -> Result<MusicGen, LoadError> {
        let loaded = self.slots.iter().filter(|slot| slot.engine.is_some()).count();
        if loaded >= self.max_loaded {
            let oldest = self.slots.iter_mut().filter(|slot| slot.engine.is_some()).min_by_key(|slot| slot.last_used);
            if let Some(slot) = oldest {
                tracing::info!("unloading model {} to make room (--max-loaded {})", slot.info.id, self.max_loaded);
                slot.engine = None;
            }
        }
        let lenders: Vec<&MusicGen> = self.slots.iter().filter_map(|slot| slot.engine.as_ref()).collect();
        tracing::info!(
            "loading model {model} on {} ({}, {} weights)",
            self.options.device,
            self.options.dtype,
            self.options.weights
        );
        let engine = MusicGen::load_sharing(model, &self.options, &lenders)
            .map_err(|source| LoadError::Engine { model: model.to_string(), source })?;
        for lender in &lenders {
            let shared = engine.shared_with(lender);
            let parts = match (shared.text_encoder, shared.codec) {
                (true, true) => "its T5 encoder and EnCodec",
                (true, false) => "its T5 encoder",
                (false, true) => "its EnCodec",
                (false, false) => continue,
            };
            tracing::info!("model {} uses {parts} from {}: one copy in memory", engine.info().id, lender.info().id);
        }
        let info = engine.info();
        tracing::info!(
            "model {} loaded on {} ({}): {} Hz, {} channel(s), {} codebooks{}",
            info.id,
            info.device,
            info.dtype,
            info.sample_rate,
            info.audio_channels,
            info.num_codebooks,
            if info.melody { ", follows a melody" } else { "" }
        );
        Ok(engine)
    }

    /// The memory of the GPU the models run on, with the device's description; `None` on the CPU.
    pub fn device_memory(&self) -> Option<(String, musicgen::DeviceMemory)> {
        let engine = self.slots.iter().find_map(|slot| slot.engine.as_ref())?;
        Some((engine.info().device.clone(), engine.device_memory()?))
    }

    /// The canonical ids of the models loaded now.
    pub fn loaded(&self) -> Vec<String> {
        self.slots.iter().filter(|slot| slot.engine.is_some()).map(|slot| slot.info.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../musicgen/tests/fixtures").join(name);
        dir.join("checkpoint").display().to_string()
    }

    fn id(name: &str) -> String {
        std::path::Path::new(&fixture(name)).canonicalize().unwrap().display().to_string()
    }

    #[test]
    fn the_least_recently_used_model_makes_room() {
        let models = [fixture("tiny-mono"), fixture("tiny-stereo"), fixture("tiny-melody")];
        let mut engines = Engines::load_all(&models, 2, LoadOptions::default(), Box::new(|_| {})).ok().unwrap();
        let (mono, stereo, melody) = (id("tiny-mono"), id("tiny-stereo"), id("tiny-melody"));
        assert_eq!(engines.ids(), [mono.clone(), stereo.clone(), melody.clone()]);
        assert_eq!(engines.loaded(), [stereo.clone(), melody.clone()], "loading the third unloaded the first");
        assert_eq!(engines.get(&stereo).unwrap().ok().unwrap().info().id, stereo);
        assert_eq!(engines.get(&mono).unwrap().ok().unwrap().info().audio_channels, 1);
        assert_eq!(engines.loaded(), [mono.clone(), stereo.clone()], "melody was used least recently");
        assert!(engines.get("facebook/musicgen-small").is_none(), "not offered here");
    }

    #[test]
    fn a_model_given_twice_is_refused() {
        let copy = fixture("tiny-mono") + "/";
        let err = Engines::load_all(&[fixture("tiny-mono"), copy], 2, LoadOptions::default(), Box::new(|_| {}));
        let err = err.err().unwrap();
        let message = crate::ServerError::from(err).to_string();
        assert!(message.contains("same checkpoint") && message.contains("tiny-mono"), "{message}");
    }
}
