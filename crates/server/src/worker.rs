//! The one thread that owns the models ([`Engines`]). It claims batches of compatible jobs of its
//! models (by canonical id: jobs for another model stay queued for a server that runs it; the oldest
//! job picks the model, and its batch shares model, duration, continuation, melody and stride) from
//! the store, loads that model if it is not loaded, runs the (blocking) engine on them and records
//! the outcome; the async runtime only talks to it through the store, a wake-up [`Notify`] and the
//! registry of the running batch.
//!
//! Every batch is generated streaming (no second decode: the pieces end to end are the tracks), each
//! job's pieces published to its [`LiveTrack`] as they come, for `GET /jobs/{id}/stream`.
//!
//! A batch that continues audio reads it from the uploads store: its last 30 s at most prompt the
//! engine, and what comes before (the head of a long track being extended) is put back in front
//! of each track, untouched. A melody is read mixed to mono and lined up with the whole track.
//!
//! Cancellation: the API marks a job cancelled in the store first, then tells the registry (in this
//! process directly; from another machine through the store's change notifications); the worker
//! registers a batch first, then re-reads its jobs' statuses. Whichever comes second sees the other,
//! so no cancellation is lost. A progress write or heartbeat that finds a job no longer this worker's
//! (cancelled, or its lease lost) counts as a cancellation too. The engine's token is set only when
//! every job of the batch is cancelled (or at shutdown), since the other jobs' results are still wanted.
//!
//! Each worker has an id unique across machines and restarts (`host-pid-device`): its claims are
//! leases in the store, renewed by a heartbeat task on the runtime (the worker thread is busy in the
//! engine), and every write it makes is fenced by that id.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use musicgen::audio::{pcm16_bytes, Normalize, SampleFormat, StreamNormalizer};
use musicgen::request::{ENDLESS, MAX_MELODY_SECS};
use musicgen::{
    Audio, CancelToken, GenerationItem, GenerationRequest, LoadOptions, ModelInfo, MusicGen, Progress, SamplingParams,
    StreamOptions,
};

use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

use crate::engines::{Engines, LoadError};
use crate::events::Events;
use crate::job::{public_model_id, Job, JobStatus, UploadRef};
use crate::live::{LiveAudio, LiveTrack};
use crate::metrics::Metrics;
use crate::radio::{Radio, Station};
use crate::store::{AudioStore, JobStore, Outcome, Registration, StoreError, StoreResult};
use crate::upload::{melody_from, Plan, MAX_UPLOAD_SECS};

/// Progress is written and announced at most this often (the SSE contract is ~10 events/s).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// How long an idle worker sleeps before looking at the queue again without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Between two tries of a write the database refused for being unreachable.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// The worker thread's stack. The CUDA stack can need more than a spawned thread's default
/// 2 MiB (most likely the driver JIT-compiling a kernel module's PTX when it first loads): the
/// GPU test binary run on 8 threads segfaulted on 2 MiB stacks and passed on 64 MiB (2026-12-04,
/// H200, driver 580). Only the pages a thread touches are committed.
const WORKER_STACK_BYTES: usize = 64 << 20;

struct RunningBatch {
    ids: Vec<Uuid>,
    cancelled: HashSet<Uuid>,
    token: CancelToken,
}

impl RunningBatch {
    fn cancel(&mut self, id: Uuid) {
        if self.ids.contains(&id) {
            self.cancelled.insert(id);
            if self.cancelled.len() == self.ids.len() {
                self.token.cancel();
            }
        }
    }
}

/// The API's side of the worker.
#[derive(Clone, Default)]
pub struct WorkerHandle {
    wake: Arc<Notify>,
    running: Arc<Mutex<Option<RunningBatch>>>,
    stopping: Arc<AtomicBool>,
    /// Canonical ids of the models in memory now, for `GET /models`.
    loaded: Arc<Mutex<Vec<String>>>,
    /// The radio station this worker plays instead of jobs while it is listened to.
    pub radio: Radio,
}

