//! [`AudioStore`] in an S3 bucket (AWS, MinIO, moto: anything `object_store` speaks S3 to):
//! `<prefix>/<uuid>.wav`, and beside it the conversions asked for, `<prefix>/<uuid>.<format>`, the
//! same names as [`super::LocalAudioStore`]'s files.
//!
//! An upload goes to `<prefix>/.incoming/<uuid>.<format>.<random>` first, then is copied to its
//! name and the temporary deleted. An S3 PUT is itself atomic (no reader sees half an object), but
//! the temporary key is what every store promises: a final name only ever names a complete file,
//! whatever the backend. `ids` lists only the direct children of the prefix, so uploads in
//! progress are never tracks. Opening the store removes temporaries older than a day (a crash
//! between upload and copy); younger ones may be another server's uploads in progress.
//!
//! Blocking methods run their requests on the runtime handed to [`S3AudioStore::open`]; they are
//! called from the worker thread or `spawn_blocking`, never from a task of that runtime.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::Response;
use chrono::Utc;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use uuid::Uuid;

use musicgen::audio::{Format, SampleFormat, Tags};

use super::encoding;
use super::ranges::{self, Extent};
use super::{AudioStore, StoreError, StoreResult};

/// Where uploads wait to be copied to their name: a child of the prefix, so never listed as a track.
const INCOMING: &str = ".incoming";
/// Temporaries older than this are a crash's leftovers, not an upload in progress.
const STALE_INCOMING: chrono::TimeDelta = chrono::TimeDelta::days(1);

pub struct S3AudioStore {
    s3: AmazonS3,
    prefix: Path,
    runtime: tokio::runtime::Handle,
}

