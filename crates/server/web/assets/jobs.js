// The live list of jobs: newest first, refreshed from GET /api/v1/jobs and kept current by one
// Server-Sent Events stream per active job. A finished track can be extended from its card (by the
// model that made it), and on a server with a melody model be the melody of the next one.

import { api, plainWords } from './api.js';
import {
  describeContinuation, formatAgo, formatLength, formatModel, formatSpeed, formatTook, slug,
} from './format.js';
import { LivePlayer } from './live.js';
import { attachWaveform } from './waveform.js';

const PAGE = 20;
// Browsers allow six HTTP/1.1 connections per host; streams beyond four would starve the page's own
// requests. Jobs without a stream are still refreshed by the periodic list request.
const MAX_STREAMS = 4;
const ACTIVE = new Set(['queued', 'running']);
const STATUS_WORDS = {
  queued: 'Waiting',
  running: 'Making',
  completed: 'Ready',
  failed: 'Failed',
  cancelled: 'Cancelled',
};
const CONFIRM_MS = 4000;
// The longest track the server makes; an extension adds at least a second.
const MAX_DURATION = 300;
const DEFAULT_EXTENSION = 10;
// File name extensions of the download formats (GET /jobs/{id}/audio?format=).
const DOWNLOAD_EXTENSIONS = { wav16: 'wav', wav24: 'wav', 'wav-f32': 'wav', flac: 'flac', mp3: 'mp3', ogg: 'ogg' };

const isActive = (job) => ACTIVE.has(job.status);
const newerFirst = (a, b) => Date.parse(b.created_at) - Date.parse(a.created_at) || (a.id < b.id ? 1 : -1);

function describeParams(job, showModel) {
  const parts = [formatLength(job.duration)];
  if (showModel) parts.unshift(formatModel(job.model));
  if (job.seed !== null && job.seed !== undefined) parts.push(`seed ${job.seed}`);
  parts.push(`top-k ${job.top_k}`);
  if (job.top_p > 0) parts.push(`top-p ${job.top_p}`);
  parts.push(`temperature ${job.temperature}`, `CFG ${job.cfg_coef}`);
  return parts.join(' · ');
}

function secondsSince(iso) {
  const start = Date.parse(iso);
  return Number.isFinite(start) ? Math.max(0, (Date.now() - start) / 1000) : null;
}

function describeState(job) {
  const ago = formatAgo(job.finished_at ?? job.created_at);
  switch (job.status) {
    case 'queued':
      // Queued for a model this server does not run (e.g. from before a restart with another --model).
      if (job.waiting_reason) return `Waiting for a server running ${formatModel(job.model)}`;
      return Number.isInteger(job.queue_position)
        ? `Waiting in line: ${job.queue_position === 0 ? 'next up' : `${job.queue_position} ahead`}`
        : 'Waiting in line';
    case 'running': {
      const percent = Math.floor(job.progress * 100);
      const elapsed = secondsSince(job.started_at);
      const parts = [`${percent}% done`];
      if (elapsed !== null) {
        parts.push(`${formatTook(elapsed)} so far`);
        if (job.progress >= 0.05 && job.progress < 1) {
          parts.push(`about ${formatTook((elapsed / job.progress) * (1 - job.progress))} left`);
        }
      }
      return parts.join(' · ');
    }
    case 'completed': {
      const parts = [`${formatLength(job.audio_duration ?? job.duration)} of audio`];
      if (job.generation_time !== null && job.generation_time !== undefined) {
        parts.push(`made in ${formatTook(job.generation_time)}`);
      }
      if (job.real_time_factor) parts.push(formatSpeed(job.real_time_factor));
      parts.push(ago);
      return parts.join(' · ');
    }
    case 'failed':
      return `Failed · ${ago}`;
    case 'cancelled':
      return `Cancelled · ${ago}`;
    default:
      return job.status;
  }
}

/** Seconds of audio a finished job has: what an extension starts from. */
const lengthOf = (job) => Math.round((job.audio_duration ?? job.duration) * 100) / 100;

