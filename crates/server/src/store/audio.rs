//! [`AudioStore`] in a local directory: `<dir>/<uuid>.wav`, and beside it the conversions asked for,
//! `<dir>/<uuid>.<format>` (`<uuid>.flac`, `<uuid>.mp3`, `<uuid>.wav24`, ...).
//!
//! File names are built only from parsed [`Uuid`]s and [`Format`] names, so no client string ever
//! becomes a path. A file is written to a `.tmp` name, synced, then renamed: the final name only
//! ever names a complete file. Opening the store removes the leftovers of a crash and conversions
//! whose WAV is gone (a conversion that finished while its job was being deleted).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tower_http::services::ServeFile;
use uuid::Uuid;

use musicgen::audio::{Format, SampleFormat, Tags};

use super::encoding::{self, conversion_of};
use super::ranges::{if_range_matches, label};
use super::{AudioStore, StoreError, StoreResult};

const TMP_SUFFIX: &str = ".tmp";

pub struct LocalAudioStore {
    dir: PathBuf,
}

impl LocalAudioStore {
    /// Creates the directory if needed and removes partial files a crash left behind, and
    /// conversions without their WAV.
    pub fn open(dir: impl Into<PathBuf>) -> StoreResult<Self> {
        let store = LocalAudioStore { dir: dir.into() };
        let io_err = |source| StoreError::AudioIo { path: store.dir.clone(), source };
        fs::create_dir_all(&store.dir).map_err(io_err)?;
        for entry in fs::read_dir(&store.dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let orphan = conversion_of(name).is_some_and(|id| !store.path_of(id).exists());
            if name.ends_with(TMP_SUFFIX) || orphan {
                tracing::info!("removing audio file {} left by an interrupted run", path.display());
                fs::remove_file(&path).map_err(|source| StoreError::AudioIo { path: path.clone(), source })?;
            }
        }
        Ok(store)
    }

    pub fn path_of(&self, id: Uuid) -> PathBuf {
        self.path_in(id, Format::Wav16)
    }

    /// The file holding the audio of `id` in `format`: the WAV itself for 16-bit WAV.
    pub fn path_in(&self, id: Uuid, format: Format) -> PathBuf {
        self.dir.join(encoding::file_name(id, format))
    }

    /// A temporary name of its own for each writer, so that two conversions of one file at once
    /// never write into the same file.
    fn tmp_path_for(&self, done: &Path) -> PathBuf {
        let name = done.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        self.dir.join(format!("{name}.{}{TMP_SUFFIX}", Uuid::new_v4().simple()))
    }

    /// Writes `bytes` as `done`: temp name, fsync, rename, and the rename made durable.
    fn write_atomically(&self, done: &Path, bytes: &[u8]) -> StoreResult<()> {
        let tmp = self.tmp_path_for(done);
        let written = fs::File::create(&tmp).and_then(|mut file| {
            io::Write::write_all(&mut file, bytes)?;
            file.sync_all()
        });
        if let Err(source) = written {
            // Best effort: a leftover is also removed at the next start.
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::AudioIo { path: tmp, source });
        }
        fs::rename(&tmp, done).map_err(|source| StoreError::AudioIo { path: done.to_path_buf(), source })?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::AudioIo { path: self.dir.clone(), source })
    }
}

impl AudioStore for LocalAudioStore {
    fn put(&self, id: Uuid, audio: &musicgen::Audio, format: SampleFormat) -> StoreResult<()> {
        self.write_atomically(&self.path_of(id), &encoding::wav_bytes(audio, format)?)
    }

    fn read(&self, id: Uuid, sample_rate: u32, channels: usize, max_secs: f64) -> StoreResult<Option<musicgen::Audio>> {
        let Some(wav) = read_file(&self.path_of(id))? else { return Ok(None) };
        encoding::decode(id, wav, sample_rate, channels, max_secs).map(Some)
    }

