// Waveforms drawn on canvas from the audio itself: the WAV is fetched, decoded with Web Audio and
// reduced to a fixed number of peaks, which are redrawn cheaply on resize and as playback moves.

const BUCKETS = 1200;
const BAR = 2;
const GAP = 1;
// Decoding resamples to the context's rate; 16 kHz keeps a 5-minute track small and loses nothing a
// 64-pixel-high drawing could show.
const DECODE_RATE = 16000;
const MAX_PARALLEL_DECODES = 2;

let decodeContext = null;
let running = 0;
const waiting = [];

// A finished slot passes straight to the next waiter, so no newcomer can slip in between.
async function throttled(task) {
  if (running >= MAX_PARALLEL_DECODES) await new Promise((resolve) => waiting.push(resolve));
  else running += 1;
  try {
    return await task();
  } finally {
    const next = waiting.shift();
    if (next) next();
    else running -= 1;
  }
}

async function loadPeaks(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`audio request answered ${response.status}`);
  const bytes = await response.arrayBuffer();
  // An OfflineAudioContext decodes without a user gesture and never touches the speakers.
  decodeContext ??= new OfflineAudioContext(1, 1, DECODE_RATE);
  const buffer = await decodeContext.decodeAudioData(bytes);
  const peaks = new Float32Array(BUCKETS);
  const perBucket = buffer.length / BUCKETS;
  for (let channel = 0; channel < buffer.numberOfChannels; channel += 1) {
    const samples = buffer.getChannelData(channel);
    for (let bucket = 0; bucket < BUCKETS; bucket += 1) {
      const end = Math.min(samples.length, Math.floor((bucket + 1) * perBucket));
      let peak = peaks[bucket];
      for (let i = Math.floor(bucket * perBucket); i < end; i += 1) {
        const value = Math.abs(samples[i]);
        if (value > peak) peak = value;
      }
      peaks[bucket] = peak;
    }
  }
  const loudest = peaks.reduce((max, value) => Math.max(max, value), 0);
  if (loudest > 0) for (let i = 0; i < BUCKETS; i += 1) peaks[i] /= loudest;
  return { peaks, seconds: buffer.duration };
}

/** Bars of `peaks` (0..=1) across the canvas; the first `played` share in the played colour. */
export function drawPeaks(canvas, peaks, played) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const style = getComputedStyle(canvas);
  const rest = style.getPropertyValue('--wave').trim() || '#999';
  const done = style.getPropertyValue('--wave-played').trim() || '#555';
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, width, height);
  const step = (BAR + GAP) * dpr;
  const bars = Math.max(1, Math.floor(width / step));
  const middle = height / 2;
  for (let bar = 0; bar < bars; bar += 1) {
    const from = Math.floor((bar / bars) * peaks.length);
    const to = Math.max(from + 1, Math.floor(((bar + 1) / bars) * peaks.length));
    let peak = 0;
    for (let i = from; i < to; i += 1) peak = Math.max(peak, peaks[i]);
    const half = Math.max(dpr, peak * (middle - dpr));
    ctx.fillStyle = (bar + 0.5) / bars <= played ? done : rest;
    ctx.fillRect(bar * step, middle - half, BAR * dpr, half * 2);
  }
}

function drawMessage(canvas, text) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(canvas.clientWidth * dpr));
  canvas.height = Math.max(1, Math.round(canvas.clientHeight * dpr));
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = getComputedStyle(canvas).color;
  ctx.font = `${13 * dpr}px system-ui, sans-serif`;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(text, canvas.width / 2, canvas.height / 2);
}

/**
 * Draws the waveform of `url` into `canvas` once the canvas scrolls into view, keeps the played part
 * highlighted while `audio` plays, and seeks when the drawing is clicked.
 */
export function attachWaveform(canvas, audio, url) {
  let peaks = null;
  let frame = 0;
  const played = () => (audio.duration > 0 ? audio.currentTime / audio.duration : 0);
  const redraw = () => {
    if (peaks) drawPeaks(canvas, peaks, played());
  };
  const animate = () => {
    redraw();
    frame = audio.paused ? 0 : requestAnimationFrame(animate);
  };

  const start = async () => {
    canvas.dataset.drawn = 'loading';
    try {
      ({ peaks } = await throttled(() => loadPeaks(url)));
      redraw();
      canvas.dataset.drawn = 'true';
    } catch (error) {
      drawMessage(canvas, 'Waveform unavailable');
      canvas.dataset.drawn = 'error';
      canvas.setAttribute('aria-label', `Waveform unavailable: ${error.message}`);
    }
  };

  const visible = new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) {
      visible.disconnect();
      start();
    }
  }, { rootMargin: '200px' });
  visible.observe(canvas);

  new ResizeObserver(redraw).observe(canvas);
  audio.addEventListener('play', () => {
    if (!frame) frame = requestAnimationFrame(animate);
  });
  for (const event of ['pause', 'seeked', 'ended', 'loadedmetadata']) audio.addEventListener(event, redraw);
  canvas.addEventListener('click', (event) => {
    if (!(audio.duration > 0)) return;
    const box = canvas.getBoundingClientRect();
    audio.currentTime = ((event.clientX - box.left) / box.width) * audio.duration;
    redraw();
  });
}