impl S3AudioStore {
    /// Opens the store at `url`, `s3://<bucket>/<prefix>` (the prefix may be empty or nested:
    /// `s3://music`, `s3://music/tracks/v1`), and checks that the bucket answers, so that a wrong
    /// endpoint, bucket or credentials fails here, naming the bucket and the endpoint.
    ///
    /// The connection comes from the environment, as `object_store`'s `AmazonS3Builder::from_env`
    /// reads it (every `AWS_*` variable it knows), chiefly:
    /// - `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`: the credentials (without
    ///   them, the instance's or container's role: `AWS_CONTAINER_CREDENTIALS_*`,
    ///   `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`, or IMDS);
    /// - `AWS_REGION`, else `AWS_DEFAULT_REGION` (default `us-east-1`);
    /// - `AWS_ENDPOINT_URL` or `AWS_ENDPOINT` (`AWS_ENDPOINT_URL_S3` first, when set): another
    ///   server than AWS, such as MinIO or moto, addressed path-style. An `http://` endpoint is
    ///   allowed without `AWS_ALLOW_HTTP`; that variable also allows it for any endpoint.
    ///
    /// `runtime` runs the requests of the blocking methods (`put`, `read`, `ids`, `convert`).
    pub fn open(url: &str, runtime: tokio::runtime::Handle) -> StoreResult<Self> {
        let (bucket, prefix) = parse_url(url)?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
            .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
        if endpoint.as_deref().is_some_and(|e| e.starts_with("http://")) {
            builder = builder.with_allow_http(true);
        }
        let endpoint = endpoint.unwrap_or_else(|| "AWS".into());
        let unreachable = |message: String| StoreError::ObjectStore {
            key: url.to_string(),
            message: format!(
                "the bucket {bucket:?} at {endpoint} does not answer: {message}; check AWS_ENDPOINT_URL, the \
                 credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), AWS_REGION and that the bucket exists"
            ),
        };
        // A short retry for the check: a wrong endpoint fails in seconds, not after the minutes of
        // retries a request of a running server is worth.
        let probe_retry = RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(15), ..Default::default() };
        let probe = builder.clone().with_retry(probe_retry).build().map_err(|err| unreachable(err.to_string()))?;
        let s3 = builder.build().map_err(|err| unreachable(err.to_string()))?;
        let listed = runtime.block_on(probe.list_with_delimiter(Some(&prefix.clone().join(INCOMING))));
        let store = S3AudioStore { s3, prefix, runtime };
        for leftover in listed.map_err(|err| unreachable(err.to_string()))?.objects {
            if Utc::now() - leftover.last_modified > STALE_INCOMING {
                tracing::info!("removing the upload {} left by an interrupted run", leftover.location);
                store.runtime.block_on(store.remove(&leftover.location))?;
            }
        }
        Ok(store)
    }

    fn key_in(&self, id: Uuid, format: Format) -> Path {
        self.prefix.clone().join(encoding::file_name(id, format))
    }

    /// Stores `bytes` as `done`: uploaded under a temporary key of its own (two conversions of one
    /// file at once never share one), then copied to `done`.
    async fn write_atomically(&self, done: &Path, bytes: Vec<u8>) -> StoreResult<()> {
        let name = done.filename().unwrap_or_default();
        let tmp = self.prefix.clone().join(INCOMING).join(format!("{name}.{}", Uuid::new_v4().simple()));
        self.s3.put(&tmp, PutPayload::from(bytes)).await.map_err(|err| object_error(&tmp, err))?;
        let copied = self.s3.copy(&tmp, done).await.map_err(|err| object_error(done, err));
        // Best effort after a failed copy: a leftover is also removed by a later open.
        let removed = self.remove(&tmp).await;
        copied.and(removed)
    }

    /// The object's bytes; `None` when there is none.
    async fn fetch(&self, key: &Path) -> StoreResult<Option<Vec<u8>>> {
        let got = match self.s3.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(object_error(key, err)),
        };
        let bytes = got.bytes().await.map_err(|err| object_error(key, err))?;
        Ok(Some(bytes.into()))
    }

    /// The object's metadata; `None` when there is none.
    async fn stat(&self, key: &Path) -> StoreResult<Option<ObjectMeta>> {
        match self.s3.head(key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(object_error(key, err)),
        }
    }

    /// Deletes an object; an absent one is not an error.
    async fn remove(&self, key: &Path) -> StoreResult<()> {
        match self.s3.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(object_error(key, err)),
        }
    }
}