    fn convert(&self, id: Uuid, format: Format, tags: &Tags) -> StoreResult<bool> {
        let wav = self.path_of(id);
        if !is_file(&wav)? {
            return Ok(false);
        }
        let done = self.path_in(id, format);
        if is_file(&done)? {
            return Ok(true);
        }
        // A WAV deleted since the check above is a failed read, as a WAV deleted while it is decoded.
        let Some(original) = read_file(&wav)? else { return Ok(false) };
        let bytes = encoding::convert(id, original, format, tags)?;
        self.write_atomically(&done, &bytes)?;
        // The job may have been deleted while this was encoding: delete removes the WAV before its
        // last sweep of conversions, so a conversion made visible after that sweep finds the WAV gone.
        if !is_file(&wav)? {
            let _ = fs::remove_file(&done);
            return Ok(false);
        }
        tracing::info!("audio of job {id} converted to {format} ({} bytes)", bytes.len());
        Ok(true)
    }

    fn ids(&self) -> StoreResult<Vec<Uuid>> {
        let io_err = |source| StoreError::AudioIo { path: self.dir.clone(), source };
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            ids.extend(name.to_str().and_then(encoding::original_of));
        }
        Ok(ids)
    }

    fn serve(&self, id: Uuid, format: Format, request: Request<Body>) -> BoxFuture<'_, StoreResult<Option<Response>>> {
        let path = self.path_in(id, format);
        async move {
            match tokio::fs::metadata(&path).await {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => return Ok(None),
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(StoreError::AudioIo { path, source }),
            }
            let if_range = request.headers().get(header::IF_RANGE).cloned();
            let mut whole = Request::new(Body::empty());
            *whole.method_mut() = request.method().clone();
            *whole.headers_mut() = request.headers().clone();
            whole.headers_mut().remove(header::RANGE);
            // Several ranges get the whole file (a 200, which RFC 9110 allows) rather than a multipart body.
            let mut file = ServeFile::new(&path).ignore_multi_range_requests(true);
            let io_err = |source| StoreError::AudioIo { path: path.clone(), source };
            let mut response = file.clone().try_call(request).await.map_err(io_err)?.map(Body::new);
            // ServeFile ignores If-Range: a range of a file that changed since the client's copy would
            // splice two files, so a validator that no longer matches gets the whole file.
            if response.status() == StatusCode::PARTIAL_CONTENT
                && if_range.is_some_and(|wanted| !if_range_matches(&wanted, response.headers()))
            {
                response = file.try_call(whole).await.map_err(io_err)?.map(Body::new);
            }
            label(&mut response, id, format);
            Ok(Some(response))
        }
        .boxed()
    }

    fn delete(&self, id: Uuid) -> BoxFuture<'_, StoreResult<()>> {
        let paths: Vec<PathBuf> = encoding::deletion_order().map(|f| self.path_in(id, f)).collect();
        async move {
            for path in paths {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StoreError::AudioIo { path, source }),
                }
            }
            Ok(())
        }
        .boxed()
    }
}

fn is_file(path: &Path) -> StoreResult<bool> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.is_file()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::AudioIo { path: path.to_path_buf(), source }),
    }
}

