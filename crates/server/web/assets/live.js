// Hearing a track while it is made: GET /api/v1/jobs/{id}/stream read with fetch() as its bytes
// arrive, the WAV header parsed, the 16-bit PCM turned into Float32 and played with Web Audio, piece
// after piece scheduled back to back, while the waveform grows. An <audio> element would wait for, or
// guess at, a file still being written; Web Audio plays exactly what came, as soon as it came.

import { api, plainWords } from './api.js';
import { formatLength } from './format.js';
import { drawPeaks } from './waveform.js';

// Frames per waveform bucket.
const BUCKET_FRAMES = 512;
// The least audio scheduled at once (but for the last piece): fewer, longer source nodes.
const MIN_PIECE_FRAMES = 4096;
// Scheduling this far ahead of the clock absorbs the main thread's hiccups.
const LEAD_SECS = 0.15;
// The size an open-ended WAV header gives (an endless track).
const UNKNOWN_SIZE = 0xFFFFFFFF;

// One context for the page: browsers allow only a few, and each holds the output device.
let sharedContext = null;

/**
 * The format of a WAV stream and where its samples start, from its first bytes; null until enough
 * of them have arrived. Only 16-bit PCM, what the server streams.
 */
export function parseWavHeader(bytes) {
  if (bytes.length < 12) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (at) => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (tag(0) !== 'RIFF' || tag(8) !== 'WAVE') throw new Error('the stream is not a WAV file');
  let format = null;
  let at = 12;
  while (at + 8 <= bytes.length) {
    const id = tag(at);
    const size = view.getUint32(at + 4, true);
    if (id === 'data') {
      if (!format) throw new Error('the WAV stream has no format before its samples');
      const totalFrames = size === UNKNOWN_SIZE ? null : size / format.block;
      return { ...format, dataStart: at + 8, totalFrames };
    }
    if (at + 8 + size > bytes.length) return null;
    if (id === 'fmt ') {
      const code = view.getUint16(at + 8, true);
      const channels = view.getUint16(at + 10, true);
      const bits = view.getUint16(at + 22, true);
      if (code !== 1 || bits !== 16 || channels < 1) {
        throw new Error(`the WAV stream is not 16-bit PCM (format ${code}, ${bits} bits, ${channels} channels)`);
      }
      format = { channels, sampleRate: view.getUint32(at + 12, true), block: 2 * channels };
    }
    at += 8 + size + (size % 2);
  }
  return null;
}

function concat(a, b) {
  if (a.length === 0) return b;
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a);
  joined.set(b, a.length);
  return joined;
}

/** A card's live player: the Listen button, the growing waveform and a status line saying what it hears. */
export class LivePlayer {
  constructor({ button, canvas, status }, onChange) {
    Object.assign(this, { button, canvas, status, onChange });
    this.controller = null;
    this.sources = new Set();
    this.frame = 0;
    this.reset();
    new ResizeObserver(() => this.redraw()).observe(canvas);
  }

  reset() {
    this.format = null;
    this.scheduled = 0;
    this.peaks = [];
    this.loudest = 0;
    // When each scheduled piece plays: [context time, first frame, frames].
    this.timeline = [];
    this.next = 0;
  }

  /** Whether it is fetching or still has audio to play. */
  get active() {
    return this.controller !== null || this.sources.size > 0;
  }

  toggle(jobId) {
    if (this.active) this.stop();
    else this.listen(jobId);
  }

  async listen(jobId) {
    // Made inside the click: a user gesture is what lets a context play.
    sharedContext ??= new AudioContext();
    const context = sharedContext;
    await context.resume();
    this.stop();
    this.reset();
    const controller = new AbortController();
    this.controller = controller;
    this.setState('connecting', 'Waiting for the first sound…');
    this.button.textContent = 'Stop';
    this.button.setAttribute('aria-pressed', 'true');
    this.canvas.hidden = false;
    this.onChange();
    try {
      const response = await api.stream(jobId, controller.signal);
      const reader = response.body.getReader();
      let pending = new Uint8Array(0);
      for (;;) {
        const { value, done } = await reader.read();
        if (value) pending = concat(pending, value);
        if (!this.format) {
          this.format = parseWavHeader(pending);
          if (!this.format) {
            if (done) throw new Error('the stream ended before its WAV header');
            continue;
          }
          pending = pending.subarray(this.format.dataStart);
          this.canvas.dataset.sampleRate = String(this.format.sampleRate);
          this.canvas.dataset.channels = String(this.format.channels);
        }
        const frames = Math.floor(pending.length / this.format.block);
        if (frames > 0 && (done || frames >= MIN_PIECE_FRAMES)) {
          const bytes = frames * this.format.block;
          this.schedule(context, pending.subarray(0, bytes));
          pending = pending.slice(bytes);
        }
        if (done) break;
      }
      this.controller = null;
      this.setState('received', `Heard all ${formatLength(this.seconds())} that was made`);
    } catch (error) {
      this.controller = null;
      if (error.name === 'AbortError') return;
      this.stop();
      this.setState('error', `Could not listen. ${error.code ? plainWords(error) : error.message}.`);
    } finally {
      if (!this.active) this.resetButton();
      this.onChange();
    }
  }