impl WorkerHandle {
    fn registry(&self) -> MutexGuard<'_, Option<RunningBatch>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A job was queued: look at the queue now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The jobs of the running batch that nobody cancelled.
    fn live_ids(&self) -> Vec<Uuid> {
        match self.registry().as_ref() {
            Some(batch) => batch.ids.iter().copied().filter(|id| !batch.cancelled.contains(id)).collect(),
            None => Vec::new(),
        }
    }

    /// The store says `id` is cancelled; stop the engine if its whole batch now is.
    pub fn cancelled(&self, id: Uuid) {
        if let Some(batch) = self.registry().as_mut() {
            batch.cancel(id);
        }
    }

    /// Shutdown: the running step finishes, the batch's jobs go back to the queue, the thread ends.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(batch) = self.registry().as_ref() {
            batch.token.cancel();
        }
        self.wake.notify_one();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether the model with canonical id `id` is in memory (not unloaded for `--max-loaded`).
    pub fn is_loaded(&self, id: &str) -> bool {
        self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().any(|loaded| loaded == id)
    }

    fn set_loaded(&self, ids: Vec<String>) {
        *self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = ids;
    }
}

/// The worker threads of this process as the API sees them: one per device, none on an API-only node.
#[derive(Clone, Default)]
pub struct Workers {
    handles: Vec<WorkerHandle>,
}

impl Workers {
    pub fn new(handles: Vec<WorkerHandle>) -> Self {
        Workers { handles }
    }

    /// No worker in this process (`serve --no-worker`): jobs run on `dgx-music worker` processes.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// A job was queued: idle workers look at the queue now rather than at their next poll.
    pub fn wake(&self) {
        self.handles.iter().for_each(WorkerHandle::wake);
    }

    /// The store says `id` is cancelled: whichever worker runs it drops it.
    pub fn cancelled(&self, id: Uuid) {
        self.handles.iter().for_each(|handle| handle.cancelled(id));
    }

    pub fn stop(&self) {
        self.handles.iter().for_each(WorkerHandle::stop);
    }

    /// Whether some worker of this process has the model with canonical id `id` in memory.
    pub fn is_loaded(&self, id: &str) -> bool {
        self.handles.iter().any(|handle| handle.is_loaded(id))
    }

    /// The radio plays on the first worker: it holds a device for as long as it is listened to.
    pub fn radio(&self) -> Option<&Radio> {
        self.handles.first().map(|handle| &handle.radio)
    }
}

/// What the worker needs besides the model.
#[derive(Clone)]
pub struct WorkerContext {
    /// Names this worker's claims in the store: unique across machines and restarts.
    pub id: String,
    /// How often the heartbeat renews the leases (a third of the lease, so two may be missed).
    pub heartbeat: Duration,
    /// How long a write the database refused for being unreachable is tried again (the lease: past
    /// it the job is another worker's anyway).
    pub patience: Duration,
    pub jobs: Arc<dyn JobStore>,
    pub audio: Arc<dyn AudioStore>,
    pub uploads: Arc<dyn AudioStore>,
    pub events: Events,
    /// Where each running job's audio is published as it is made.
    pub live: LiveAudio,
    pub metrics: Arc<Metrics>,
    pub max_batch: usize,
    pub runtime: Handle,
}

pub struct SpawnedWorker {
    pub handle: WorkerHandle,
    /// The models' descriptions in the order given, or why one could not be loaded.
    pub loaded: oneshot::Receiver<Result<Vec<ModelInfo>, LoadError>>,
    pub thread: JoinHandle<()>,
}

