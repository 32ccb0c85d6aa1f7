// The page at `/` of `dgx-music serve`, used the way a person would in Debian's headless Chromium:
// make a track with the tiny fixture model, hear it, extend it, continue a file of one's own, cancel
// one, get an error explained, follow a melody on a melody model, and leave screenshots at laptop and
// phone widths for a human to look at.
//
// Environment:
//   DGX_MUSIC_BIN      the built `dgx-music` binary (required unless DGX_MUSIC_URL is set)
//   DGX_MUSIC_MODEL    the checkpoint directory to serve (default: the tiny-mono fixture); the
//                      melody tests always start a second server on the tiny-melody fixture
//   DGX_MUSIC_URL      test an already running server instead of starting one
//   SCREENSHOT_DIR     where screenshots go (default: target/browser-screenshots)
//   CHROMIUM           the browser (default: /usr/bin/chromium)

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MODEL = process.env.DGX_MUSIC_MODEL
  ?? path.join(ROOT, 'crates/musicgen/tests/fixtures/tiny-mono/checkpoint');
const MELODY_FIXTURE = path.join(ROOT, 'crates/musicgen/tests/fixtures/tiny-melody');
const SCREENSHOTS = path.resolve(process.env.SCREENSHOT_DIR ?? path.join(ROOT, 'target/browser-screenshots'));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  // No sound card on CI machines: let <audio> play into a fake output.
  '--autoplay-policy=no-user-gesture-required',
];
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const GENERATION_TIMEOUT_MS = 240_000;