  stop() {
    this.controller?.abort();
    this.controller = null;
    for (const source of this.sources) source.stop();
    this.sources.clear();
    this.resetButton();
    if (this.status.dataset.state === 'playing' || this.status.dataset.state === 'connecting') {
      this.setState('stopped', 'Stopped');
    }
  }

  resetButton() {
    this.button.textContent = 'Listen';
    this.button.setAttribute('aria-pressed', 'false');
  }

  seconds() {
    return this.format ? this.scheduled / this.format.sampleRate : 0;
  }

  /** Plays interleaved 16-bit `bytes` right after what is already scheduled. */
  schedule(context, bytes) {
    const { channels, sampleRate, block } = this.format;
    const frames = bytes.length / block;
    const buffer = context.createBuffer(channels, frames, sampleRate);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let channel = 0; channel < channels; channel += 1) {
      const out = buffer.getChannelData(channel);
      for (let i = 0; i < frames; i += 1) out[i] = view.getInt16(i * block + channel * 2, true) / 32768;
    }
    this.grow(buffer);
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    // Back to back; after an underrun (the stream fell behind) the next piece starts a little ahead.
    const at = Math.max(this.next, context.currentTime + LEAD_SECS);
    source.start(at);
    this.timeline.push([at, this.scheduled, frames]);
    this.next = at + frames / sampleRate;
    this.scheduled += frames;
    this.sources.add(source);
    source.addEventListener('ended', () => {
      this.sources.delete(source);
      if (!this.active) {
        this.resetButton();
        if (this.status.dataset.state === 'received') this.setState('ended', `Played ${formatLength(this.seconds())}`);
        this.onChange();
      }
    });
    this.canvas.dataset.scheduled = String(this.scheduled);
    this.setState('playing', `Listening · ${formatLength(this.seconds())} made so far`);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.animate(context));
  }

  /** The waveform's peaks, one per bucket of frames, extended by `buffer`. */
  grow(buffer) {
    const first = this.scheduled;
    for (let channel = 0; channel < buffer.numberOfChannels; channel += 1) {
      const samples = buffer.getChannelData(channel);
      for (let i = 0; i < samples.length; i += 1) {
        const bucket = Math.floor((first + i) / BUCKET_FRAMES);
        const value = Math.abs(samples[i]);
        if (!(this.peaks[bucket] >= value)) this.peaks[bucket] = value;
        if (value > this.loudest) this.loudest = value;
      }
    }
  }

  /** Frames played by the context's clock. */
  played(now) {
    let played = 0;
    for (const [at, first, frames] of this.timeline) {
      if (at > now) break;
      played = first + Math.min(frames, (now - at) * this.format.sampleRate);
    }
    return played;
  }

  animate(context) {
    this.redraw(context);
    this.frame = this.sources.size > 0 ? requestAnimationFrame(() => this.animate(context)) : 0;
  }

  redraw(context = sharedContext) {
    if (!this.format || this.canvas.hidden) return;
    // The whole track's width when its length is known, so the drawing grows into it.
    const total = this.format.totalFrames ?? this.scheduled;
    const buckets = Math.max(1, Math.ceil(total / BUCKET_FRAMES), this.peaks.length);
    const scale = this.loudest > 0 ? 1 / this.loudest : 0;
    const peaks = new Float32Array(buckets);
    for (let i = 0; i < this.peaks.length; i += 1) peaks[i] = (this.peaks[i] ?? 0) * scale;
    const played = context && total > 0 ? this.played(context.currentTime) / total : 0;
    drawPeaks(this.canvas, peaks, played);
    this.canvas.dataset.drawn = 'true';
  }

  setState(state, text) {
    this.status.dataset.state = state;
    this.status.textContent = text;
  }
}