/// Starts the worker thread; it loads every model first (keeping at most `max_loaded`) and
/// reports through `loaded`.
pub fn spawn(
    models: Vec<String>,
    max_loaded: usize,
    options: LoadOptions,
    context: WorkerContext,
) -> std::io::Result<SpawnedWorker> {
    let handle = WorkerHandle::default();
    let (loaded_tx, loaded) = oneshot::channel();
    let worker = Worker { handle: handle.clone(), context };
    let thread = std::thread::Builder::new()
        .name(format!("worker {}", worker.context.id))
        .stack_size(WORKER_STACK_BYTES)
        .spawn(move || {
            let loaded = worker.handle.clone();
            let on_change = Box::new(move |ids| loaded.set_loaded(ids));
            let engines = match Engines::load_all(&models, max_loaded, options, on_change) {
                Ok(engines) => engines,
                Err(err) => {
                    let _ = loaded_tx.send(Err(err));
                    return;
                }
            };
            let registration = Registration { worker: worker.context.id.clone(), models: engines.infos() };
            // Registered before anyone is told: an API node offers a model only once a worker runs it.
            if let Err(err) = worker.block_on(worker.context.jobs.heartbeat(&registration, &[])) {
                tracing::warn!(
                    "worker {}: cannot register its models yet: {err}; the heartbeat retries",
                    registration.worker
                );
            }
            let heartbeat =
                worker.context.runtime.spawn(heartbeat(worker.handle.clone(), worker.context.clone(), registration));
            if loaded_tx.send(Ok(engines.infos())).is_ok() {
                worker.run(engines);
            }
            heartbeat.abort();
            if let Err(err) = worker.block_on(worker.context.jobs.leave(&worker.context.id)) {
                tracing::warn!(
                    "worker {}: cannot unregister: {err}; its models are dropped once its lease passes",
                    worker.context.id
                );
            }
        })?;
    Ok(SpawnedWorker { handle, loaded, thread })
}

/// Renews the leases of the running batch and the worker's registration until aborted; a job the
/// store says is no longer this worker's is dropped (another worker may have it by now).
async fn heartbeat(handle: WorkerHandle, context: WorkerContext, registration: Registration) {
    let mut failing = false;
    loop {
        tokio::time::sleep(context.heartbeat).await;
        let holding = handle.live_ids();
        match context.jobs.heartbeat(&registration, &holding).await {
            Ok(held) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("worker {}: the store answers again", context.id);
                }
                for id in holding.into_iter().filter(|id| !held.contains(id)) {
                    tracing::warn!(
                        "worker {}: job {id} is no longer ours (cancelled, or our lease expired); dropping it",
                        context.id
                    );
                    handle.cancelled(id);
                }
            }
            Err(err) if !failing => {
                failing = true;
                tracing::warn!("worker {}: cannot renew its leases: {err}; retrying", context.id);
            }
            Err(_) => {}
        }
    }
}

struct Worker {
    handle: WorkerHandle,
    context: WorkerContext,
}

