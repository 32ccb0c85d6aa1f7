//! MusicGen's delay pattern: codebook k of a frame is predicted k steps after codebook 0, so
//! that each decoder step sees the coarser codebooks of a frame before the finer ones.
//!
//! Positions are counted over the decoder's token grid, position 0 being the BOS token, as in
//! transformers' `build_delay_pattern_mask`: codebook k (its index within its channel for stereo,
//! where the codebooks interleave L, R, L, R, ...) holds the pad token at positions `0..=k` and
//! after `k + frames`, and the codes of frame f at position `k + 1 + f`.

/// Where the delay pattern forces pad tokens for one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayPattern {
    num_codebooks: usize,
    audio_channels: usize,
    frames: usize,
    pad_token: u32,
    /// transformers applies no pattern when the grid is shorter than `2 * per_channel - 1`
    /// (under `per_channel - 1` frames): every position after BOS is then a free prediction.
    enabled: bool,
}

impl DelayPattern {
    /// `num_codebooks` must be a positive multiple of `audio_channels` (checked by the config).
    pub fn new(num_codebooks: usize, audio_channels: usize, frames: usize, pad_token: u32) -> Self {
        let per_channel = num_codebooks / audio_channels.max(1);
        let grid_len = frames + per_channel;
        Self { num_codebooks, audio_channels, frames, pad_token, enabled: grid_len + 1 >= 2 * per_channel }
    }

    pub fn num_codebooks(&self) -> usize {
        self.num_codebooks
    }

    pub fn pad_token(&self) -> u32 {
        self.pad_token
    }

    fn per_channel(&self) -> usize {
        self.num_codebooks / self.audio_channels.max(1)
    }

    /// Steps by which codebook `k` lags codebook 0 of its channel.
    pub fn delay(&self, k: usize) -> usize {
        if self.audio_channels == 2 {
            k / 2
        } else {
            k
        }
    }

    /// Decoder steps to run: one per frame plus the longest delay.
    pub fn steps(&self) -> usize {
        self.frames + self.per_channel() - 1
    }

    /// Length of the token grid per codebook, BOS included.
    pub fn grid_len(&self) -> usize {
        self.steps() + 1
    }

    /// Frames of codes the grid yields once the delay is undone.
    pub fn frames(&self) -> usize {
        if self.enabled {
            self.frames
        } else {
            self.steps()
        }
    }

    /// Whether the pattern fixes position `t` of codebook `k` to the pad token.
    pub fn is_forced(&self, k: usize, t: usize) -> bool {
        if !self.enabled {
            return false;
        }
        let d = self.delay(k);
        t <= d || t > d + self.frames
    }

    /// The token that ends up at position `t` of codebook `k` when the model proposed `token`.
    pub fn apply(&self, k: usize, t: usize, token: u32) -> u32 {
        if self.is_forced(k, t) {
            self.pad_token
        } else {
            token
        }
    }

    /// Undoes the delay: `grid` is (codebooks, grid_len) row-major, the result (codebooks, frames).
    pub fn undo(&self, grid: &[u32]) -> Vec<u32> {
        let len = self.grid_len();
        debug_assert_eq!(grid.len(), self.num_codebooks * len);
        let frames = self.frames();
        let mut codes = Vec::with_capacity(self.num_codebooks * frames);
        for k in 0..self.num_codebooks {
            let start = if self.enabled { 1 + self.delay(k) } else { 1 };
            codes.extend_from_slice(&grid[k * len + start..k * len + start + frames]);
        }
        codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u32 = 2048;

    /// The grid a decoder that always proposes `100 * k + t` would leave behind.
    fn fill(pattern: &DelayPattern) -> Vec<u32> {
        let len = pattern.grid_len();
        let mut grid = Vec::new();
        for k in 0..pattern.num_codebooks() {
            for t in 0..len {
                grid.push(if t == 0 { P } else { pattern.apply(k, t, (100 * k + t) as u32) });
            }
        }
        grid
    }

    #[test]
    fn mono_matches_transformers_docstring() {
        // transformers' example: 4 codebooks, max_length 8 => 4 frames, 7 steps.
        let p = DelayPattern::new(4, 1, 4, P);
        assert_eq!(p.steps(), 7);
        assert_eq!(p.grid_len(), 8);
        let forced: Vec<Vec<bool>> = (0..4).map(|k| (0..8).map(|t| p.is_forced(k, t)).collect()).collect();
        let (x, o) = (true, false);
        assert_eq!(forced[0], vec![x, o, o, o, o, x, x, x]);
        assert_eq!(forced[1], vec![x, x, o, o, o, o, x, x]);
        assert_eq!(forced[2], vec![x, x, x, o, o, o, o, x]);
        assert_eq!(forced[3], vec![x, x, x, x, o, o, o, o]);
    }

    #[test]
    fn undo_recovers_each_frame_in_order() {
        let p = DelayPattern::new(4, 1, 4, P);
        let codes = p.undo(&fill(&p));
        assert_eq!(codes.len(), 16);
        for k in 0..4 {
            let expected: Vec<u32> = (0..4).map(|f| (100 * k + k + 1 + f) as u32).collect();
            assert_eq!(&codes[k * 4..k * 4 + 4], expected.as_slice(), "codebook {k}");
        }
        assert!(!codes.contains(&P));
    }

    #[test]
    fn stereo_delays_pairs_of_interleaved_codebooks() {
        let p = DelayPattern::new(8, 2, 5, P);
        assert_eq!(p.steps(), 5 + 3);
        for k in 0..8 {
            assert_eq!(p.delay(k), k / 2);
            // Left and right codebooks of one level share their pads.
            for t in 0..p.grid_len() {
                assert_eq!(p.is_forced(k, t), p.is_forced(k ^ 1, t));
            }
        }
        let codes = p.undo(&fill(&p));
        assert_eq!(codes.len(), 8 * 5);
        assert_eq!(codes[7 * 5], (700 + 3 + 1) as u32);
    }

    #[test]
    fn every_codebook_gets_exactly_frames_free_positions() {
        for (k_total, channels) in [(4, 1), (8, 2), (2, 1)] {
            for frames in 1..12 {
                let p = DelayPattern::new(k_total, channels, frames, P);
                for k in 0..k_total {
                    let free = (1..p.grid_len()).filter(|&t| !p.is_forced(k, t)).count();
                    assert_eq!(free, p.frames(), "K={k_total} frames={frames} k={k}");
                }
            }
        }
    }

    #[test]
    fn short_grids_have_no_pattern_as_in_transformers() {
        // 4 codebooks and 2 frames: max_length 6 < 2*4-1, so transformers leaves every position free.
        let p = DelayPattern::new(4, 1, 2, P);
        assert!(!p.is_forced(3, 1));
        assert_eq!(p.frames(), p.steps());
        // From 3 frames on (max_length 7) the pattern applies.
        assert!(DelayPattern::new(4, 1, 3, P).is_forced(3, 1));
    }
}