/// `s3://<bucket>/<prefix>` as the bucket and the prefix (a key path, empty for the bucket's root).
fn parse_url(url: &str) -> StoreResult<(String, Path)> {
    let bad = |problem: &str| StoreError::ObjectStoreUrl { url: url.to_string(), problem: problem.to_string() };
    let rest = url.strip_prefix("s3://").ok_or_else(|| bad("does not start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("names no bucket"));
    }
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.');
    if !bucket.chars().all(valid) {
        return Err(bad("has a bucket name with characters S3 does not allow (a-z, 0-9, '-' and '.' only)"));
    }
    let prefix = Path::parse(prefix.trim_end_matches('/'))
        .map_err(|err| bad(&format!("has a prefix that is not a key path ({err})")))?;
    Ok((bucket.to_string(), prefix))
}

/// An `object_store` error as ours: its message names the key and the endpoint's answer, never
/// the credentials (object_store does not print them).
fn object_error(key: &Path, err: object_store::Error) -> StoreError {
    StoreError::ObjectStore { key: key.to_string(), message: err.to_string() }
}

impl AudioStore for S3AudioStore {
    fn put(&self, id: Uuid, audio: &musicgen::Audio, format: SampleFormat) -> StoreResult<()> {
        let bytes = encoding::wav_bytes(audio, format)?;
        self.runtime.block_on(self.write_atomically(&self.key_in(id, Format::Wav16), bytes))
    }

    fn read(&self, id: Uuid, sample_rate: u32, channels: usize, max_secs: f64) -> StoreResult<Option<musicgen::Audio>> {
        let Some(wav) = self.runtime.block_on(self.fetch(&self.key_in(id, Format::Wav16)))? else { return Ok(None) };
        encoding::decode(id, wav, sample_rate, channels, max_secs).map(Some)
    }

    fn ids(&self) -> StoreResult<Vec<Uuid>> {
        let listed = self.runtime.block_on(self.s3.list_with_delimiter(Some(&self.prefix)));
        let listed = listed.map_err(|err| object_error(&self.prefix, err))?;
        Ok(listed.objects.iter().filter_map(|meta| meta.location.filename().and_then(encoding::original_of)).collect())
    }

    fn convert(&self, id: Uuid, format: Format, tags: &Tags) -> StoreResult<bool> {
        let (wav, done) = (self.key_in(id, Format::Wav16), self.key_in(id, format));
        self.runtime.block_on(async {
            if self.stat(&done).await?.is_some() {
                return Ok(true);
            }
            let Some(original) = self.fetch(&wav).await? else { return Ok(false) };
            let bytes = encoding::convert(id, original, format, tags)?;
            let size = bytes.len();
            self.write_atomically(&done, bytes).await?;
            // The job may have been deleted while this was encoding: delete removes the WAV before
            // its last sweep of conversions, so a conversion stored after that sweep finds it gone.
            if self.stat(&wav).await?.is_none() {
                self.remove(&done).await?;
                return Ok(false);
            }
            tracing::info!("audio of job {id} converted to {format} ({size} bytes)");
            Ok(true)
        })
    }

    fn serve(&self, id: Uuid, format: Format, request: Request<Body>) -> BoxFuture<'_, StoreResult<Option<Response>>> {
        let key = self.key_in(id, format);
        async move {
            let Some(meta) = self.stat(&key).await? else { return Ok(None) };
            if !ranges::readable(request.method()) {
                return Ok(Some(ranges::method_not_allowed()));
            }
            let validators = ranges::validators(meta.e_tag.as_deref(), meta.last_modified);
            let extent = ranges::extent(request.headers(), meta.size, &validators);
            let wanted = match &extent {
                Extent::Whole => Some(None),
                Extent::Part(range) => Some(Some(GetRange::Bounded(*range.start()..range.end() + 1))),
                Extent::Unsatisfiable => None,
            };
            let body = match wanted {
                Some(range) if request.method() == Method::GET && meta.size > 0 => {
                    // The object the metadata describes, or an error: never the head of one object
                    // and the bytes of its replacement.
                    let options = GetOptions { range, if_match: meta.e_tag.clone(), ..Default::default() };
                    let got = self.s3.get_opts(&key, options).await.map_err(|err| object_error(&key, err))?;
                    Body::from_stream(got.into_stream())
                }
                _ => Body::empty(),
            };
            let mut response = ranges::respond(&extent, meta.size, validators, body);
            ranges::label(&mut response, id, format);
            Ok(Some(response))
        }
        .boxed()
    }

    fn delete(&self, id: Uuid) -> BoxFuture<'_, StoreResult<()>> {
        let keys: Vec<Path> = encoding::deletion_order().map(|format| self.key_in(id, format)).collect();
        async move {
            for key in keys {
                self.remove(&key).await?;
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::{header, StatusCode};
    use futures_util::TryStreamExt;

    use super::*;
    use crate::store::testing::{body, get, tone};

    const NEEDS_S3: &str = "needs an S3 server: tools/cluster-test.sh starts one";

    /// A store under a prefix of its own in the test bucket, opened off the runtime's threads as
    /// the server opens it.
    async fn fresh_store() -> Arc<S3AudioStore> {
        let base = std::env::var("DGX_TEST_S3_URL").unwrap_or_else(|_| {
            panic!("DGX_TEST_S3_URL is not set: {NEEDS_S3} (or source tools/services/s3.sh and call start_s3)")
        });
        let url = format!("{}/{}", base.trim_end_matches('/'), Uuid::new_v4().simple());
        let runtime = tokio::runtime::Handle::current();
        blocking(move || Arc::new(S3AudioStore::open(&url, runtime).unwrap())).await
    }

    /// The blocking methods, from a thread that may block, as the worker calls them.
    async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(work).await.unwrap()
    }

    /// Every object under the store's prefix, `.incoming` included, as names below it.
    async fn objects(store: &S3AudioStore) -> Vec<String> {
        let listed: Vec<ObjectMeta> = store.s3.list(Some(&store.prefix)).try_collect().await.unwrap();
        let mut names: Vec<String> = listed
            .iter()
            .map(|meta| meta.location.prefix_match(&store.prefix).unwrap().map(|p| p.as_ref().to_string()))
            .map(|parts| parts.collect::<Vec<_>>().join("/"))
            .collect();
        names.sort();
        names
    }

    async fn raw(store: &S3AudioStore, id: Uuid, format: Format) -> Vec<u8> {
        store.fetch(&store.key_in(id, format)).await.unwrap().expect("the object")
    }

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let prefix = |url: &str| parse_url(url).map(|(bucket, prefix)| format!("{bucket} {prefix}")).unwrap();
        assert_eq!(prefix("s3://music"), "music ");
        assert_eq!(prefix("s3://music/"), "music ");
        assert_eq!(prefix("s3://music/tracks/v1/"), "music tracks/v1");
        for (url, problem) in [
            ("https://music/tracks", "does not start with s3://"),
            ("s3:///tracks", "names no bucket"),
            ("s3://Music_Bucket/tracks", "characters S3 does not allow"),
            ("s3://music/a//b", "not a key path"),
        ] {
            let message = parse_url(url).unwrap_err().to_string();
            assert!(message.contains(problem) && message.contains("expected s3://<bucket>/<prefix>"), "{message}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs an S3 server: tools/cluster-test.sh starts one"]
    async fn opening_a_missing_bucket_fails_naming_it_and_the_endpoint() {
        let runtime = tokio::runtime::Handle::current();
        let Err(err) = blocking(move || S3AudioStore::open("s3://dgx-no-such-bucket/tracks", runtime)).await else {
            panic!("a bucket that does not exist opened");
        };
        let message = err.to_string();
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
        assert!(message.contains("dgx-no-such-bucket") && message.contains(&endpoint), "{message}");
        assert!(!message.contains(&std::env::var("AWS_SECRET_ACCESS_KEY").unwrap()), "{message}");
        assert_eq!(err.public_message(), "an object store error");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs an S3 server: tools/cluster-test.sh starts one"]
    async fn read_decodes_what_put_stored_and_ids_lists_only_complete_wavs() {
        let store = fresh_store().await;
        let (f32_id, pcm_id) = (Uuid::new_v4(), Uuid::new_v4());
        let s = store.clone();
        blocking(move || {
            assert_eq!(s.read(f32_id, 32000, 2, 30.0).unwrap(), None);
            s.put(f32_id, &tone(), SampleFormat::F32).unwrap();
            s.put(pcm_id, &tone(), SampleFormat::Pcm16).unwrap();
            assert!(s.convert(pcm_id, Format::Flac, &Tags::default()).unwrap());
        })
        .await;
        // Not tracks: an object of another name, and an upload in progress.
        store.s3.put(&store.prefix.clone().join("notes.txt"), PutPayload::from_static(b"not audio")).await.unwrap();
        let incoming = store.prefix.clone().join(INCOMING).join(format!("{}.wav.0123", Uuid::new_v4()));
        store.s3.put(&incoming, PutPayload::from_static(b"RIFF")).await.unwrap();
        let s = store.clone();
        let mut ids = blocking(move || s.ids().unwrap()).await;
        ids.sort();
        let mut expected = vec![f32_id, pcm_id];
        expected.sort();
        assert_eq!(ids, expected);
        store.remove(&incoming).await.unwrap();
        let s = store.clone();
        let (f32_audio, pcm, mono, too_long) = blocking(move || {
            let f32_audio = s.read(f32_id, 32000, 2, 30.0).unwrap().unwrap();
            let pcm = s.read(pcm_id, 32000, 2, 30.0).unwrap().unwrap();
            let mono = s.read(pcm_id, 32000, 1, 30.0).unwrap().unwrap();
            (f32_audio, pcm, mono, s.read(pcm_id, 32000, 2, 0.05).unwrap_err())
        })
        .await;
        assert_eq!(f32_audio, tone(), "f32 keeps every sample");
        assert_eq!((mono.channels.len(), mono.len()), (1, 3200));
        match too_long {
            StoreError::AudioDecoding { id, message } => {
                assert_eq!(id, pcm_id);
                assert!(message.contains("0.05") && !message.contains("s3://"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // 16-bit audio read back and stored again is the same file: what a snapshot of a track relies on.
        let again = Uuid::new_v4();
        let s = store.clone();
        blocking(move || s.put(again, &pcm, SampleFormat::Pcm16).unwrap()).await;
        assert_eq!(raw(&store, again, Format::Wav16).await, raw(&store, pcm_id, Format::Wav16).await);
        let names = objects(&store).await;
        assert!(names.iter().all(|name| !name.starts_with(INCOMING)), "no upload is left in {INCOMING}: {names:?}");
        let mut expected = vec![
            format!("{again}.wav"),
            format!("{f32_id}.wav"),
            format!("{pcm_id}.flac"),
            format!("{pcm_id}.wav"),
            "notes.txt".to_string(),
        ];
        expected.sort();
        assert_eq!(names, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs an S3 server: tools/cluster-test.sh starts one"]
    async fn a_conversion_is_made_once_beside_the_wav_and_deleted_with_it() {
        let store = fresh_store().await;
        let id = Uuid::new_v4();
        let tags = Tags { title: "a tone".into(), ..Tags::default() };
        let (s, t) = (store.clone(), tags.clone());
        blocking(move || {
            assert!(!s.convert(id, Format::Flac, &t).unwrap(), "no WAV, nothing to convert");
            s.put(id, &tone(), SampleFormat::Pcm16).unwrap();
            assert!(s.convert(id, Format::Flac, &t).unwrap());
        })
        .await;
        let made = raw(&store, id, Format::Flac).await;
        assert_eq!(&made[..4], b"fLaC");
        // Kept: a second conversion leaves the object alone.
        let flac = store.key_in(id, Format::Flac);
        store.s3.put(&flac, PutPayload::from_static(b"fLaC kept")).await.unwrap();
        let (s, t) = (store.clone(), tags.clone());
        assert!(blocking(move || s.convert(id, Format::Flac, &t).unwrap()).await);
        assert_eq!(raw(&store, id, Format::Flac).await, b"fLaC kept");
        store.s3.put(&flac, PutPayload::from(made.clone())).await.unwrap();
        let response = store.serve(id, Format::Flac, Request::new(Body::empty())).await.unwrap().unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "audio/flac");
        assert_eq!(
            response.headers()[header::CONTENT_DISPOSITION],
            format!("inline; filename=\"dgx-music-{id}.flac\"")
        );
        assert_eq!(body(response).await, made);
        assert!(
            store.serve(id, Format::Mp3, Request::new(Body::empty())).await.unwrap().is_none(),
            "not converted yet"
        );
        // The same samples as the WAV.
        let wav = encoding::decode(id, raw(&store, id, Format::Wav16).await, 32000, 2, 10.0).unwrap();
        let flac_audio = musicgen::audio::read_audio_native_bytes(std::path::Path::new("x.flac"), made, 10.0).unwrap();
        assert_eq!(flac_audio, wav);
        let s = store.clone();
        assert_eq!(blocking(move || s.ids().unwrap()).await, vec![id], "a conversion is not a track of its own");
        store.delete(id).await.unwrap();
        store.delete(id).await.unwrap();
        assert_eq!(objects(&store).await, Vec::<String>::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs an S3 server: tools/cluster-test.sh starts one"]
    async fn serve_answers_ranges_head_and_if_range_and_none_for_missing_audio() {
        let store = fresh_store().await;
        let id = Uuid::new_v4();
        assert!(store.serve(id, Format::Wav16, Request::new(Body::empty())).await.unwrap().is_none());
        let s = store.clone();
        blocking(move || s.put(id, &tone(), SampleFormat::Pcm16).unwrap()).await;
        let wav = raw(&store, id, Format::Wav16).await;
        let size = wav.len();

        let whole = get(&*store, id, Method::GET, &[]).await;
        assert_eq!(whole.status(), StatusCode::OK);
        assert_eq!(whole.headers()[header::CONTENT_TYPE], "audio/wav");
        assert_eq!(whole.headers()[header::ACCEPT_RANGES], "bytes");
        assert_eq!(whole.headers()[header::CONTENT_LENGTH], size.to_string().as_str());
        let etag = whole.headers()[header::ETAG].to_str().unwrap().to_string();
        let modified = whole.headers()[header::LAST_MODIFIED].to_str().unwrap().to_string();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        assert_eq!(body(whole).await, wav);

        let part = get(&*store, id, Method::GET, &[(header::RANGE, "bytes=8-15")]).await;
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.headers()[header::CONTENT_RANGE], format!("bytes 8-15/{size}").as_str());
        assert_eq!(part.headers()[header::CONTENT_LENGTH], "8");
        assert_eq!(body(part).await, &wav[8..16]);
        let tail = get(&*store, id, Method::GET, &[(header::RANGE, "bytes=-4")]).await;
        assert_eq!(body(tail).await, &wav[size - 4..]);

        let head = get(&*store, id, Method::HEAD, &[]).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()[header::CONTENT_LENGTH], size.to_string().as_str());
        assert!(body(head).await.is_empty());

        let past_the_end = format!("bytes={size}-");
        let refused = get(&*store, id, Method::GET, &[(header::RANGE, past_the_end.as_str())]).await;
        assert_eq!(refused.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(refused.headers()[header::CONTENT_RANGE], format!("bytes */{size}").as_str());

        for current in [etag.as_str(), modified.as_str()] {
            let part =
                get(&*store, id, Method::GET, &[(header::RANGE, "bytes=0-3"), (header::IF_RANGE, current)]).await;
            assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "If-Range {current}");
            assert_eq!(body(part).await, b"RIFF");
        }
        let stale = ["\"0-0\"", "W/\"0-0\"", "Thu, 01 Jan 1970 00:00:00 GMT"];
        let weak_current = format!("W/{etag}");
        for validator in stale.iter().copied().chain([weak_current.as_str()]) {
            let whole =
                get(&*store, id, Method::GET, &[(header::RANGE, "bytes=0-3"), (header::IF_RANGE, validator)]).await;
            assert_eq!(whole.status(), StatusCode::OK, "a stale If-Range {validator} gets the whole file");
            assert!(whole.headers().get(header::CONTENT_RANGE).is_none());
            assert_eq!(body(whole).await.len(), size);
        }
        let several = get(&*store, id, Method::GET, &[(header::RANGE, "bytes=0-3, 8-11")]).await;
        assert_eq!(several.status(), StatusCode::OK, "several ranges get the whole file");
        assert_eq!(body(several).await, wav);

        store.delete(id).await.unwrap();
        store.delete(id).await.unwrap();
        assert!(store.serve(id, Format::Wav16, Request::new(Body::empty())).await.unwrap().is_none());
        assert_eq!(objects(&store).await, Vec::<String>::new());
    }
}