class JobCard {
  constructor(template, job, handlers) {
    this.el = template.content.firstElementChild.cloneNode(true);
    this.el.dataset.id = job.id;
    this.handlers = handlers;
    const $ = (selector) => this.el.querySelector(selector);
    this.parts = {
      badge: $('.badge'),
      prompt: $('.job-prompt'),
      params: $('.job-params'),
      continues: $('.job-continues'),
      melody: $('.job-melody'),
      bar: $('.bar'),
      fill: $('.bar-fill'),
      state: $('.job-state'),
      error: $('.job-error'),
      live: $('.live'),
      listen: $('.listen'),
      player: $('.player'),
      canvas: $('.waveform'),
      audio: $('audio'),
      download: $('.download'),
      downloadGroup: $('.download-group'),
      downloadFormat: $('.download-format'),
      again: $('.again'),
      extend: $('.extend'),
      useMelody: $('.use-melody'),
      extendForm: $('.extend-form'),
      extendSeconds: $('.extend-seconds'),
      extendSubmit: $('.extend-submit'),
      extendHint: $('.extend-hint'),
      extendError: $('.extend-error'),
      cancel: $('.cancel'),
      remove: $('.delete'),
    };
    this.parts.extendForm.id = `extend-${job.id}`;
    this.parts.extend.setAttribute('aria-controls', this.parts.extendForm.id);
    this.parts.extend.addEventListener('click', () => this.toggleExtend());
    $('.extend-close').addEventListener('click', () => this.closeExtend());
    this.parts.extendSeconds.addEventListener('input', () => {
      // Typing clears the last complaint, as in the form.
      this.parts.extendError.hidden = true;
      this.parts.extendSeconds.removeAttribute('aria-invalid');
      this.showExtension();
    });
    this.parts.extendForm.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submitExtend();
    });
    // Heard while it is made; the card shows it while the job runs or the player still plays.
    this.live = new LivePlayer(
      { button: this.parts.listen, canvas: $('.live-wave'), status: $('.live-status') },
      () => this.showLive(),
    );
    this.parts.listen.addEventListener('click', () => this.live.toggle(this.job.id));
    this.actionError = null;
    this.playerReady = false;
    this.confirmTimer = 0;
    this.parts.downloadFormat.addEventListener('change', () => this.showDownload());
    this.parts.again.addEventListener('click', () => handlers.again(this.job));
    this.parts.useMelody.addEventListener('click', () => handlers.useAsMelody(this.job));
    this.parts.cancel.addEventListener('click', () => handlers.cancel(this));
    this.parts.remove.addEventListener('click', () => {
      if (this.parts.remove.dataset.confirm) {
        this.disarmDelete();
        handlers.remove(this);
      } else {
        this.armDelete();
      }
    });
    this.update(job);
  }

  armDelete() {
    const button = this.parts.remove;
    button.dataset.confirm = 'true';
    button.textContent = 'Delete for good?';
    this.confirmTimer = setTimeout(() => this.disarmDelete(), CONFIRM_MS);
  }

  disarmDelete() {
    clearTimeout(this.confirmTimer);
    delete this.parts.remove.dataset.confirm;
    this.parts.remove.textContent = 'Delete';
  }

  /** Seconds an extension may add: up to the server's longest track. */
  room() {
    return Math.floor(MAX_DURATION - lengthOf(this.job));
  }

  toggleExtend() {
    if (this.parts.extendForm.hidden) this.openExtend();
    else this.closeExtend();
  }

  openExtend() {
    const p = this.parts;
    p.extendForm.hidden = false;
    p.extend.setAttribute('aria-expanded', 'true');
    p.extendSeconds.max = String(this.room());
    p.extendSeconds.value = String(Math.min(DEFAULT_EXTENSION, this.room()));
    p.extendError.hidden = true;
    this.showExtension();
    p.extendSeconds.focus();
    p.extendSeconds.select();
  }

  closeExtend() {
    this.parts.extendForm.hidden = true;
    this.parts.extend.setAttribute('aria-expanded', 'false');
    this.parts.extend.focus();
  }

  showExtension() {
    const p = this.parts;
    const add = Number(p.extendSeconds.value);
    p.extendHint.textContent = Number.isFinite(add) && add > 0
      ? `The new track is this one, ${formatLength(lengthOf(this.job))}, then ${formatLength(add)} more: ${formatLength(lengthOf(this.job) + add)} in all.`
      : `Up to ${this.room()} seconds.`;
    p.extendSubmit.textContent = Number.isFinite(add) && add > 0 ? `Add ${formatLength(add)}` : 'Add';
  }

  async submitExtend() {
    const p = this.parts;
    const add = Number(p.extendSeconds.value);
    if (!Number.isInteger(add) || add < 1 || add > this.room()) {
      p.extendError.textContent = `Enter a whole number of seconds from 1 to ${this.room()}.`;
      p.extendError.hidden = false;
      p.extendSeconds.setAttribute('aria-invalid', 'true');
      p.extendSeconds.focus();
      return;
    }
    p.extendSeconds.removeAttribute('aria-invalid');
    p.extendSubmit.disabled = true;
    try {
      await this.handlers.extend(this.job, add);
      p.extendError.hidden = true;
      this.closeExtend();
    } catch (error) {
      p.extendError.textContent = `Could not extend. ${plainWords(error)}`;
      p.extendError.hidden = false;
    } finally {
      p.extendSubmit.disabled = false;
    }
  }

  update(job) {
    this.job = job;
    this.updatedAt = performance.now();
    const p = this.parts;
    this.el.dataset.status = job.status;
    p.badge.textContent = STATUS_WORDS[job.status] ?? job.status;
    p.prompt.textContent = job.prompt;
    p.prompt.title = job.prompt;
    p.params.textContent = describeParams(job, this.handlers.showsModels());
    p.continues.hidden = !job.continue_from;
    if (job.continue_from) {
      const source = job.continue_from.source_job;
      const words = describeContinuation(job.continue_from, source ? this.handlers.promptOf(source) : null);
      p.continues.textContent = `${source ? 'Extends' : 'Continues'} ${words}`;
    }
    p.melody.hidden = !job.melody;
    if (job.melody) {
      const source = job.melody.source_job;
      p.melody.textContent = `Follows the melody of ${describeContinuation(job.melody, source ? this.handlers.promptOf(source) : null)}`;
    }
    const percent = job.status === 'completed' ? 100 : Math.floor((job.progress ?? 0) * 100);
    p.bar.setAttribute('aria-valuenow', String(percent));
    p.bar.setAttribute('aria-valuetext', `${percent}%, ${STATUS_WORDS[job.status] ?? job.status}`);
    p.bar.setAttribute('aria-label', `Progress of “${job.prompt.slice(0, 60)}”`);
    p.fill.style.width = `${percent}%`;
    p.state.textContent = describeState(job);
    const error = job.error ?? this.actionError;
    p.error.hidden = !error;
    p.error.textContent = error ?? '';
    p.cancel.hidden = !isActive(job);
    p.remove.hidden = isActive(job);
    p.listen.setAttribute('aria-label', `Listen to “${job.prompt.slice(0, 60)}” while it is made`);
    this.showLive();
    p.downloadGroup.hidden = job.status !== 'completed' || !job.audio_url;
    p.extend.hidden = job.status !== 'completed' || this.room() < 1;
    if (p.extend.hidden && !p.extendForm.hidden) p.extendForm.hidden = true;
    p.extend.setAttribute('aria-label', `Extend “${job.prompt.slice(0, 60)}”: make it longer`);
    p.useMelody.hidden = job.status !== 'completed' || !this.handlers.takesMelody();
    p.useMelody.setAttribute('aria-label', `Use as melody: the next track follows the tune of “${job.prompt.slice(0, 60)}”`);
    p.again.setAttribute('aria-label', `Again: fill the form with the settings of “${job.prompt.slice(0, 60)}”`);
    if (job.status === 'completed' && job.audio_url && !this.playerReady) this.showPlayer(job);
  }

  showLive() {
    const running = this.job.status === 'running';
    this.parts.live.hidden = !running && !this.live.active && this.parts.live.querySelector('.live-status').dataset.state !== 'error';
    // A finished track plays from its own player; Listen is offered while it is made.
    this.parts.listen.hidden = !running && !this.live.active;
  }

  /** The download link in the format the menu shows: the stored WAV, or `?format=` converted once by the server. */
  showDownload() {
    const { download, downloadFormat } = this.parts;
    const job = this.job;
    if (!job.audio_url) return;
    const format = downloadFormat.value;
    download.href = format === 'wav16' ? job.audio_url : `${job.audio_url}?format=${encodeURIComponent(format)}`;
    const extension = DOWNLOAD_EXTENSIONS[format] ?? 'wav';
    const seed = job.seed !== null && job.seed !== undefined ? `-${job.seed}` : '';
    download.download = `${slug(job.prompt)}${seed}.${extension}`;
    download.setAttribute('aria-label', `Download “${job.prompt.slice(0, 60)}” as ${downloadFormat.selectedOptions[0]?.textContent ?? format}`);
  }

  showPlayer(job) {
    this.playerReady = true;
    const p = this.parts;
    p.audio.src = job.audio_url;
    p.audio.setAttribute('aria-label', `Play “${job.prompt.slice(0, 60)}”`);
    p.canvas.setAttribute('aria-label', `Waveform of “${job.prompt.slice(0, 60)}”; click to jump to that point`);
    this.showDownload();
    p.player.hidden = false;
    attachWaveform(p.canvas, p.audio, job.audio_url);
  }
}

