// Numbers and times as people read them.

export function formatLength(seconds) {
  const total = Math.round(seconds);
  if (total < 60) return `${total} s`;
  const minutes = Math.floor(total / 60);
  const rest = String(total % 60).padStart(2, '0');
  return `${minutes}:${rest} min`;
}

export function formatTook(seconds) {
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${String(Math.round(seconds % 60)).padStart(2, '0')} s`;
}

export function formatSpeed(realTimeFactor) {
  const digits = realTimeFactor >= 10 ? 0 : realTimeFactor >= 1 ? 1 : 2;
  return `${realTimeFactor.toFixed(digits)}× real time`;
}

export function formatAgo(iso, now = Date.now()) {
  const then = Date.parse(iso);
  if (!Number.isFinite(then)) return '';
  const seconds = Math.max(0, (now - then) / 1000);
  if (seconds < 45) return 'just now';
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(then).toLocaleDateString(undefined, { day: 'numeric', month: 'short', year: 'numeric' });
}

export function formatDevice(device) {
  const cuda = /^cuda:(\d+)\s*\((.*)\)$/.exec(device ?? '');
  if (cuda) return `GPU ${cuda[2]}`;
  if (device === 'cpu') return 'CPU';
  return device ?? 'unknown device';
}

/** A hub id stays as it is; a checkpoint directory is shortened to its last two folders. */
export function formatModel(model) {
  if (!model) return 'no model';
  if (!model.startsWith('/') && !model.includes('\\')) return model;
  return model.split(/[\\/]+/).filter(Boolean).slice(-2).join('/');
}

export function slug(text) {
  const words = text.toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '');
  return words.slice(0, 48).replace(/-+$/, '') || 'track';
}

/**
 * What a track continues, as a phrase: “riff.wav” (4.2 s) for an upload; for a copy of an earlier
 * track, that track's prompt when `sourcePrompt` knows it.
 */
export function describeContinuation(continued, sourcePrompt = null) {
  const seconds = continued.duration_secs;
  const length = seconds < 10 ? `${seconds.toFixed(1)} s` : formatLength(seconds);
  if (continued.source_job) {
    return sourcePrompt ? `the ${length} track “${sourcePrompt}”` : `an earlier ${length} track`;
  }
  return `“${continued.filename}” (${length})`;
}
