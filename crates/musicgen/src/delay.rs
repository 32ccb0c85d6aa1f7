//! MusicGen's delay pattern: codebook k of a frame is predicted k steps after codebook 0, so
//! that each decoder step sees the coarser codebooks of a frame before the finer ones.
//!
//! Positions are counted over the decoder's token grid, position 0 being the BOS token, as in
//! transformers' `build_delay_pattern_mask`: codebook k (its index within its channel for stereo,
//! where the codebooks interleave L, R, L, R, ...) holds the pad token at positions `0..=k` and
//! after `k + frames`, and the codes of frame f at position `k + 1 + f`.
//!
//! A continuation's prompt (transformers' `decoder_input_ids`) fixes the codes of its first
//! frames: those positions are forced to the prompt's codes, whatever the decoder proposes.

/// Where the delay pattern forces pad tokens for one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayPattern {
    num_codebooks: usize,
    audio_channels: usize,
    frames: usize,
    /// Leading frames whose codes are given rather than predicted.
    prompt_frames: usize,
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
        let enabled = grid_len + 1 >= 2 * per_channel;
        Self { num_codebooks, audio_channels, frames, prompt_frames: 0, pad_token, enabled }
    }

    /// The same grid with its first `prompt_frames` frames given (at most `frames`). `None` for a
    /// grid too short to carry the pattern: transformers would then feed the prompt undelayed,
    /// which no real continuation (a frame or two in all) needs.
    pub fn with_prompt(self, prompt_frames: usize) -> Option<Self> {
        (prompt_frames <= self.frames && (self.enabled || prompt_frames == 0)).then_some(Self { prompt_frames, ..self })
    }

    pub fn prompt_frames(&self) -> usize {
        self.prompt_frames
    }

    /// The position whose decoder output predicts the first free token: every position before
    /// it and itself hold the pad or prompt tokens, so they can be fed in one prefill.
    pub fn first_free_position(&self) -> usize {
        if self.enabled {
            self.prompt_frames + 1
        } else {
            1
        }
    }

    /// Writes the prompt's codes `(K, prompt_frames)` row-major into `grid` (K, grid_len).
    pub fn write_prompt(&self, grid: &mut [u32], codes: &[u32]) {
        let (len, n) = (self.grid_len(), self.prompt_frames);
        debug_assert_eq!(codes.len(), self.num_codebooks * n);
        for k in 0..self.num_codebooks {
            let start = k * len + 1 + self.delay(k);
            grid[start..start + n].copy_from_slice(&codes[k * n..(k + 1) * n]);
        }
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

    /// Whether position `t` of codebook `k` holds a prompt code.
    pub fn is_prompt(&self, k: usize, t: usize) -> bool {
        self.enabled && !self.is_forced(k, t) && t - self.delay(k) - 1 < self.prompt_frames
    }

    /// Whether the decoder's proposal is kept at position `t` of codebook `k`: neither a pad
    /// nor a prompt code.
    pub fn predicts(&self, k: usize, t: usize) -> bool {
        !self.is_forced(k, t) && !self.is_prompt(k, t)
    }

    /// The token that ends up at position `t` of codebook `k` when the model proposed `token`
    /// (on a grid without a prompt).
    pub fn apply(&self, k: usize, t: usize, token: u32) -> u32 {
        if self.is_forced(k, t) {
            self.pad_token
        } else {
            token
        }
    }

    /// The grid position holding codebook `k` of frame `f`.
    pub fn position_of(&self, k: usize, f: usize) -> usize {
        if self.enabled {
            1 + self.delay(k) + f
        } else {
            1 + f
        }
    }

    /// Frames whose every codebook is known once grid positions `..=filled` are.
    pub fn frames_known(&self, filled: usize) -> usize {
        let longest = if self.enabled { self.per_channel() - 1 } else { 0 };
        filled.saturating_sub(longest).min(self.frames())
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
    fn a_prompt_fixes_the_first_frames_of_every_codebook() {
        // 4 codebooks, 6 frames of which 2 are given: transformers' grid for decoder_input_ids of
        // 2 frames and max_length 10 (start token, then the delayed prompt).
        let p = DelayPattern::new(4, 1, 6, P).with_prompt(2).unwrap();
        assert_eq!(p.first_free_position(), 3);
        let mut grid = vec![P; 4 * p.grid_len()];
        let codes: Vec<u32> = (0..4).flat_map(|k| [10 * k, 10 * k + 1]).collect();
        p.write_prompt(&mut grid, &codes);
        let len = p.grid_len();
        assert_eq!(&grid[0..len], &[P, 0, 1, P, P, P, P, P, P, P]);
        assert_eq!(&grid[3 * len..4 * len], &[P, P, P, P, 30, 31, P, P, P, P]);
        for k in 0..4 {
            for t in 1..len {
                let given = grid[k * len + t] != P;
                assert_eq!(p.is_prompt(k, t), given, "k {k} t {t}");
                assert_eq!(p.predicts(k, t), !given && !p.is_forced(k, t));
            }
            // Every frame after the prompt is predicted exactly once.
            assert_eq!((1..len).filter(|&t| p.predicts(k, t)).count(), 4);
        }
        // Everything the first prediction depends on is known at once.
        assert!((0..4).all(|k| (0..p.first_free_position()).all(|t| !p.predicts(k, t))));
        assert!(DelayPattern::new(4, 1, 6, P).with_prompt(7).is_none());
        assert!(DelayPattern::new(4, 1, 2, P).with_prompt(1).is_none(), "no pattern on a 2-frame grid");
    }

    #[test]
    fn stereo_prompts_follow_each_level_s_delay() {
        let p = DelayPattern::new(8, 2, 5, P).with_prompt(3).unwrap();
        for k in 0..8 {
            let prompt: Vec<usize> = (0..p.grid_len()).filter(|&t| p.is_prompt(k, t)).collect();
            let d = k / 2;
            assert_eq!(prompt, vec![d + 1, d + 2, d + 3], "codebook {k}");
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
