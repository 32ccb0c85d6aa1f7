//! What one caller may ask of the queue: a request rate for `POST /generate` (a keyed GCRA limiter
//! from `governor`, per key; every caller of a server without keys shares one) and a share of the
//! queue (queued jobs per key), and the `Retry-After` each refusal carries, computed from the queue
//! itself ([`QueueLoad`]).

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::error::ApiError;
use crate::store::QueueLoad;

/// Longest `Retry-After` sent: beyond it an estimate means little.
const MAX_RETRY_SECS: f64 = 3600.0;

pub struct Limits {
    rate: Option<(DefaultKeyedRateLimiter<Option<Uuid>>, u32)>,
    /// Queued jobs one key may have; 0 is no limit.
    pub max_queued_per_key: u64,
}

impl Limits {
    /// `per_minute` generate requests per key (bursts up to that many), 0 for no limit.
    pub fn new(per_minute: u32, max_queued_per_key: u64) -> Limits {
        let rate = NonZeroU32::new(per_minute).map(|n| (RateLimiter::keyed(Quota::per_minute(n)), per_minute));
        Limits { rate, max_queued_per_key }
    }

    /// Takes one request of `owner`'s rate, or says when the next one is allowed.
    pub fn take(&self, owner: Option<Uuid>) -> Result<(), ApiError> {
        let Some((limiter, per_minute)) = &self.rate else { return Ok(()) };
        limiter.check_key(&owner).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                message: format!(
                    "too many requests: this server takes {per_minute} generations a minute per key \
                     (its --rate-limit); retry in {} s",
                    retry_secs(wait.as_secs_f64())
                ),
                retry_after_secs: retry_secs(wait.as_secs_f64()),
            }
        })
    }

    /// Whether `owner` has a queue share to check: a key, on a server with a share set. Without
    /// one the queue need not be read.
    pub fn has_share(&self, owner: Option<Uuid>) -> bool {
        owner.is_some() && self.max_queued_per_key > 0
    }

    /// Refuses a new job of a key that has its share of the queue already.
    pub fn check_share(&self, owner: Option<Uuid>, load: &QueueLoad) -> Result<(), ApiError> {
        if !self.has_share(owner) || load.own_queued < self.max_queued_per_key {
            return Ok(());
        }
        let wait = retry_secs(load.secs_until_own_turn());
        Err(ApiError::RateLimited {
            message: format!(
                "this key has {} jobs waiting, its share of the queue (the server's --max-queued-per-key); \
                 its next one should start in about {wait} s, then there is room again",
                load.own_queued
            ),
            retry_after_secs: wait,
        })
    }
}

/// Whole seconds for `Retry-After`, 1..=3600.
pub fn retry_secs(seconds: f64) -> u64 {
    seconds.ceil().clamp(1.0, MAX_RETRY_SECS) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunningLoad;

    fn load(own_queued: u64, audio_secs_ahead: f64, running: Option<RunningLoad>, pace: Option<f64>) -> QueueLoad {
        QueueLoad { own_queued, audio_secs_ahead, running, secs_per_audio_sec: pace }
    }

    #[test]
    fn each_key_has_its_own_rate() {
        let limits = Limits::new(2, 0);
        let (a, b) = (Some(Uuid::new_v4()), Some(Uuid::new_v4()));
        assert!(limits.take(a).is_ok() && limits.take(a).is_ok());
        match limits.take(a) {
            Err(ApiError::RateLimited { message, retry_after_secs }) => {
                assert!(
                    message.contains("2 generations a minute") && (1..=30).contains(&retry_after_secs),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(limits.take(b).is_ok(), "another key is not held back");
        assert!(Limits::new(0, 0).take(a).is_ok(), "0 is no limit");
    }

    #[test]
    fn a_key_over_its_share_waits_for_its_turn() {
        let limits = Limits::new(0, 3);
        let key = Some(Uuid::new_v4());
        let running = RunningLoad { duration_secs: 200.0, progress: 0.25, elapsed_secs: 10.0 };
        assert!(limits.check_share(key, &load(2, 0.0, None, None)).is_ok());
        assert!(limits.check_share(None, &load(50, 0.0, None, None)).is_ok(), "a server without keys has one user");
        match limits.check_share(key, &load(3, 60.0, Some(running), Some(0.5))) {
            // 30 s left of the running job (10 s for its first quarter), then 60 s of audio at 0.5 s each.
            Err(ApiError::RateLimited { retry_after_secs, message }) => {
                assert_eq!(retry_after_secs, 60, "{message}");
                assert!(message.contains("3 jobs waiting"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_wait_comes_from_the_running_job_and_the_pace() {
        let fresh = RunningLoad { duration_secs: 200.0, progress: 0.0, elapsed_secs: 1.0 };
        assert_eq!(load(0, 0.0, Some(fresh.clone()), Some(0.1)).running_secs_left(), 19.0, "200 s at 0.1 s each");
        assert_eq!(load(0, 0.0, Some(fresh), None).running_secs_left(), 199.0, "real time before any job ran");
        assert_eq!(load(0, 0.0, None, None).running_secs_left(), 0.0);
        assert_eq!(retry_secs(0.0), 1);
        assert_eq!(retry_secs(1e9), 3600);
    }
}