let server = null;
let baseUrl = process.env.DGX_MUSIC_URL ?? '';
const scratch = mkdtempSync(path.join(tmpdir(), 'dgx-music-browser-'));
let context;
let page;
const pageErrors = [];

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Starts `dgx-music serve` on `model` (and `extra` arguments) with its own data directory; resolves once it answers. */
async function startServer(model, name, { existing = false, extra = [] } = {}) {
  const bin = process.env.DGX_MUSIC_BIN;
  assert.ok(bin, 'set DGX_MUSIC_BIN to the dgx-music binary (tools/browser-test.sh does) or DGX_MUSIC_URL to a running server');
  const port = await freePort();
  const dataDir = path.join(scratch, name);
  if (!existing) mkdirSync(dataDir);
  const child = spawn(bin, [
    'serve', '--host', '127.0.0.1', '--port', String(port), '--data-dir', dataDir,
    '--model', model, '--device', 'cpu', ...extra,
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' } });
  const started = { child, url: `http://127.0.0.1:${port}`, log: '' };
  const keep = (chunk) => {
    started.log = (started.log + chunk).slice(-20_000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  child.once('exit', (code, signal) => {
    exited = `exited with ${signal ?? code}`;
  });
  const deadline = Date.now() + 180_000;
  while (Date.now() < deadline) {
    assert.equal(exited, null, `dgx-music serve ${exited} before it answered:\n${started.log}`);
    try {
      const response = await fetch(`${started.url}/api/v1/health`);
      // A server that needs a key answers 401: it is up.
      if (response.ok || response.status === 401) return started;
    } catch {
      // Not listening yet.
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  assert.fail(`dgx-music serve did not answer /api/v1/health within 180 s:\n${started.log}`);
}

async function stopServer(started) {
  if (!started || started.child.exitCode !== null) return;
  const exited = new Promise((resolve) => started.child.once('exit', resolve));
  started.child.kill('SIGTERM');
  const timer = setTimeout(() => started.child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

/** A fresh browser profile on the page at `baseUrl`; its script errors go to `pageErrors`. */
async function openPage(profile) {
  context = await chromium.launchPersistentContext(path.join(scratch, profile), {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: DESKTOP,
  });
  page = context.pages()[0] ?? await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(`uncaught (${profile}): ${error.message}`));
  page.on('console', (message) => {
    // Chromium logs every 4xx answer; the tests cause some of those on purpose.
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      pageErrors.push(`console (${profile}): ${message.text()}`);
    }
  });
  await page.goto(`${baseUrl}/`);
}

async function shoot(name, viewport, { fullPage = false } = {}) {
  await page.setViewportSize(viewport);
  // Let layout, the waveform's ResizeObserver and CSS transitions settle.
  await page.waitForTimeout(400);
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage });
}

const card = (prompt) => page.locator('#jobs > li', { has: page.locator('.job-prompt', { hasText: prompt }) });

async function setDuration(seconds) {
  // The keyboard path a person would take: Home is 1 s, each ArrowRight adds one.
  const slider = page.locator('#duration');
  await slider.focus();
  await page.keyboard.press(seconds >= 300 ? 'End' : 'Home');
  for (let s = 1; s < seconds && seconds < 300; s += 1) await page.keyboard.press('ArrowRight');
  assert.equal(await slider.inputValue(), String(seconds));
}

async function generate(prompt, seconds) {
  await page.locator('#prompt').fill(prompt);
  await setDuration(seconds);
  await page.getByRole('button', { name: 'Generate' }).click();
  const job = card(prompt).first();
  await job.waitFor({ state: 'visible', timeout: 10_000 });
  return job;
}

describe('the page of dgx-music serve', () => {
  before(async () => {
    mkdirSync(SCREENSHOTS, { recursive: true });
    if (!baseUrl) {
      server = await startServer(MODEL, 'data');
      baseUrl = server.url;
    }
    await openPage('profile');
  });

  after(async () => {
    await context?.close();
    await stopServer(server);
  });

  it('shows the model, the device and the queue in the status line', async () => {
    const status = page.locator('#server-status');
    await status.and(page.locator('[data-state="ok"]')).waitFor({ timeout: 15_000 });
    const text = await status.textContent();
    assert.match(text, /CPU/, text);
    assert.match(text, /idle|waiting|making/, text);
    assert.equal(await page.title(), 'DGX Music');
    const { models } = await (await page.request.get(`${baseUrl}/api/v1/models`)).json();
    const topK = String(Math.min(250, models[0].vocab_size));
    await page.waitForFunction((want) => document.getElementById('top_k').placeholder === want, topK);
    assert.equal(models[0].melody, false);
    assert.ok(await page.locator('[data-field="melody"]').isHidden(), 'a text-to-music model has no melody picker');
    assert.equal(await page.locator('.use-melody:visible').count(), 0);
  });

  it('explains an API error next to the field it concerns', async () => {
    await page.locator('#prompt').fill('');
    await page.getByRole('button', { name: 'Generate' }).click();
    const promptError = page.locator('#prompt-error');
    await promptError.waitFor({ state: 'visible', timeout: 10_000 });
    assert.equal(await page.locator('#prompt').getAttribute('aria-invalid'), 'true');
    assert.ok((await promptError.textContent()).length > 5);

    await page.locator('#prompt').fill('warm synth pads');
    assert.ok(await promptError.isHidden(), 'typing clears the error');
    await page.locator('#advanced > summary').click();
    await page.getByLabel('Top-p').fill('1.5');
    await page.getByRole('button', { name: 'Generate' }).click();
    const topPError = page.locator('#top_p-error');
    await topPError.waitFor({ state: 'visible', timeout: 10_000 });
    const message = await topPError.textContent();
    assert.match(message, /1\.5|\b1\b/, `the message names the value or the range: ${message}`);
    assert.equal(await page.locator('#top_p').getAttribute('aria-invalid'), 'true');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'top_p', 'focus moves to the bad field');
    const describedBy = await page.locator('#top_p').getAttribute('aria-describedby');
    assert.ok(describedBy.split(' ').includes('top_p-error'), 'screen readers read the error with the field');
    await shoot('error-desktop', DESKTOP);

    await page.getByRole('button', { name: 'Back to defaults' }).click();
    assert.equal(await page.locator('#top_p').inputValue(), '', 'empty means the server default');
    assert.ok(await topPError.isHidden());
  });

  it('generates a track, draws its waveform and plays it', async () => {
    const prompt = 'bright ukulele melody with hand claps';
    await page.locator('#seed').fill('1234');
    const job = await generate(prompt, 2);
    await job.and(page.locator('[data-status="completed"]'))
      .waitFor({ timeout: GENERATION_TIMEOUT_MS });

    const audio = job.locator('audio');
    await page.waitForFunction((el) => el.readyState >= 1 && el.duration > 0, await audio.elementHandle(), { timeout: 20_000 });
    const duration = await audio.evaluate((el) => el.duration);
    assert.ok(duration > 1 && duration < 3, `a 2 s request gives about 2 s of audio, got ${duration}`);

    const canvas = job.locator('canvas.waveform');
    await canvas.and(page.locator('[data-drawn="true"]')).waitFor({ timeout: 20_000 });
    const inked = await canvas.evaluate((el) => {
      const { data } = el.getContext('2d').getImageData(0, 0, el.width, el.height);
      let count = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) count += 1;
      return count / (el.width * el.height);
    });
    assert.ok(inked > 0.02, `the waveform covers ${(inked * 100).toFixed(1)}% of its canvas`);

    const box = await canvas.boundingBox();
    await canvas.click({ position: { x: box.width / 2, y: box.height / 2 } });
    const position = await audio.evaluate((el) => el.currentTime / el.duration);
    assert.ok(Math.abs(position - 0.5) < 0.1, `clicking the middle of the waveform seeks to the middle, got ${position}`);

    await audio.evaluate((el) => el.play());
    await page.waitForFunction((el) => !el.paused && el.currentTime > 0, await audio.elementHandle(), { timeout: 10_000 });
    await audio.evaluate((el) => el.pause());

    const state = await job.locator('.job-state').textContent();
    assert.match(state, /real time/, state);
    assert.match(state, /made in/, state);
    const download = job.getByRole('link', { name: 'Download' });
    assert.match(await download.getAttribute('href'), /^\/api\/v1\/jobs\/[^/]+\/audio$/);
    assert.match(await download.getAttribute('download'), /^bright-ukulele-melody-with-hand-claps-1234\.wav$/);
    const wav = await page.request.get(`${baseUrl}${await download.getAttribute('href')}`);
    assert.equal(wav.status(), 200);
    assert.match(wav.headers()['content-type'], /audio\/(wav|x-wav|wave)/);

    // The format menu beside it changes the link and the file name.
    const menu = job.getByRole('combobox', { name: 'Download format' });
    await menu.selectOption('flac');
    assert.match(await download.getAttribute('href'), /^\/api\/v1\/jobs\/[^/]+\/audio\?format=flac$/);
    assert.match(await download.getAttribute('download'), /^bright-ukulele-melody-with-hand-claps-1234\.flac$/);
    const flac = await page.request.get(`${baseUrl}${await download.getAttribute('href')}`);
    assert.equal(flac.status(), 200);
    assert.equal(flac.headers()['content-type'], 'audio/flac');
    await menu.selectOption('wav16');
    assert.match(await download.getAttribute('href'), /^\/api\/v1\/jobs\/[^/]+\/audio$/);
  });

  it('fills the form again from a finished track', async () => {
    await page.locator('#prompt').fill('something else');
    await page.locator('#seed').fill('');
    const job = card('bright ukulele melody with hand claps').first();
    await job.getByRole('button', { name: /^Again/ }).click();
    assert.equal(await page.locator('#prompt').inputValue(), 'bright ukulele melody with hand claps');
    assert.equal(await page.locator('#seed').inputValue(), '1234');
    assert.equal(await page.locator('#duration').inputValue(), '2');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'prompt');
  });

  it('extends a finished track by the seconds asked', async () => {
    const prompt = 'bright ukulele melody with hand claps';
    const source = card(prompt).first();
    const sourceId = await source.getAttribute('data-id');
    const extend = source.getByRole('button', { name: /^Extend/ });
    assert.equal(await extend.getAttribute('aria-expanded'), 'false');
    await extend.click();
    assert.equal(await extend.getAttribute('aria-expanded'), 'true');
    const seconds = source.getByLabel('Seconds to add');
    assert.equal(await page.evaluate(() => document.activeElement?.className), 'extend-seconds', 'focus moves to the box');
    await seconds.fill('0');
    await source.getByRole('button', { name: 'Add', exact: true }).click();
    assert.match(await source.locator('.extend-error').textContent(), /from 1 to 298/);
    assert.equal(await seconds.getAttribute('aria-invalid'), 'true');
    await seconds.fill('3');
    assert.ok(await source.locator('.extend-error').isHidden(), 'typing clears the complaint');
    assert.equal(await seconds.getAttribute('aria-invalid'), null);
    assert.match(await source.locator('.extend-hint').textContent(), /2 s, then 3 s more: 5 s in all/);
    await source.scrollIntoViewIfNeeded();
    await shoot('extend-desktop', DESKTOP);
    await source.getByRole('button', { name: 'Add 3 s' }).click();
    await page.waitForFunction((id) => document.querySelector('#jobs > li')?.dataset.id !== id, sourceId, { timeout: 10_000 });
    assert.ok(await source.locator('.extend-form').isHidden(), 'the box closes once the extension is queued');
    assert.equal(await extend.getAttribute('aria-expanded'), 'false');

    const extended = page.locator('#jobs > li').first();
    const id = await extended.getAttribute('data-id');
    await extended.and(page.locator('[data-status="completed"]')).waitFor({ timeout: GENERATION_TIMEOUT_MS });
    assert.equal(await extended.locator('.job-continues').textContent(), `Extends the 2.0 s track “${prompt}”`);
    const job = await (await page.request.get(`${baseUrl}/api/v1/jobs/${id}`)).json();
    assert.equal(job.continue_from.source_job, sourceId);
    assert.equal(job.prompt, prompt);
    assert.ok(Math.abs(job.duration - 5) < 0.05, `2 s + 3 s asks for 5 s in all, got ${job.duration}`);
    const audio = extended.locator('audio');
    await page.waitForFunction((el) => el.readyState >= 1 && el.duration > 0, await audio.elementHandle(), { timeout: 20_000 });
    const duration = await audio.evaluate((el) => el.duration);
    assert.ok(Math.abs(duration - 5) < 0.1, `the extended track lasts 5 s, got ${duration}`);

    // "Again" on an extension continues the same copy of the old track.
    await extended.getByRole('button', { name: /^Again/ }).click();
    assert.match(await page.locator('#continue_from-status').textContent(), /continues an earlier 2\.0 s track/);
    await page.getByRole('button', { name: 'Remove' }).click();
    assert.ok(await page.locator('#continue_from-chosen').isHidden());
  });

  it('continues a file of your own, and says why a file is refused', async () => {
    const picker = page.getByLabel(/Continue your own audio/);
    await picker.setInputFiles({
      name: 'shopping-list.txt', mimeType: 'text/plain', buffer: Buffer.from('eggs, flour, milk\n'.repeat(20)),
    });
    const error = page.locator('#continue_from-error');
    await error.waitFor({ state: 'visible', timeout: 10_000 });
    assert.match(await error.textContent(), /shopping-list\.txt: not an audio file/);
    assert.equal(await picker.getAttribute('aria-invalid'), 'true');
    assert.ok(await page.locator('#continue_from-chosen').isHidden());
    assert.equal(await picker.inputValue(), '', 'the refused file is not kept');

    await picker.setInputFiles(path.join(ROOT, 'crates/musicgen/tests/fixtures/audio/sine_44k1_stereo.wav'));
    await page.waitForFunction(
      () => /continues “sine_44k1_stereo\.wav” \(0\.2 s\)/.test(document.getElementById('continue_from-status').textContent),
      null,
      { timeout: 10_000 },
    );
    assert.ok(await error.isHidden(), 'a good file clears the error');
    assert.equal(await picker.getAttribute('aria-invalid'), null);
    await shoot('continue-desktop', DESKTOP);

    const job = await generate('my riff, carried on with strings', 2);
    await job.and(page.locator('[data-status="completed"]')).waitFor({ timeout: GENERATION_TIMEOUT_MS });
    assert.equal(await job.locator('.job-continues').textContent(), 'Continues “sine_44k1_stereo.wav” (0.2 s)');
    const stored = await (await page.request.get(`${baseUrl}/api/v1/jobs/${await job.getAttribute('data-id')}`)).json();
    assert.equal(stored.continue_from.filename, 'sine_44k1_stereo.wav');
    const upload = await page.request.get(`${baseUrl}/api/v1/uploads/${stored.continue_from.upload}`);
    assert.equal(upload.status(), 200);

    await page.getByRole('button', { name: 'Remove' }).click();
    assert.ok(await page.locator('#continue_from-chosen').isHidden());
    assert.equal(await picker.inputValue(), '');
  });

  it('cancels a long job while it runs, then deletes it', async () => {
    const prompt = 'five minute drone for cancelling';
    await page.locator('#seed').fill('');
    const job = await generate(prompt, 300);
    await job.and(page.locator('[data-status="running"]')).waitFor({ timeout: 60_000 });
    await page.waitForFunction(
      (el) => Number(el.querySelector('[role="progressbar"]').getAttribute('aria-valuenow')) > 0 || el.dataset.status !== 'running',
      await job.elementHandle(),
      { timeout: 60_000 },
    );
    assert.equal(await job.getAttribute('data-status'), 'running', 'the job is still running when cancelled');

    // Heard while it is made: the live player reads the stream's WAV header and schedules its samples.
    await job.getByRole('button', { name: /^Listen/ }).click();
    const wave = job.locator('canvas.live-wave');
    await page.waitForFunction((el) => Number(el.dataset.scheduled ?? 0) > 0, await wave.elementHandle(), { timeout: 60_000 });
    assert.equal(await wave.getAttribute('data-sample-rate'), '32000', 'the header was parsed');
    assert.equal(await wave.getAttribute('data-channels'), '1');
    assert.match(await job.locator('.live-status').textContent(), /Listening · .* made so far/);
    assert.equal(await job.getAttribute('data-status'), 'running', 'the audio arrives before the job ends');
    await page.waitForFunction((el) => el.dataset.drawn === 'true', await wave.elementHandle(), { timeout: 10_000 });
    const inked = await wave.evaluate((el) => {
      const { data } = el.getContext('2d').getImageData(0, 0, el.width, el.height);
      let count = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) count += 1;
      return count / (el.width * el.height);
    });
    assert.ok(inked > 0.005, `the growing waveform covers ${(inked * 100).toFixed(2)}% of its canvas`);
    assert.equal(await job.getByRole('button', { name: /^Listen/ }).getAttribute('aria-pressed'), 'true');
    await page.evaluate(() => window.scrollTo(0, 0));
    await shoot('running-desktop', DESKTOP);
    await job.getByRole('button', { name: 'Cancel', exact: true }).click();
    await job.and(page.locator('[data-status="cancelled"]')).waitFor({ timeout: 30_000 });
    assert.equal(await job.locator('.badge').textContent(), 'Cancelled');
    const check = await page.request.get(`${baseUrl}/api/v1/jobs/${await job.getAttribute('data-id')}`);
    assert.equal((await check.json()).status, 'cancelled', 'the server agrees');

    const remove = job.getByRole('button', { name: 'Delete', exact: true });
    await remove.click();
    await job.getByRole('button', { name: 'Delete for good?' }).click();
    await job.waitFor({ state: 'detached', timeout: 10_000 });
  });

  it('looks right at laptop and phone widths, light and dark', async () => {
    await generate('lofi hip hop beat, vinyl crackle, mellow keys', 3);
    const cancelled = await generate('a track that was stopped', 300);
    await cancelled.getByRole('button', { name: 'Cancel', exact: true }).click();
    await cancelled.and(page.locator('[data-status="cancelled"]')).waitFor({ timeout: 30_000 });
    await page.locator('#jobs > li[data-status="completed"] canvas[data-drawn="true"]').nth(1)
      .waitFor({ timeout: GENERATION_TIMEOUT_MS });
    await page.locator('#prompt').fill('cinematic strings swelling into a heroic brass theme');
    await page.locator('#advanced').evaluate((el) => { el.open = false; });
    await page.evaluate(() => window.scrollTo(0, 0));

    await shoot('desktop', DESKTOP);
    await shoot('phone', PHONE);
    await shoot('phone-full', PHONE, { fullPage: true });
    await page.emulateMedia({ colorScheme: 'dark' });
    await shoot('desktop-dark', DESKTOP);
    await shoot('phone-dark', PHONE);
    await page.emulateMedia({ colorScheme: 'light' });
    await page.setViewportSize(DESKTOP);

    // Nothing spills sideways on a phone.
    await page.setViewportSize(PHONE);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone screen`);
    await page.setViewportSize(DESKTOP);
  });

  it('is usable from the keyboard: every control has a name, focus order follows the page', async () => {
    const unnamed = await page.evaluate(() => [...document.querySelectorAll('button, input, textarea, a[href], audio, summary')]
      .filter((el) => el.offsetParent !== null || el.tagName === 'SUMMARY')
      .filter((el) => {
        const labelled = el.labels?.length || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
        return !labelled && !el.textContent.trim();
      })
      .map((el) => el.outerHTML.slice(0, 80)));
    assert.deepEqual(unnamed, []);

    await page.reload();
    const order = [];
    for (let i = 0; i < 6; i += 1) {
      await page.keyboard.press('Tab');
      order.push(await page.evaluate(() => {
        const el = document.activeElement;
        return el.id || el.className || el.tagName.toLowerCase();
      }));
    }
    assert.deepEqual(order, ['skip', 'prompt', 'duration', 'continue_from', 'summary', 'generate']);
  });

  it('raised no script errors', () => {
    assert.deepEqual(pageErrors, []);
  });
});

describe('the page of a server with a text model and a melody model', () => {
  let melodyServer = null;
  let tuneJobId = null;
  const MONO_ID = 'local/tiny-mono/checkpoint';
  const MELODY_ID = 'local/tiny-melody/checkpoint';

  before(async () => {
    melodyServer = await startServer(MODEL, 'melody-data', { extra: ['--model', path.join(MELODY_FIXTURE, 'checkpoint')] });
    baseUrl = melodyServer.url;
    await openPage('melody-profile');
  });

  after(async () => {
    await context?.close();
    await stopServer(melodyServer);
  });

  it('offers both models, the melody picker only for the melody one', async () => {
    const models = page.getByLabel('Model', { exact: true });
    await models.waitFor({ state: 'visible', timeout: 15_000 });
    const options = await models.locator('option').evaluateAll((all) => all.map((o) => [o.value, o.textContent]));
    assert.deepEqual(options, [[MONO_ID, MONO_ID], [MELODY_ID, `${MELODY_ID} (follows a melody)`]]);
    assert.equal(await models.inputValue(), MONO_ID, 'the server\'s first model is chosen');
    const melodyField = page.locator('[data-field="melody"]');
    assert.ok(await melodyField.isHidden(), 'the text model takes no melody');

    const plain = await generate('plain words on the text model', 1);
    await plain.and(page.locator('[data-status="completed"]')).waitFor({ timeout: GENERATION_TIMEOUT_MS });
    assert.match(await plain.locator('.job-params').textContent(), new RegExp(`^${MONO_ID} · 1 s`));
    const made = await (await page.request.get(`${baseUrl}/api/v1/jobs/${await plain.getAttribute('data-id')}`)).json();
    assert.equal(made.model, MONO_ID);

    await models.selectOption(MELODY_ID);
    await melodyField.waitFor({ state: 'visible' });
    // "Again" brings back the model that made the track.
    await plain.getByRole('button', { name: /^Again/ }).click();
    assert.equal(await models.inputValue(), MONO_ID);
    assert.ok(await melodyField.isHidden());
    await models.selectOption(MELODY_ID);
    await melodyField.waitFor({ state: 'visible' });
  });

  it('follows an uploaded melody, and says so on the card', async () => {
    const picker = page.getByLabel(/Follow a melody/);
    await picker.waitFor({ state: 'visible', timeout: 15_000 });
    await picker.setInputFiles(path.join(MELODY_FIXTURE, 'melody.wav'));
    await page.waitForFunction(
      () => /follows the melody of “melody\.wav” \(2\.0 s\)/.test(document.getElementById('melody-status').textContent),
      null,
      { timeout: 10_000 },
    );
    await shoot('melody-desktop', DESKTOP);
    const job = await generate('synth pop following a hummed tune', 2);
    await job.and(page.locator('[data-status="completed"]')).waitFor({ timeout: GENERATION_TIMEOUT_MS });
    assert.equal(await job.locator('.job-melody').textContent(), 'Follows the melody of “melody.wav” (2.0 s)');
    tuneJobId = await job.getAttribute('data-id');
    const stored = await (await page.request.get(`${baseUrl}/api/v1/jobs/${tuneJobId}`)).json();
    assert.equal(stored.model, MELODY_ID);
    assert.match(await job.locator('.job-params').textContent(), new RegExp(`^${MELODY_ID} · `));
    assert.equal(stored.melody.filename, 'melody.wav');
    assert.equal(stored.melody.source_job, null);
  });

  it('makes a finished track the melody of the next one, switching to the melody model', async () => {
    await page.getByLabel('Model', { exact: true }).selectOption(MONO_ID);
    assert.ok(await page.locator('[data-field="melody"]').isHidden());
    const source = page.locator(`#jobs > li[data-id="${tuneJobId}"]`);
    await source.getByRole('button', { name: /Use as melody/ }).click();
    assert.equal(await page.getByLabel('Model', { exact: true }).inputValue(), MELODY_ID, 'a melody needs the melody model');
    assert.match(
      await page.locator('#melody-status').textContent(),
      /follows the melody of the 2\.0 s track “synth pop following a hummed tune”/,
    );
    const job = await generate('the same tune on a music box', 2);
    await job.and(page.locator('[data-status="completed"]')).waitFor({ timeout: GENERATION_TIMEOUT_MS });
    const stored = await (await page.request.get(`${baseUrl}/api/v1/jobs/${await job.getAttribute('data-id')}`)).json();
    assert.equal(stored.melody.source_job, tuneJobId, 'the request named the finished job');
    assert.match(await job.locator('.job-melody').textContent(), /Follows the melody of the 2\.0 s track “synth pop/);

    await page.locator('#melody-remove').click();
    assert.ok(await page.locator('#melody-chosen').isHidden());
    const plain = await generate('no tune this time', 1);
    await plain.and(page.locator('[data-status="completed"]')).waitFor({ timeout: GENERATION_TIMEOUT_MS });
    assert.ok(await plain.locator('.job-melody').isHidden(), 'without a melody the track follows the words alone');
  });

  it('raised no script errors', () => {
    assert.deepEqual(pageErrors, []);
  });
});