export class JobList {
  constructor({ list, empty, count, more, error, heading, template, announce, onAgain, onUseAsMelody, onCreated }) {
    Object.assign(this, { list, empty, count, more, error, heading, template, announce, onAgain, onUseAsMelody, onCreated });
    // The server's models (GET /api/v1/models): with a melody model finished cards offer "Use as
    // melody"; with several, cards say which made them.
    this.models = [];
    this.cards = new Map();
    this.streams = new Map();
    this.total = 0;
    this.more.addEventListener('click', () => this.loadOlder());
    setInterval(() => this.tick(), 1000);
  }

  /** Fetches the newest page and merges it; cards the server no longer has are dropped. */
  async refresh() {
    const asked = performance.now();
    try {
      const page = await api.jobs({ limit: PAGE, offset: 0 });
      this.showListError(null);
      const seen = new Set(page.jobs.map((job) => job.id));
      const oldest = page.jobs.at(-1);
      for (const card of [...this.cards.values()]) {
        const withinPage = !oldest || page.jobs.length < PAGE || newerFirst(card.job, oldest) <= 0;
        // A card updated after the request left may be newer than the answer, not deleted.
        if (withinPage && !seen.has(card.job.id) && card.updatedAt < asked) this.drop(card);
      }
      for (const job of page.jobs) this.upsert(job, { quiet: !this.loaded });
      this.loaded = true;
      this.total = page.total ?? page.jobs.length;
      this.renderSummary();
      this.pumpStreams();
    } catch (error) {
      this.showListError(`Could not load your tracks. ${plainWords(error)}`);
    }
  }

