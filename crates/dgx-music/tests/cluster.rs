//! DGX Music as several processes on one PostgreSQL and one S3 server, as an operator runs it: API
//! nodes (`serve --no-worker`) and `dgx-music worker`s, the real binary, the tiny fixture model on
//! the CPU. Every scenario asserts that no job is lost and none is completed twice: each worker logs
//! one line per completion, and the database counts each job's claims.
//!
//! `tools/cluster-test.sh` starts PostgreSQL and moto's S3 server and runs these (they are ignored
//! by a plain `cargo test`, which has neither).

#[path = "serve/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{fixture, fixture_checkpoint, wav_pcm, Server};
use serde_json::{json, Value};
use sqlx::postgres::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(900);

/// One service: a database of its own on the test PostgreSQL, a prefix of its own in the test bucket.
struct Cluster {
    database: String,
    storage: String,
    dir: PathBuf,
    lease_secs: u32,
    pool: PgPool,
}

impl Cluster {
    async fn new(lease_secs: u32) -> Cluster {
        let admin_url = std::env::var("DGX_TEST_POSTGRES_URL")
            .expect("DGX_TEST_POSTGRES_URL is not set: run these tests with tools/cluster-test.sh");
        let bucket = std::env::var("DGX_TEST_S3_URL").expect("DGX_TEST_S3_URL is not set: run tools/cluster-test.sh");
        let name = format!("dgx_cluster_{}", Uuid::new_v4().simple());
        let admin = PgPool::connect(&admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
        admin.close().await;
        let database = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
        let storage = format!("{bucket}/{name}");
        let dir = tempfile::tempdir().unwrap().keep();
        let pool = PgPool::connect_lazy(&database).unwrap();
        Cluster { database, storage, dir, lease_secs, pool }
    }

    fn shared_args(&self) -> Vec<String> {
        let lease = self.lease_secs.to_string();
        ["--database", &self.database, "--storage", &self.storage, "--lease-secs", &lease, "--max-attempts", "3"]
            .map(String::from)
            .to_vec()
    }

    /// An API node; `name` is its data directory (a restarted node keeps its own).
    async fn api(&self, name: &str) -> Server {
        let mut args = self.shared_args();
        args.extend(["--no-worker".into(), "--max-queue".into(), "1000".into(), "--rate-limit".into(), "0".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_on(&self.dir.join(name), &fixture(), "127.0.0.1", &args).await
    }

    fn worker(&self, model: &str) -> Worker {
        Worker::start(&self.shared_args(), model, 1)
    }

    /// One worker process with a thread per CPU "device" (the code path of `--device cuda:0 --device cuda:1`).
    fn worker_threads(&self, threads: usize) -> Worker {
        Worker::start(&self.shared_args(), &fixture(), threads)
    }

    /// Claims per job, from the database: 1 for every job no worker lost.
    async fn attempts(&self) -> HashMap<String, i32> {
        let rows: Vec<(Uuid, i32)> =
            sqlx::query_as("SELECT id, attempts FROM jobs").fetch_all(&self.pool).await.unwrap();
        rows.into_iter().map(|(id, n)| (id.to_string(), n)).collect()
    }

    async fn count(&self, status: &str) -> i64 {
        loop {
            // The database may be restarting under the test: ask again.
            match sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = $1")
                .bind(status)
                .fetch_one(&self.pool)
                .await
            {
                Ok(n) => return n,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Waits until `n` jobs are completed (and none failed).
    async fn wait_completed(&self, n: i64, logs: &dyn Fn() -> String) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (done, failed) = (self.count("completed").await, self.count("failed").await);
            assert_eq!(failed, 0, "a job failed:\n{}", logs());
            if done >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{done} of {n} jobs completed in time:\n{}", logs());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A `dgx-music worker` process and its log.
struct Worker {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(shared: &[String], model: &str, threads: usize) -> Worker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dgx-music"))
            .arg("worker")
            .args(shared)
            .args(std::iter::repeat_n(["--device", "cpu"], threads).flatten())
            .args(["--model", model, "--max-batch", "4"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dgx-music worker");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Worker { child: Some(child), log }
    }

    async fn ready(mut self) -> Worker {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !self.log().contains("worker ready") {
            assert!(Instant::now() < deadline, "the worker did not start:\n{}", self.log());
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the worker exited ({status}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The jobs this worker completed, from its "completed job <id>" lines.
    fn completed(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| line.split("completed job ").nth(1))
            .map(|id| id.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    }

    /// The worker ids (one per thread) that completed jobs.
    fn completing_threads(&self) -> HashSet<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains("completed job "))
            .filter_map(|line| line.split("worker ").nth(1)?.split_whitespace().next().map(String::from))
            .collect()
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn body(i: usize, duration: f64) -> Value {
    json!({"prompt": format!("cluster job {i}"), "duration": duration, "seed": i})
}

/// Posts a job to the first node that takes it, retrying while nodes restart: a client's job is
/// accepted once (202) or not at all, so retrying loses nothing and duplicates nothing.
async fn submit_retrying(client: &reqwest::Client, bases: &[String], body: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    for attempt in 0.. {
        let base = &bases[attempt % bases.len()];
        match client.post(format!("{base}/api/v1/generate")).json(body).send().await {
            Ok(response) if response.status() == 202 => {
                let job: Value = response.json().await.unwrap();
                return job["id"].as_str().unwrap().to_string();
            }
            Ok(response) => {
                let status = response.status();
                assert!(status == 503 || status == 500, "{body} -> {status}: {}", response.text().await.unwrap());
            }
            Err(_) => {} // a node being killed or started
        }
        assert!(Instant::now() < deadline, "no node took {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// Every job completed exactly once, by the workers' logs, and claimed `expected_attempts` times.
async fn assert_each_completed_once(cluster: &Cluster, ids: &[String], workers: &[&Worker], expected_attempts: i32) {
    let mut completions: HashMap<String, usize> = HashMap::new();
    for worker in workers {
        for id in worker.completed() {
            *completions.entry(id).or_default() += 1;
        }
    }
    for id in ids {
        assert_eq!(completions.get(id).copied(), Some(1), "job {id} completions");
    }
    assert_eq!(completions.len(), ids.len(), "completions of jobs nobody submitted");
    let attempts = cluster.attempts().await;
    let retried: Vec<_> = ids.iter().filter(|id| attempts[*id] != expected_attempts).collect();
    assert!(retried.is_empty(), "jobs claimed other than {expected_attempts} time(s): {retried:?}");
}

/// Downloads every track whole through the API nodes in turn: a WAV whose samples fill its length.
async fn assert_tracks_whole(bases: &[String], ids: &[String]) {
    let client = reqwest::Client::new();
    for (i, id) in ids.iter().enumerate() {
        let base = &bases[i % bases.len()];
        let job: Value = client.get(format!("{base}/api/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        let response = client.get(format!("{base}/api/v1/jobs/{id}/audio")).send().await.unwrap();
        assert_eq!(response.status(), 200, "audio of {id}");
        let length: usize = response.headers()["content-length"].to_str().unwrap().parse().unwrap();
        let bytes = response.bytes().await.unwrap();
        assert_eq!(bytes.len(), length);
        let (spec, samples) = wav_pcm(&bytes);
        let frames = samples.len() / spec.channels as usize;
        let expected = job["audio_duration"].as_f64().unwrap() * f64::from(spec.sample_rate);
        assert!((frames as f64 - expected).abs() <= 1.0, "job {id}: {frames} frames for {expected}");
        assert!(samples.iter().any(|&s| s != 0), "job {id}: silence");
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL and an S3 server: tools/cluster-test.sh starts them"]
async fn three_workers_and_two_api_nodes_complete_200_jobs_once_and_an_idle_model_waits() {
    let cluster = Cluster::new(5).await;
    let (api1, api2) = (cluster.api("api1").await, cluster.api("api2").await);
    let workers = [
        cluster.worker(&fixture()).ready().await,
        cluster.worker(&fixture()).ready().await,
        cluster.worker(&fixture()).ready().await,
    ];
    // A worker of a model no job asks for.
    let idle = cluster.worker(&fixture_checkpoint("tiny-stereo")).ready().await;
    let bases = [api1.base.clone(), api2.base.clone()];
    let client = reqwest::Client::new();

    // The API node learns the workers' models from the database.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let health: Value = client.get(api2.url("/api/v1/health")).send().await.unwrap().json().await.unwrap();
        if health["models"].as_array().unwrap().len() == 2 || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The API node's own --model first among the workers' models.
    assert_eq!(health["model"], harness::fixture_id("tiny-mono"), "{health}");
    assert_eq!(health["models"].as_array().unwrap().len(), 2, "both fixtures are offered: {health}");

    // Progress of a job taken by api1 and run by some worker, watched on api2: LISTEN/NOTIFY.
    let watched = api1.submit(json!({"prompt": "watched", "duration": 20.0})).await;
    let events = api2.events(&watched).await;
    assert!(
        events.iter().any(|e| e["status"] == "running" && e["progress"].as_f64().unwrap() > 0.0),
        "no progress seen on the other API node: {events:?}"
    );
    assert_eq!(events.last().unwrap()["status"], "completed");

    let mut ids = vec![watched];
    for i in 0..199 {
        ids.push(submit_retrying(&client, &bases[i % 2..i % 2 + 1], &body(i, 1.0)).await);
    }
    let logs = || workers.iter().map(Worker::log).collect::<Vec<_>>().join("\n---\n");
    cluster.wait_completed(200, &logs).await;

    let all: Vec<&Worker> = workers.iter().chain([&idle]).collect();
    assert_each_completed_once(&cluster, &ids, &all, 1).await;
    let busy = workers.iter().filter(|w| !w.completed().is_empty()).count();
    assert!(busy >= 2, "the queue was shared: {busy} worker(s) completed jobs");
    assert!(idle.completed().is_empty() && !idle.log().contains("generating a batch"), "{}", idle.log());
    assert_tracks_whole(&bases, &ids).await;

    // A Range request answered from the object store.
    let range = client
        .get(api2.url(&format!("/api/v1/jobs/{}/audio", ids[1])))
        .header("Range", "bytes=0-43")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(&range.bytes().await.unwrap()[..4], b"RIFF");
}

#[tokio::test]
#[ignore = "needs PostgreSQL and an S3 server: tools/cluster-test.sh starts them"]
async fn a_worker_killed_mid_job_loses_it_to_another_after_its_lease() {
    let cluster = Cluster::new(3).await;
    let api = cluster.api("api").await;
    let mut first = cluster.worker(&fixture()).ready().await;
    let id = api.submit(json!({"prompt": "interrupted", "duration": 60.0})).await;
    api.wait_for(&id, |job| job["status"] == "running" && job["progress"].as_f64().unwrap() > 0.05).await;
    first.kill9();
    let killed_at = Instant::now();
    let second = cluster.worker(&fixture()).ready().await;
    let job = api.wait_for(&id, |job| job["status"] != "queued" && job["status"] != "running").await;
    assert_eq!(job["status"], "completed", "{job}\n{}", second.log());
    assert!(killed_at.elapsed() >= Duration::from_secs(3), "finished before the lease could expire");
    assert_each_completed_once(&cluster, std::slice::from_ref(&id), &[&first, &second], 2).await;
    assert_tracks_whole(std::slice::from_ref(&api.base), &[id]).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL and an S3 server: tools/cluster-test.sh starts them"]
async fn a_cancel_on_an_api_node_stops_the_worker_on_another_process_within_a_step() {
    let cluster = Cluster::new(30).await;
    let api = cluster.api("api").await;
    let worker = cluster.worker(&fixture()).ready().await;
    let id = api.submit(json!({"prompt": "cancelled elsewhere", "duration": 120.0})).await;
    api.wait_for(&id, |job| job["status"] == "running" && job["progress"].as_f64().unwrap() > 0.02).await;
    let response = reqwest::Client::new().delete(api.url(&format!("/api/v1/jobs/{id}"))).send().await.unwrap();
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    // Through the store (its notification, or the next progress write finding the job cancelled), long
    // before the 10 s heartbeat of a 30 s lease: the engine stops at its next step.
    let asked = Instant::now();
    while !worker.log().contains("batch cancelled after") {
        assert!(asked.elapsed() < Duration::from_secs(3), "the worker kept generating:\n{}", worker.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(worker.completed().is_empty());
    let job: Value = reqwest::get(api.url(&format!("/api/v1/jobs/{id}"))).await.unwrap().json().await.unwrap();
    assert_eq!(job["status"], "cancelled");
}

#[tokio::test]
#[ignore = "needs PostgreSQL and an S3 server: tools/cluster-test.sh starts them"]
async fn the_database_restarts_and_an_api_node_is_killed_under_load_and_nothing_is_lost() {
    let restart = std::env::var("DGX_TEST_PG_RESTART").expect("DGX_TEST_PG_RESTART: run tools/cluster-test.sh");
    // Longer than a restart takes: no worker loses a lease to it.
    let cluster = Cluster::new(15).await;
    let mut api1 = cluster.api("api1").await;
    let api2 = cluster.api("api2").await;
    // One of them a process with two worker threads.
    let workers = [cluster.worker_threads(2).ready().await, cluster.worker(&fixture()).ready().await];
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    let mut bases = vec![api1.base.clone(), api2.base.clone()];
    for i in 0..100 {
        if i == 30 {
            let status = Command::new(&restart).stdout(Stdio::null()).status().unwrap();
            assert!(status.success(), "restarting PostgreSQL");
        }
        if i == 60 {
            api1.kill9();
            // Its own data directory again; it must not take back the jobs live workers hold.
            api1 = cluster.api("api1").await;
            bases[0] = api1.base.clone();
        }
        ids.push(submit_retrying(&client, &bases, &body(i, 2.0)).await);
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 100);
    let logs = || workers.iter().map(Worker::log).collect::<Vec<_>>().join("\n---\n");
    cluster.wait_completed(100, &logs).await;
    assert_each_completed_once(&cluster, &ids, &workers.iter().collect::<Vec<_>>(), 1).await;
    let threads = workers[0].completing_threads();
    assert_eq!(threads.len(), 2, "both threads of one process took jobs: {threads:?}");
    assert_tracks_whole(&bases, &ids).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL and an S3 server: tools/cluster-test.sh starts them"]
async fn a_key_made_in_the_shared_database_opens_every_api_node_on_the_network() {
    let cluster = Cluster::new(5).await;
    let made = Command::new(env!("CARGO_BIN_EXE_dgx-music"))
        .args(["keys", "create", "--name", "laptop", "--database", &cluster.database])
        .arg("--data-dir")
        .arg(cluster.dir.join("keys"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let token = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let mut args = cluster.shared_args();
    args.push("--no-worker".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        nodes.push(Server::start_on(&cluster.dir.join(name), &fixture(), "0.0.0.0", &args).await);
    }
    let client = reqwest::Client::new();
    for node in &nodes {
        let refused = client.get(node.url("/api/v1/jobs")).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        let opened = client.get(node.url("/api/v1/jobs")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(opened.status(), 200);
    }
}

/// Scale figures for docs/PERFORMANCE.md (printed, never asserted): jobs per second through the
/// queue with 1, 2 and 4 workers, and how long a claim takes.
#[tokio::test]
#[ignore = "needs PostgreSQL and an S3 server: tools/cluster-test.sh starts them"]
async fn scale_figures() {
    const JOBS: usize = 48;
    let mut lines = Vec::new();
    for workers in [1, 2, 4] {
        let cluster = Cluster::new(30).await;
        let api = cluster.api("api").await;
        let mut running = Vec::new();
        for _ in 0..workers {
            running.push(cluster.worker(&fixture()));
        }
        let mut ready = Vec::new();
        for worker in running {
            ready.push(worker.ready().await);
        }
        let client = reqwest::Client::new();
        let started = Instant::now();
        let mut ids = Vec::new();
        for i in 0..JOBS {
            ids.push(submit_retrying(&client, std::slice::from_ref(&api.base), &body(i, 1.0)).await);
        }
        let logs = || ready.iter().map(Worker::log).collect::<Vec<_>>().join("\n---\n");
        cluster.wait_completed(JOBS as i64, &logs).await;
        let took = started.elapsed().as_secs_f64();
        // Claim latency as the workers see it: queued until started, less the time spent generating
        // others, is not separable here; the database's own time per claim is below.
        lines
            .push(format!("{workers} worker(s): {JOBS} jobs of 1 s in {took:.1} s = {:.1} jobs/s", JOBS as f64 / took));
        assert_each_completed_once(&cluster, &ids, &ready.iter().collect::<Vec<_>>(), 1).await;
    }
    lines.push(claim_latency().await);
    println!("\nscale figures (tiny fixture model, CPU):\n{}\n", lines.join("\n"));
}

/// The database's time per claim with 1, 4 and 16 claimers at once on a queue of 2000 jobs.
async fn claim_latency() -> String {
    use dgx_music_server::store::{DatabaseUrl, Leases};
    let cluster = Cluster::new(30).await;
    let url: DatabaseUrl = cluster.database.parse().unwrap();
    let database = dgx_music_server::store::Database::open(&url, Leases::default()).await.unwrap();
    let jobs = database.jobs();
    let mut out = Vec::new();
    for claimers in [1usize, 4, 16] {
        for i in 0..2000 {
            let params = dgx_music_server::job::JobParams::new(
                musicgen::GenerationItem {
                    prompt: format!("{i}"),
                    sampling: musicgen::SamplingParams::default(),
                    seed: 1,
                },
                // Distinct durations: every claim is one job, the worst case.
                1.0 + i as f64 / 1000.0,
            );
            let job = dgx_music_server::job::Job::new(params, "tiny".into(), chrono::Utc::now());
            jobs.enqueue(&job, 100_000).await.unwrap();
        }
        let started = Instant::now();
        let tasks = (0..claimers).map(|n| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let t = Instant::now();
                    let batch = jobs
                        .claim_batch(&format!("bench{n}"), &["tiny".to_string()], 1, chrono::Utc::now())
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return times;
                    }
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            })
        });
        let mut times = Vec::new();
        for task in tasks {
            times.extend(task.await.unwrap());
        }
        let wall = started.elapsed().as_secs_f64();
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
        out.push(format!(
            "claims, {claimers} at once: {:.0} claims/s, {:.2} ms median, {:.2} ms p99",
            times.len() as f64 / wall,
            pct(0.5),
            pct(0.99)
        ));
    }
    database.close().await;
    out.join("\n")
}