describe('the page of a server that needs a key', () => {
  let keyedServer = null;
  let token = '';

  before(async () => {
    const dataDir = path.join(scratch, 'keyed-data');
    mkdirSync(dataDir);
    const made = spawnSync(process.env.DGX_MUSIC_BIN, ['keys', 'create', '--name', 'browser', '--data-dir', dataDir]);
    assert.equal(made.status, 0, String(made.stderr));
    token = String(made.stdout).trim();
    keyedServer = await startServer(MODEL, 'keyed-data', { existing: true });
    baseUrl = keyedServer.url;
    await openPage('keyed-profile');
  });

  after(async () => {
    await context?.close();
    await stopServer(keyedServer);
  });

  it('asks for the key, refuses a wrong one, and then works, audio included', async () => {
    const dialog = page.locator('#key-dialog');
    await dialog.waitFor({ state: 'visible', timeout: 15_000 });
    await shoot('key-desktop', DESKTOP);
    await page.getByLabel('Your key').fill('dgxm_not-a-key');
    await page.getByRole('button', { name: 'Use this key' }).click();
    const error = page.locator('#api-key-error');
    await error.waitFor({ state: 'visible', timeout: 10_000 });
    assert.match(await error.textContent(), /not known to this server/);

    await page.getByLabel('Your key').fill(token);
    await page.getByRole('button', { name: 'Use this key' }).click();
    await dialog.waitFor({ state: 'hidden', timeout: 10_000 });
    await page.locator('#server-status[data-state="ok"]').waitFor({ timeout: 15_000 });
    const job = await generate('a track behind a key', 1);
    await job.and(page.locator('[data-status="completed"]')).waitFor({ timeout: GENERATION_TIMEOUT_MS });
    // The waveform is drawn from the audio, which the browser fetched with the session cookie.
    await job.locator('canvas[data-drawn="true"]').waitFor({ timeout: 30_000 });
    assert.equal(await page.evaluate(() => localStorage.getItem('dgx-music-api-key')), token);

    await page.reload();
    await page.locator('#server-status[data-state="ok"]').waitFor({ timeout: 15_000 });
    assert.ok(await dialog.isHidden(), 'the kept key is used after a reload');
    await page.getByRole('button', { name: 'Forget my key' }).click();
    await dialog.waitFor({ state: 'visible', timeout: 15_000 });
  });

  it('raised no script errors', () => {
    assert.deepEqual(pageErrors, []);
  });
});

after(() => {
  rmSync(scratch, { recursive: true, force: true });
});