/// The bytes of a file; `None` when there is none.
fn read_file(path: &Path) -> StoreResult<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::AudioIo { path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::tone;

    #[tokio::test]
    async fn put_writes_a_complete_wav_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalAudioStore::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        store.put(id, &tone(), SampleFormat::Pcm16).unwrap();
        let reader = hound::WavReader::open(store.path_of(id)).unwrap();
        assert_eq!((reader.spec().channels, reader.spec().sample_rate, reader.len()), (2, 32000, 6400));
        let samples: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
        let audio = tone();
        let close = |pcm: i16, x: f32| (pcm as f32 / 32768.0 - x.clamp(-1.0, 1.0)).abs() <= 1.0 / 32768.0 + 1e-6;
        for frame in [0, 1, 31, 3199] {
            assert!(close(samples[2 * frame], audio.channels[0][frame]), "left, frame {frame}");
            assert!(close(samples[2 * frame + 1], audio.channels[1][frame]), "right, frame {frame}");
        }
        assert!(samples.iter().skip(1).step_by(2).any(|s| *s <= -32767), "clipped samples are clamped");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(format!("{id}.wav"))]);
    }

    #[tokio::test]
    async fn opening_removes_partial_files_but_keeps_complete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        LocalAudioStore::open(dir.path()).unwrap().put(id, &tone(), SampleFormat::Pcm16).unwrap();
        let partial = dir.path().join(format!("{}{TMP_SUFFIX}", Uuid::new_v4()));
        fs::write(&partial, b"RIFF").unwrap();
        let store = LocalAudioStore::open(dir.path()).unwrap();
        assert!(!partial.exists());
        assert!(store.path_of(id).exists());
    }

    #[tokio::test]
    async fn serve_answers_ranges_and_none_for_missing_audio() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalAudioStore::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        assert!(store.serve(id, Format::Wav16, Request::new(Body::empty())).await.unwrap().is_none());
        store.put(id, &tone(), SampleFormat::Pcm16).unwrap();
        let request = Request::builder().header(header::RANGE, "bytes=0-3").body(Body::empty()).unwrap();
        let response = store.serve(id, Format::Wav16, request).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "audio/wav");
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"RIFF");
        store.delete(id).await.unwrap();
        store.delete(id).await.unwrap();
        assert!(store.serve(id, Format::Wav16, Request::new(Body::empty())).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn read_decodes_what_put_stored_and_ids_lists_only_complete_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalAudioStore::open(dir.path()).unwrap();
        let (f32_id, pcm_id) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(store.read(f32_id, 32000, 2, 30.0).unwrap(), None);
        store.put(f32_id, &tone(), SampleFormat::F32).unwrap();
        store.put(pcm_id, &tone(), SampleFormat::Pcm16).unwrap();
        fs::write(dir.path().join("notes.txt"), b"not audio").unwrap();
        let mut ids = store.ids().unwrap();
        ids.sort();
        let mut expected = vec![f32_id, pcm_id];
        expected.sort();
        assert_eq!(ids, expected);
        assert_eq!(store.read(f32_id, 32000, 2, 30.0).unwrap().unwrap(), tone(), "f32 keeps every sample");
        // 16-bit audio read back and stored again is the same file: what a snapshot of a track relies on.
        let pcm = store.read(pcm_id, 32000, 2, 30.0).unwrap().unwrap();
        let again = Uuid::new_v4();
        store.put(again, &pcm, SampleFormat::Pcm16).unwrap();
        assert_eq!(fs::read(store.path_of(again)).unwrap(), fs::read(store.path_of(pcm_id)).unwrap());
        let mono = store.read(pcm_id, 32000, 1, 30.0).unwrap().unwrap();
        assert_eq!((mono.channels.len(), mono.len()), (1, 3200));
        match store.read(pcm_id, 32000, 2, 0.05).unwrap_err() {
            StoreError::AudioDecoding { id, message } => {
                assert_eq!(id, pcm_id);
                assert!(message.contains("0.05") && !message.contains(&*dir.path().to_string_lossy()), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    async fn get(store: &LocalAudioStore, id: Uuid, headers: &[(header::HeaderName, &str)]) -> Response {
        crate::store::testing::get(store, id, axum::http::Method::GET, headers).await
    }

    #[tokio::test]
    async fn if_range_gets_the_range_only_while_the_validator_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalAudioStore::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        store.put(id, &tone(), SampleFormat::Pcm16).unwrap();
        let first = get(&store, id, &[]).await;
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_string();
        let modified = first.headers()[header::LAST_MODIFIED].to_str().unwrap().to_string();
        let size = fs::metadata(store.path_of(id)).unwrap().len();
        for current in [etag.as_str(), modified.as_str()] {
            let part = get(&store, id, &[(header::RANGE, "bytes=0-3"), (header::IF_RANGE, current)]).await;
            assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "If-Range {current}");
        }
        let stale = ["\"0-0\"", "W/\"0-0\"", "Thu, 01 Jan 1970 00:00:00 GMT"];
        let weak_current = format!("W/{etag}");
        for validator in stale.iter().copied().chain([weak_current.as_str()]) {
            let whole = get(&store, id, &[(header::RANGE, "bytes=0-3"), (header::IF_RANGE, validator)]).await;
            assert_eq!(whole.status(), StatusCode::OK, "a stale If-Range {validator} gets the whole file");
            assert!(whole.headers().get(header::CONTENT_RANGE).is_none());
            let body = axum::body::to_bytes(whole.into_body(), 1 << 20).await.unwrap();
            assert_eq!(body.len() as u64, size);
        }
    }

    #[tokio::test]
    async fn several_ranges_get_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalAudioStore::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        store.put(id, &tone(), SampleFormat::Pcm16).unwrap();
        let response = get(&store, id, &[(header::RANGE, "bytes=0-3, 8-11")]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        assert_eq!(body.len() as u64, fs::metadata(store.path_of(id)).unwrap().len());
    }

    #[tokio::test]
    async fn a_conversion_is_made_once_beside_the_wav_and_deleted_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalAudioStore::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        let tags = Tags { title: "a tone".into(), ..Tags::default() };
        assert!(!store.convert(id, Format::Flac, &tags).unwrap(), "no WAV, nothing to convert");
        store.put(id, &tone(), SampleFormat::Pcm16).unwrap();
        assert!(store.convert(id, Format::Flac, &tags).unwrap());
        let flac = dir.path().join(format!("{id}.flac"));
        let made = fs::read(&flac).unwrap();
        assert_eq!(&made[..4], b"fLaC");
        // Kept: a second conversion leaves the file alone.
        fs::write(&flac, b"fLaC kept").unwrap();
        assert!(store.convert(id, Format::Flac, &tags).unwrap());
        assert_eq!(fs::read(&flac).unwrap(), b"fLaC kept");
        fs::write(&flac, &made).unwrap();
        let response = store.serve(id, Format::Flac, Request::new(Body::empty())).await.unwrap().unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "audio/flac");
        assert_eq!(
            response.headers()[header::CONTENT_DISPOSITION],
            format!("inline; filename=\"dgx-music-{id}.flac\"")
        );
        assert!(
            store.serve(id, Format::Mp3, Request::new(Body::empty())).await.unwrap().is_none(),
            "not converted yet"
        );
        // The same samples as the WAV.
        let wav = musicgen::audio::read_audio_native(&store.path_of(id), 10.0).unwrap();
        assert_eq!(musicgen::audio::read_audio_native(&flac, 10.0).unwrap(), wav);
        assert_eq!(store.ids().unwrap(), vec![id], "a conversion is not a track of its own");
        store.delete(id).await.unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conversion_racing_the_delete_of_its_job_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalAudioStore::open(dir.path()).unwrap());
        // Two seconds of audio: the encoding takes long enough for the delete to land during it.
        let long = musicgen::Audio {
            sample_rate: 32000,
            channels: vec![(0..64000).map(|i| (i as f32 * 0.01).sin()).collect()],
        };
        for round in 0..40 {
            let id = Uuid::new_v4();
            store.put(id, &long, SampleFormat::Pcm16).unwrap();
            let converter = store.clone();
            let conversion = tokio::task::spawn_blocking(move || converter.convert(id, Format::Flac, &Tags::default()));
            tokio::time::sleep(std::time::Duration::from_micros(200 * (round % 10))).await;
            store.delete(id).await.unwrap();
            // The conversion may have finished, found nothing, or failed to read a WAV deleted under it.
            let _ = conversion.await.unwrap();
            let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(left.is_empty(), "round {round}: {left:?} outlived the job's delete");
        }
    }

    #[tokio::test]
    async fn opening_removes_conversions_whose_wav_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, orphan) = (Uuid::new_v4(), Uuid::new_v4());
        let store = LocalAudioStore::open(dir.path()).unwrap();
        for id in [kept, orphan] {
            store.put(id, &tone(), SampleFormat::Pcm16).unwrap();
            assert!(store.convert(id, Format::Ogg, &Tags::default()).unwrap());
        }
        fs::remove_file(store.path_of(orphan)).unwrap();
        let store = LocalAudioStore::open(dir.path()).unwrap();
        assert!(store.path_in(kept, Format::Ogg).exists());
        assert!(!store.path_in(orphan, Format::Ogg).exists());
        assert_eq!(conversion_of(&format!("{kept}.wav")), None);
        assert_eq!(conversion_of(&format!("{kept}.wav-f32")), Some(kept));
    }
}