  async loadOlder() {
    this.more.disabled = true;
    try {
      const page = await api.jobs({ limit: PAGE, offset: this.cards.size });
      for (const job of page.jobs) this.upsert(job, { quiet: true });
      this.total = page.total ?? this.total;
      this.renderSummary();
      this.pumpStreams();
    } catch (error) {
      this.showListError(`Could not load older tracks. ${plainWords(error)}`);
    } finally {
      this.more.disabled = false;
    }
  }

  hasActive() {
    return [...this.cards.values()].some((card) => isActive(card.job));
  }

  /** Adds a job the page itself just created, ahead of the next refresh. */
  added(job) {
    this.upsert(job, { quiet: true });
    this.total += 1;
    this.renderSummary();
    this.pumpStreams();
    // On a phone the list sits below the form: show the new card without taking focus from the form.
    if (matchMedia('(max-width: 800px)').matches) {
      this.cards.get(job.id).el.scrollIntoView({ block: 'nearest', behavior: matchMedia('(prefers-reduced-motion: reduce)').matches ? 'auto' : 'smooth' });
    }
  }

  upsert(job, { quiet = false } = {}) {
    const card = this.cards.get(job.id);
    if (!card) {
      const fresh = new JobCard(this.template, job, {
        again: (j) => this.onAgain(j),
        useAsMelody: (j) => this.onUseAsMelody(j),
        takesMelody: () => this.models.some((model) => model.melody),
        showsModels: () => this.models.length > 1,
        extend: (j, seconds) => this.extend(j, seconds),
        promptOf: (id) => this.cards.get(id)?.job.prompt ?? null,
        cancel: (c) => this.cancel(c),
        remove: (c) => this.remove(c),
      });
      this.cards.set(job.id, fresh);
      const after = [...this.cards.values()]
        .filter((other) => other !== fresh && newerFirst(job, other.job) < 0)
        .sort((a, b) => newerFirst(a.job, b.job))[0];
      this.list.insertBefore(fresh.el, after?.el ?? null);
      return;
    }
    const before = card.job;
    card.update(job);
    if (!quiet) this.announceChange(before, job);
  }

  announceChange(before, job) {
    const what = `“${job.prompt.slice(0, 80)}”`;
    if (before.status !== job.status) {
      const words = {
        running: `Started making ${what}.`,
        completed: `${what} is ready to play.`,
        failed: `${what} failed: ${job.error ?? 'no reason given'}.`,
        cancelled: `${what} was cancelled.`,
      }[job.status];
      if (words) this.announce(words);
      return;
    }
    if (job.status === 'running') {
      const quarter = (progress) => Math.floor((progress ?? 0) * 4);
      if (quarter(job.progress) > quarter(before.progress) && job.progress < 1) {
        this.announce(`${what}: ${quarter(job.progress) * 25}% done.`);
      }
    }
  }

