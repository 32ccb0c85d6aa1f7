//! `generate --play`: the track through the default audio output while it is made.
//!
//! Generation and playback run at their own pace: pieces go into a queue that the output
//! device's callback drains, playing silence (and counting it) when generation falls behind.
//! Built only with the `play` feature (cpal links ALSA on Linux); without it `--play` says how
//! to get sound anyway.

#[cfg(not(feature = "play"))]
use musicgen::Audio;

#[cfg(feature = "play")]
pub use self::device::Player;

/// What to tell someone whose build cannot play.
#[cfg(not(feature = "play"))]
pub struct Player;

#[cfg(not(feature = "play"))]
impl Player {
    pub fn open(_sample_rate: u32, _channels: usize) -> anyhow::Result<Self> {
        anyhow::bail!(
            "this dgx-music was built without audio output: rebuild with `cargo build --release --features play` \
             (needs libasound2-dev), or pipe the stream into a player: `dgx-music generate ... --stream - | aplay` \
             (or `| ffplay -nodisp -`)"
        )
    }

    pub fn push(&self, _piece: &Audio) {}

    pub fn finish(self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[cfg(feature = "play")]
mod device {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use anyhow::Context;
    use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
    use musicgen::Audio;

    /// Interleaved samples waiting for the device, and what it had to fill with silence.
    #[derive(Default)]
    struct Queue {
        samples: VecDeque<f32>,
        /// Whether any audio has been queued yet, and whether the last has: silence outside
        /// those is expected, not a gap.
        started: bool,
        ended: bool,
        starved_frames: u64,
        error: Option<String>,
    }

    /// The default output device, playing what [`Player::push`] queues.
    pub struct Player {
        queue: Arc<Mutex<Queue>>,
        stream: cpal::Stream,
        sample_rate: u32,
        channels: usize,
    }

    impl Player {
        /// Opens the default output device at the track's own rate and channels (ALSA's default
        /// device converts them for the hardware), or says clearly why there is none.
        pub fn open(sample_rate: u32, channels: usize) -> anyhow::Result<Self> {
            let host = cpal::default_host();
            let device = host.default_output_device().context(
                "--play: this machine has no default audio output device; write a file (-o track.wav) or pipe the \
                 stream to another machine's player (--stream - | ssh desktop aplay)",
            )?;
            let name = device.name().unwrap_or_else(|_| "the default output".into());
            let config = cpal::StreamConfig {
                channels: channels as u16,
                sample_rate: cpal::SampleRate(sample_rate),
                buffer_size: cpal::BufferSize::Default,
            };
            let queue = Arc::new(Mutex::new(Queue::default()));
            let (fill, errors) = (queue.clone(), queue.clone());
            let stream = device
                .build_output_stream(
                    &config,
                    move |out: &mut [f32], _: &cpal::OutputCallbackInfo| {
                        let mut queue = fill.lock().unwrap_or_else(|e| e.into_inner());
                        let mut missing = 0;
                        for sample in out.iter_mut() {
                            *sample = queue.samples.pop_front().unwrap_or_else(|| {
                                missing += 1;
                                0.0
                            });
                        }
                        if queue.started && !queue.ended {
                            queue.starved_frames += (missing / channels.max(1)) as u64;
                        }
                    },
                    move |err| errors.lock().unwrap_or_else(|e| e.into_inner()).error = Some(err.to_string()),
                    None,
                )
                .map_err(|err| {
                    anyhow::anyhow!(
                        "--play: cannot open the audio output \"{name}\" for {channels} channel(s) at {sample_rate} Hz \
                         ({err}); if this machine has no sound device, write a file (-o track.wav) or pipe the \
                         stream into a player elsewhere (--stream - | ffplay -nodisp -)"
                    )
                })?;
            stream.play().with_context(|| format!("--play: {name} refused to start playing"))?;
            Ok(Self { queue, stream, sample_rate, channels })
        }

        /// Queues the next piece.
        pub fn push(&self, piece: &Audio) {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.started = true;
            for i in 0..piece.len() {
                queue.samples.extend(piece.channels.iter().map(|c| c[i]));
            }
        }

        /// Waits until everything queued has played; reports a device error, and says how long
        /// playback waited for generation, if it did.
        pub fn finish(self) -> anyhow::Result<()> {
            self.queue.lock().unwrap_or_else(|e| e.into_inner()).ended = true;
            loop {
                let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(err) = &queue.error {
                    anyhow::bail!("--play: the audio output failed: {err}");
                }
                if queue.samples.is_empty() {
                    break;
                }
                let left = queue.samples.len() / self.channels.max(1);
                drop(queue);
                std::thread::sleep(Duration::from_secs_f64((left as f64 / self.sample_rate as f64).clamp(0.01, 0.2)));
            }
            // The device's own buffer still holds the last moments.
            std::thread::sleep(Duration::from_millis(300));
            let starved = self.queue.lock().unwrap_or_else(|e| e.into_inner()).starved_frames;
            if starved > 0 {
                eprintln!(
                    "--play: playback waited {:.1} s in all for generation to catch up (a faster --device or a \
                     larger --chunk plays without gaps)",
                    starved as f64 / self.sample_rate as f64
                );
            }
            drop(self.stream);
            Ok(())
        }
    }
}
