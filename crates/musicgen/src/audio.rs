//! Generated audio, its normalisation and its encoding as WAV.

/// Planar audio: one vector of samples in [-1, 1] per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    pub fn duration_secs(&self) -> f64 {
        self.channels.first().map_or(0.0, |c| c.len() as f64 / self.sample_rate as f64)
    }
}

/// Sample encoding of a written WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SampleFormat {
    #[default]
    Pcm16,
    F32,
}

pub fn write_wav(path: impl AsRef<std::path::Path>, audio: &Audio, format: SampleFormat) -> crate::Result<()> {
    let _ = (path, audio, format);
    Err(crate::Error::Audio("being written".into()))
}