  drop(card) {
    card.live.stop();
    this.closeStream(card.job.id);
    card.el.remove();
    this.cards.delete(card.job.id);
  }

  /** Queues a track that is `job`'s followed by `seconds` more, with its prompt and settings. */
  setModels(models) {
    this.models = models;
    for (const card of this.cards.values()) card.update(card.job);
  }

  async extend(job, seconds) {
    const body = {
      prompt: job.prompt,
      duration: lengthOf(job) + seconds,
      continue_from: job.id,
      top_k: job.top_k,
      top_p: job.top_p,
      temperature: job.temperature,
      cfg_coef: job.cfg_coef,
      extend_stride: job.extend_stride,
    };
    // The same model carries on, where the server still runs it; the longer track keeps following
    // the tune the first part followed.
    if (this.models.some((model) => model.id === job.model)) body.model = job.model;
    if (job.melody) body.melody = job.melody.upload;
    const created = await api.generate(body);
    this.added(created);
    this.onCreated(created);
    this.announce(`Queued “${job.prompt.slice(0, 80)}”, ${formatLength(seconds)} longer.`);
  }

  async cancel(card) {
    card.parts.cancel.disabled = true;
    try {
      const job = await api.remove(card.job.id);
      card.actionError = null;
      if (job) this.upsert(job);
      else this.drop(card);
    } catch (error) {
      card.actionError = `Could not cancel. ${plainWords(error)}`;
      card.update(card.job);
    } finally {
      card.parts.cancel.disabled = false;
    }
    // Focus would otherwise fall to <body> now that Cancel is hidden.
    if (card.el.isConnected && card.parts.cancel.hidden) card.parts.again.focus();
  }

  async remove(card) {
    card.parts.remove.disabled = true;
    try {
      const job = await api.remove(card.job.id);
      if (job) {
        this.upsert(job);
        return;
      }
      const next = card.el.nextElementSibling ?? card.el.previousElementSibling;
      this.drop(card);
      this.total = Math.max(0, this.total - 1);
      this.renderSummary();
      this.announce(`Deleted “${card.job.prompt.slice(0, 80)}”.`);
      (next?.querySelector('.again') ?? this.heading).focus();
    } catch (error) {
      if (error.code === 'not_found') {
        this.drop(card);
        this.renderSummary();
        return;
      }
      card.actionError = `Could not delete. ${plainWords(error)}`;
      card.update(card.job);
    } finally {
      card.parts.remove.disabled = false;
    }
  }

  pumpStreams() {
    const candidates = [...this.cards.values()]
      .map((card) => card.job)
      .filter((job) => isActive(job) && !this.streams.has(job.id))
      // Running jobs first, then the queued ones that will run soonest.
      .sort((a, b) => (a.status === 'running' ? -1 : 0) - (b.status === 'running' ? -1 : 0)
        || Date.parse(a.created_at) - Date.parse(b.created_at));
    for (const job of candidates) {
      if (this.streams.size >= MAX_STREAMS) break;
      this.openStream(job.id);
    }
  }

  openStream(id) {
    const source = new EventSource(api.eventsUrl(id));
    this.streams.set(id, source);
    source.addEventListener('job', (event) => {
      let job;
      try {
        job = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!this.cards.has(job.id)) return;
      this.upsert(job);
      if (!isActive(job)) {
        this.closeStream(id);
        this.pumpStreams();
      }
    });
    source.addEventListener('error', () => {
      // CONNECTING means the browser retries by itself; CLOSED means the server refused the stream.
      if (source.readyState === EventSource.CLOSED) {
        this.closeStream(id);
      }
    });
  }

  closeStream(id) {
    this.streams.get(id)?.close();
    this.streams.delete(id);
  }

  tick() {
    for (const card of this.cards.values()) {
      if (card.job.status === 'running') card.parts.state.textContent = describeState(card.job);
    }
  }

  renderSummary() {
    const shown = this.cards.size;
    this.empty.hidden = !this.loaded || shown > 0;
    this.count.textContent = this.total > 0 ? `${this.total} track${this.total === 1 ? '' : 's'}` : '';
    this.more.hidden = shown >= this.total;
  }

  showListError(text) {
    this.error.hidden = !text;
    this.error.textContent = text ?? '';
  }
}
