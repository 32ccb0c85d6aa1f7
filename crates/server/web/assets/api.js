// The JSON API under /api/v1, and the translation of its errors into words for people.

export class ApiError extends Error {
  constructor({ status, code, message, field = null, retryAfter = null, path = '' }) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
    this.retryAfter = retryAfter;
    this.path = path;
  }
}

const UPLOADS = '/api/v1/uploads';
const KEY_STORAGE = 'dgx-music-api-key';

/** The API key this browser keeps for the server (localStorage), or null. */
export const apiKey = {
  get: () => {
    try {
      return localStorage.getItem(KEY_STORAGE);
    } catch {
      return null;
    }
  },
  set: (key) => localStorage.setItem(KEY_STORAGE, key),
  clear: () => localStorage.removeItem(KEY_STORAGE),
};

// Every 401 is announced once per answer, so that the page can ask for a key.
export const unauthorized = new EventTarget();

function withKey(headers) {
  const key = apiKey.get();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

function unreachable(path) {
  return new ApiError({
    status: 0,
    code: 'network',
    message: "Can't reach the DGX Music server. Check that `dgx-music serve` is still running.",
    path,
  });
}

/** The ApiError of a refused answer (`data` is its JSON body, if any); a 401 is announced. */
function refusal(response, data, path) {
  const error = data?.error ?? {};
  if (response.status === 401) unauthorized.dispatchEvent(new CustomEvent('unauthorized', { detail: error.message }));
  return new ApiError({
    status: response.status,
    code: error.code ?? `http_${response.status}`,
    message: error.message ?? `The server answered ${response.status} ${response.statusText}.`,
    field: error.field ?? null,
    retryAfter: response.headers.get('Retry-After'),
    path,
  });
}

async function request(method, path, body) {
  const init = { method, headers: withKey({ Accept: 'application/json' }) };
  if (body instanceof FormData) {
    // The browser writes the multipart Content-Type with its boundary.
    init.body = body;
  } else if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw unreachable(path);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw refusal(response, data, path);
  return data;
}

/** The response of `GET /jobs/{id}/stream`, its body unread (a WAV that grows while the job runs). */
async function audioStream(path, signal) {
  let response;
  try {
    response = await fetch(path, { headers: withKey({ Accept: 'audio/wav' }), signal });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw unreachable(path);
  }
  if (!response.ok) throw refusal(response, await response.json().catch(() => null), path);
  return response;
}

const jobPath = (id) => `/api/v1/jobs/${encodeURIComponent(id)}`;

export const api = {
  health: () => request('GET', '/api/v1/health'),
  models: () => request('GET', '/api/v1/models'),
  jobs: ({ limit, offset }) => request('GET', `/api/v1/jobs?limit=${limit}&offset=${offset}`),
  generate: (params) => request('POST', '/api/v1/generate', params),
  // 201 with {id, filename, duration_secs, sample_rate, channels}: pass the id as continue_from.
  upload: (file) => {
    const form = new FormData();
    form.append('file', file, file.name);
    return request('POST', UPLOADS, form);
  },
  // 200 with the cancelled job while it was queued or running, 204 (null here) once deleted.
  remove: (id) => request('DELETE', jobPath(id)),
  eventsUrl: (id) => `${jobPath(id)}/events`,
  // Starts answering once the job runs: the audio so far, then each piece as it is made.
  stream: (id, signal) => audioStream(`${jobPath(id)}/stream`, signal),
  // Copies the key into an HttpOnly cookie, which the audio players and event streams carry.
  startSession: () => request('POST', '/api/v1/session'),
  endSession: () => request('DELETE', '/api/v1/session'),
};

const FIELD_LABELS = {
  prompt: 'The description',
  duration: 'The length',
  top_k: 'Top-k',
  top_p: 'Top-p',
  temperature: 'Temperature',
  cfg_coef: 'Prompt strength (CFG)',
  seed: 'The seed',
  continue_from: 'The audio to continue',
  extend_stride: 'The window step',
};

// The API writes ranges the way programmers read them; people read "between 0 and 1".
const REWRITES = [
  [/is outside \[([^,\]]+), ([^\]]+)\]/g, 'is not between $1 and $2'],
  [/is outside (-?[\d.]+)\.\.=(-?[\d.]+)/g, 'is not between $1 and $2'],
  [/within \[([^,\]]+), ([^\]]+)\]/g, 'between $1 and $2'],
  [/within (-?[\d.]+)\.\.=(-?[\d.]+)/g, 'between $1 and $2'],
  [/(-?[\d.]+)\.\.=(-?[\d.]+)/g, '$1 to $2'],
  [/must be > (-?[\d.]+)/g, 'must be more than $1'],
  [/must be >= (-?[\d.]+)/g, 'must be $1 or more'],
];

function sentence(text) {
  const trimmed = text.trim();
  if (!trimmed) return trimmed;
  const capital = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

/** What to tell a person about `error`; the API's own message already names the value and the range. */
export function plainWords(error) {
  switch (error.code) {
    case 'network':
      return error.message;
    case 'queue_full': {
      const wait = Number.parseInt(error.retryAfter ?? '', 10);
      const when = Number.isFinite(wait) ? `in ${wait} second${wait === 1 ? '' : 's'}` : 'in a moment';
      return `The queue is full right now. Try again ${when}.`;
    }
    case 'payload_too_large':
      // The server names the file's size and its limit.
      if (error.path === UPLOADS) return sentence(error.message);
      return 'That request is too large. Shorten the description to at most 2000 characters.';
    case 'not_found':
      return 'That track no longer exists; it may have been deleted elsewhere.';
    case 'unauthorized':
      return 'This server needs an API key. Enter yours when asked.';
    case 'rate_limited': {
      const wait = Number.parseInt(error.retryAfter ?? '', 10);
      const when = Number.isFinite(wait) ? `in ${wait} second${wait === 1 ? '' : 's'}` : 'in a moment';
      return `${sentence(error.message.split(';')[0])} Try again ${when}.`;
    }
    default:
      break;
  }
  // "riff.mp3: the file is empty": a file's name keeps its case.
  if (error.field === 'file') return /[.!?]$/.test(error.message) ? error.message : `${error.message}.`;
  let message = REWRITES.reduce((text, [pattern, words]) => text.replace(pattern, words), error.message ?? '');
  const label = FIELD_LABELS[error.field];
  if (label && message.startsWith(`${error.field} `)) {
    message = `${label}${message.slice(error.field.length)}`;
  }
  if (error.status >= 500) return `The server ran into a problem: ${sentence(message)}`;
  return sentence(message);
}