impl Worker {
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.context.runtime.block_on(future)
    }

    fn run(&self, mut engines: Engines) {
        let models = engines.ids();
        self.record_device_memory(&engines);
        while !self.handle.is_stopping() {
            if let Some(station) = self.handle.radio.waiting() {
                self.play_radio(&mut engines, &station);
                continue;
            }
            let claim = self.context.jobs.claim_batch(&self.context.id, &models, self.context.max_batch, Utc::now());
            match self.block_on(claim) {
                Ok(batch) if batch.is_empty() => {
                    let wake = self.handle.wake.clone();
                    self.block_on(async move {
                        let _ = tokio::time::timeout(IDLE_POLL, wake.notified()).await;
                    });
                }
                Ok(batch) => match engines.get(&batch[0].model) {
                    Some(Ok(engine)) => {
                        self.run_batch(engine, batch);
                        self.record_device_memory(&engines);
                    }
                    unloadable => {
                        let error = match unloadable {
                            Some(Err(err)) => crate::ServerError::from(err).to_string(),
                            _ => format!("this server does not run model {}", public_model_id(&batch[0].model)),
                        };
                        let ids: Vec<Uuid> = batch.iter().map(|job| job.id).collect();
                        self.fail_all(&ids, &error);
                        for id in ids {
                            self.context.events.changed(id);
                        }
                    }
                },
                Err(err) => {
                    tracing::error!("cannot read the queue: {err}; retrying in {} s", IDLE_POLL.as_secs());
                    std::thread::sleep(IDLE_POLL);
                }
            }
        }
    }

    /// Plays `station` until its listener leaves or the server stops; queued jobs wait meanwhile.
    fn play_radio(&self, engines: &mut Engines, station: &Station) {
        let ctx = &self.context;
        // Queued jobs' JSON now says why they wait: their event streams re-read on any announcement.
        ctx.events.changed(station.id);
        if let Some(audio) = station.take_audio() {
            let played = match engines.get(&station.model) {
                Some(Ok(engine)) => {
                    tracing::info!(radio = %station.id, "the radio starts: {:?}", station.prompt());
                    catch_unwind(AssertUnwindSafe(|| {
                        self.broadcast(engine, station, &audio).map_err(|e| e.to_string())
                    }))
                    .unwrap_or_else(|_| Err("the engine crashed".into()))
                }
                Some(Err(err)) => Err(crate::ServerError::from(err).to_string()),
                None => Err(format!("this server does not run model {}", public_model_id(&station.model))),
            };
            match played {
                Ok(windows) => {
                    tracing::info!(radio = %station.id, "the radio stops after {windows} window(s): its listener left")
                }
                // The listener hears the stream end; the log says why.
                Err(err) => tracing::error!(radio = %station.id, "the radio stops: {err}"),
            }
        }
        self.handle.radio.close(station.id);
        ctx.events.changed(station.id);
    }

    /// The endless track of `station`, piece by piece into `audio`; the windows it took.
    fn broadcast(
        &self,
        engine: &MusicGen,
        station: &Station,
        audio: &tokio::sync::mpsc::Sender<axum::body::Bytes>,
    ) -> musicgen::Result<usize> {
        let defaults = SamplingParams::default();
        let sampling = SamplingParams { top_k: defaults.top_k.min(engine.info().vocab_size), ..defaults };
        let item = GenerationItem { prompt: station.prompt(), sampling, seed: station.seed };
        let mut generation = engine.start(&GenerationRequest::new(vec![item], ENDLESS))?;
        generation.stream(StreamOptions::default())?;
        let mut normalizer = StreamNormalizer::new(Normalize::Loudness);
        // Checked after every step: generation stops within a step of the listener leaving.
        while station.is_listened() && !self.handle.is_stopping() {
            if let Some(prompt) = station.take_new_prompt() {
                generation.set_prompts(&[&prompt])?;
                tracing::info!(radio = %station.id, "the radio's next window follows {prompt:?}");
            }
            generation.step()?;
            if let Some(mut pieces) = generation.take_audio()? {
                normalizer.apply(&mut pieces[0])?;
                // Waits while the listener is behind; fails once it is gone.
                if audio.blocking_send(pcm16_bytes(&pieces[0]).into()).is_err() {
                    break;
                }
            }
        }
        Ok(generation.windows())
    }

    fn record_device_memory(&self, engines: &Engines) {
        if let Some((device, memory)) = engines.device_memory() {
            self.context.metrics.record_device_memory(&device, memory);
        }
    }

    fn run_batch(&self, engine: &MusicGen, batch: Vec<Job>) {
        let ctx = &self.context;
        let ids: Vec<Uuid> = batch.iter().map(|job| job.id).collect();
        let token = CancelToken::default();
        *self.handle.registry() =
            Some(RunningBatch { ids: ids.clone(), cancelled: HashSet::new(), token: token.clone() });
        if self.handle.is_stopping() {
            token.cancel();
        }
        let now = Utc::now();
        for job in &batch {
            let waited = job.started_at.unwrap_or(now) - job.created_at;
            ctx.metrics.record_queue_wait(&job.model, waited.as_seconds_f64());
        }
        for &id in &ids {
            match self.block_on(ctx.jobs.get(id)) {
                Ok(Some(job)) if job.status == JobStatus::Running => {}
                Ok(_) => self.handle.cancelled(id),
                Err(err) => tracing::warn!("cannot re-read job {id}: {err}"),
            }
            ctx.events.changed(id);
        }
        tracing::info!(
            jobs = ids.len(),
            duration = batch[0].params.duration_secs,
            "generating a batch of {} job(s): {}",
            ids.len(),
            ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ")
        );

        let (request, head) = match self.request_for(engine, &batch) {
            Ok(prepared) => prepared,
            Err(error) => {
                self.fail_all(&ids, &error);
                *self.handle.registry() = None;
                for &id in &ids {
                    ctx.events.changed(id);
                }
                return;
            }
        };
        let mut streams = self.open_live(engine.info(), &ids, &request, head.as_ref());
        let started = Instant::now();
        let mut last_report: Option<Instant> = None;
        let mut on_progress = |progress: &Progress| {
            let done = progress.step >= progress.total_steps;
            if !done && last_report.is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL) {
                return;
            }
            last_report = Some(Instant::now());
            for id in self.handle.live_ids() {
                match self.block_on(ctx.jobs.set_progress(id, &ctx.id, progress.fraction())) {
                    Ok(true) => {}
                    Ok(false) => self.handle.cancelled(id),
                    // A database restart: the job goes on; its lease outlives a short outage.
                    Err(err) => tracing::debug!("cannot record progress of job {id}: {err}"),
                }
                ctx.events.changed(id);
            }
        };
        let mut on_audio = |pieces: &[Audio]| self.publish(&ids, &mut streams, pieces);
        // Streaming always: the pieces end to end are the returned tracks, so it costs no second decode.
        let result = catch_unwind(AssertUnwindSafe(|| {
            engine.generate_streaming(&request, StreamOptions::default(), &mut on_progress, &mut on_audio, &token)
        }));
        let took = started.elapsed().as_secs_f64();

        match result {
            Ok(Ok(tracks)) if tracks.len() == batch.len() => {
                self.deliver(engine.info(), &ids, tracks, head.as_ref(), took)
            }
            Ok(Ok(tracks)) => {
                let error = format!("the engine returned {} tracks for {} prompts", tracks.len(), batch.len());
                self.fail_all(&ids, &error);
            }
            Ok(Err(musicgen::Error::Cancelled)) if self.handle.is_stopping() => self.requeue_all(&ids),
            Ok(Err(musicgen::Error::Cancelled)) => {
                tracing::info!("batch cancelled after {took:.1} s");
            }
            Ok(Err(err)) => self.fail_all(&ids, &err.to_string()),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                self.fail_all(&ids, &format!("the engine crashed: {message}"));
            }
        }
        *self.handle.registry() = None;
        // After the store has the outcome: a reader that finds no live track finds the final status.
        for &id in &ids {
            ctx.live.end(id);
            ctx.events.changed(id);
        }
    }

    /// A live track per job, starting with the head its stored track will start with.
    fn open_live(
        &self,
        info: &ModelInfo,
        ids: &[Uuid],
        request: &GenerationRequest,
        head: Option<&Audio>,
    ) -> Vec<(Arc<LiveTrack>, StreamNormalizer)> {
        let rate = info.sample_rate;
        // The engine's own length rule, so the WAV header is exact (jobs always end).
        let generated = request.samples(rate).unwrap_or(0);
        let head_len = head.map_or(0, Audio::len);
        let head_pcm = head.map(pcm16_bytes).unwrap_or_default();
        let channels = u16::try_from(info.audio_channels).unwrap_or(u16::MAX);
        let streams = ids
            .iter()
            .map(|&id| {
                let track = self.context.live.open(id, rate, channels, head_len + generated, head_pcm.clone());
                // Per track, as the stored file's normalisation: batching cannot change a stream's level.
                (track, StreamNormalizer::new(Normalize::Loudness))
            })
            .collect();
        for &id in ids {
            self.context.events.changed(id);
        }
        streams
    }

    /// Appends each job's next piece to its live track (a cancelled job's track ends instead).
    fn publish(
        &self,
        ids: &[Uuid],
        streams: &mut [(Arc<LiveTrack>, StreamNormalizer)],
        pieces: &[Audio],
    ) -> musicgen::Result<()> {
        let live = self.handle.live_ids();
        for ((&id, (track, normalizer)), piece) in ids.iter().zip(streams.iter_mut()).zip(pieces) {
            if !live.contains(&id) {
                self.context.live.end(id);
                continue;
            }
            let mut piece = piece.clone();
            normalizer.apply(&mut piece)?;
            track.push(&pcm16_bytes(&piece));
            self.context.events.changed(id);
        }
        Ok(())
    }

    /// The engine's request for a batch (its jobs share duration, continuation, melody and stride),
    /// and the head that goes back in front of each track.
    fn request_for(&self, engine: &MusicGen, batch: &[Job]) -> Result<(GenerationRequest, Option<Audio>), String> {
        let params = &batch[0].params;
        let items = batch.iter().map(|job| job.params.item.clone()).collect();
        let mut request = GenerationRequest::new(items, params.duration_secs);
        request.extend_stride_secs = params.extend_stride_secs;
        let info = engine.info();
        let mut head = None;
        if let Some(continued) = &params.continue_from {
            let audio = self.read_upload(
                continued,
                "the audio to continue",
                info.sample_rate,
                info.audio_channels,
                MAX_UPLOAD_SECS,
            )?;
            let plan = Plan::new(params.duration_secs, audio.len(), audio.sample_rate);
            let (kept, prompt) = plan.split(audio);
            request.duration_secs = plan.engine_duration_secs;
            request.continuation = Some(prompt);
            head = kept;
        }
        if let Some(melody) = &params.melody {
            let audio = self.read_upload(melody, "the melody", info.sample_rate, 1, MAX_MELODY_SECS)?;
            // The melody runs with the whole track; the engine starts after the head.
            let skip = head.as_ref().map_or(0, Audio::len);
            request.melody = Some(melody_from(audio, skip));
        }
        Ok((request, head))
    }

    /// An upload a batch uses, at `rate` with `channels`; `what` names it in job errors.
    fn read_upload(
        &self,
        used: &UploadRef,
        what: &str,
        rate: u32,
        channels: usize,
        max_secs: f64,
    ) -> Result<Audio, String> {
        match self.context.uploads.read(used.upload, rate, channels, max_secs) {
            Ok(Some(audio)) => Ok(audio),
            Ok(None) => Err(format!("{what} ({}) is missing from the data directory", used.filename)),
            Err(err) => {
                // Job errors reach clients, store errors may name paths: the details go to the log.
                tracing::error!("cannot read upload {}: {err}", used.upload);
                Err(format!("cannot read {what} ({}); the details are in the server log", used.filename))
            }
        }
    }

    /// `write` until it succeeds, fails for another reason than an unreachable database, or
    /// `patience` has passed: a database restart must not lose a finished job.
    fn persist<T>(&self, what: &str, mut write: impl FnMut() -> StoreResult<T>) -> StoreResult<T> {
        let started = Instant::now();
        loop {
            match write() {
                Err(StoreError::Unavailable(why)) if started.elapsed() < self.context.patience => {
                    tracing::warn!("worker {}: cannot record {what} yet ({why}); retrying", self.context.id);
                    std::thread::sleep(STORE_RETRY);
                }
                other => return other,
            }
        }
    }

    fn deliver(&self, info: &ModelInfo, ids: &[Uuid], tracks: Vec<Audio>, head: Option<&Audio>, took: f64) {
        let ctx = &self.context;
        let live = self.handle.live_ids();
        let mut completed = 0;
        let mut audio_seconds = 0.0;
        for (&id, mut track) in ids.iter().zip(tracks) {
            if !live.contains(&id) {
                continue;
            }
            // Checked right before the file is written: a job whose lease was lost meanwhile may be
            // another worker's by now, and its track must not be replaced.
            if let Ok(false) = self.block_on(ctx.jobs.set_progress(id, &ctx.id, 1.0)) {
                tracing::warn!(
                    "job {id} is no longer this worker's (cancelled, or its lease lost); its track is dropped"
                );
                continue;
            }
            // Same listening level as `dgx-music generate`; per track, so batching cannot change it.
            // The head of an extended track was normalised with that track and stays as it is.
            let stored = musicgen::audio::normalize(&mut track, Normalize::Loudness)
                .map_err(|err| err.to_string())
                .map(|()| match head {
                    Some(head) => prepend(head, track),
                    None => track,
                })
                .and_then(|track| {
                    let seconds = track.duration_secs();
                    ctx.audio.put(id, &track, SampleFormat::Pcm16).map(|()| seconds).map_err(|err| {
                        // Store errors may name paths, and job errors reach clients: they get the public words.
                        tracing::error!("cannot store the audio of job {id}: {err}");
                        format!("{}; the details are in the server log", err.public_message())
                    })
                });
            // The file is complete (renamed) before the store says so: a completed job always has audio.
            let outcome = match stored {
                Ok(audio_duration) => Outcome::Completed { audio_duration, generation_time: took },
                Err(err) => Outcome::Failed { error: format!("cannot store the audio: {err}") },
            };
            let produced = match &outcome {
                Outcome::Completed { audio_duration, .. } => Some(*audio_duration),
                Outcome::Failed { .. } => None,
            };
            let what = format!("the end of job {id}");
            match self.persist(&what, || self.block_on(ctx.jobs.finish(id, &ctx.id, outcome.clone(), Utc::now()))) {
                Ok(true) => {
                    if let Some(seconds) = produced {
                        // One line per completion: what tells, across machines, that no job ran twice.
                        tracing::info!("worker {} completed job {id}", ctx.id);
                        completed += 1;
                        audio_seconds += seconds;
                    }
                }
                Ok(false) => match self.block_on(ctx.jobs.get(id)) {
                    // Another worker completed it after this one's lease expired: the audio is its.
                    Ok(Some(job)) if job.status == JobStatus::Completed => {
                        tracing::warn!("job {id} was completed by another worker after this one lost its lease")
                    }
                    // Cancelled while the file was being written: nobody may see that audio.
                    _ => {
                        if let Err(err) = self.block_on(ctx.audio.delete(id)) {
                            tracing::warn!("cannot remove the audio of cancelled job {id}: {err}");
                        }
                    }
                },
                Err(err) => tracing::error!("cannot record the end of job {id}: {err}"),
            }
        }
        ctx.metrics.record_batch(&info.id, &info.device, took, completed, audio_seconds);
        tracing::info!("batch done in {took:.2} s: {completed} of {} job(s) completed", ids.len());
    }

    fn fail_all(&self, ids: &[Uuid], error: &str) {
        tracing::error!("batch failed: {error}");
        for &id in ids {
            let outcome = Outcome::Failed { error: error.to_string() };
            let finish = || self.block_on(self.context.jobs.finish(id, &self.context.id, outcome.clone(), Utc::now()));
            if let Err(err) = self.persist(&format!("the failure of job {id}"), finish) {
                tracing::error!("cannot record the failure of job {id}: {err}");
            }
        }
    }

    fn requeue_all(&self, ids: &[Uuid]) {
        for &id in ids {
            match self.block_on(self.context.jobs.requeue(id, &self.context.id)) {
                Ok(true) => tracing::info!("job {id} goes back to the queue for the next start"),
                Ok(false) => {}
                Err(err) => tracing::error!("cannot requeue job {id}: {err}; it is requeued at the next start"),
            }
        }
    }
}

/// `head` followed by `track`, channel by channel.
fn prepend(head: &Audio, track: Audio) -> Audio {
    let channels = head
        .channels
        .iter()
        .zip(track.channels)
        .map(|(head, tail)| head.iter().copied().chain(tail).collect())
        .collect();
    Audio { sample_rate: track.sample_rate, channels }
}
