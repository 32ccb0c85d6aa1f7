// Entry point: wires the form, the job list and the server status line together.

import { api, plainWords } from './api.js';
import { formatDevice, formatModel } from './format.js';
import { GenerateForm } from './form.js';
import { JobList } from './jobs.js';
import { KeyDialog } from './key.js';

const HEALTH_EVERY_MS = 5000;
const JOBS_EVERY_MS = 4000;
const IDLE_JOBS_EVERY_MS = 15000;

const byId = (id) => document.getElementById(id);

const announcer = byId('announcer');
function announce(text) {
  // Clearing first makes screen readers repeat a message identical to the previous one.
  announcer.textContent = '';
  requestAnimationFrame(() => {
    announcer.textContent = text;
  });
}

const jobs = new JobList({
  list: byId('jobs'),
  empty: byId('jobs-empty'),
  count: byId('jobs-count'),
  more: byId('more'),
  error: byId('jobs-error'),
  heading: byId('jobs-heading'),
  template: byId('job-template'),
  announce,
  onAgain: (job) => form.fill(job),
  onUseAsMelody: (job) => form.useAsMelody(job),
  onCreated: () => refreshHealth(),
});

const form = new GenerateForm({
  form: byId('generate-form'),
  announce,
  onCreated: (job) => {
    jobs.added(job);
    refreshHealth();
  },
});

const status = byId('server-status');
function showStatus(state, text, title = '') {
  status.dataset.state = state;
  if (status.textContent !== text) status.textContent = text;
  status.title = title;
}

async function refreshHealth() {
  try {
    const health = await api.health();
    const running = typeof health.running === 'boolean' ? Number(health.running) : health.running ?? 0;
    const waiting = health.queue_depth ?? 0;
    const queue = running + waiting === 0
      ? 'idle'
      : [running ? `${running} making` : '', waiting ? `${waiting} waiting` : ''].filter(Boolean).join(', ');
    if (!health.model) {
      // An API node (serve --no-worker) that no worker has joined yet: jobs wait for one.
      showStatus('ok', `no worker running · ${queue}`, 'Jobs run once a `dgx-music worker` joins this service');
      return;
    }
    showStatus(
      'ok',
      `${formatModel(health.model)} · ${formatDevice(health.device)} · ${queue}`,
      `Model ${health.model}, device ${health.device}, ${health.dtype ?? ''}${health.weights === 'int8' ? ' with int8 weights' : ''} — dgx-music ${health.version ?? ''}`,
    );
  } catch (error) {
    showStatus('down', plainWords(error));
  }
}

// Polling backs up the event streams: it catches jobs made by other clients and any stream a
// browser dropped, and slows down when nothing is happening.
async function pollJobs() {
  if (!document.hidden) await jobs.refresh();
  setTimeout(pollJobs, jobs.hasActive() ? JOBS_EVERY_MS : IDLE_JOBS_EVERY_MS);
}

// Without an answer the form keeps the usual defaults (no model or melody picker), and the server
// explains any top-k it refuses.
function loadModels() {
  api.models().then(
    ({ models }) => {
      form.setModels(models);
      jobs.setModels(form.models);
    },
    () => {},
  );
}

const keys = new KeyDialog({
  dialog: byId('key-dialog'),
  signOut: byId('sign-out'),
  announce,
  onReady: () => {
    loadModels();
    refreshHealth();
    jobs.refresh();
  },
});
await keys.resume();
loadModels();
refreshHealth();
setInterval(() => {
  if (!document.hidden) refreshHealth();
}, HEALTH_EVERY_MS);
pollJobs();
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) {
    refreshHealth();
    jobs.refresh();
  }
});
