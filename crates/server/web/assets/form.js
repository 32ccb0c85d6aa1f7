// The "make a track" form: collects the request, shows the API's errors beside the field they name,
// uploads a file to continue (POST /api/v1/uploads, then continue_from), and can be refilled from an
// earlier job ("again").

import { api, plainWords } from './api.js';
import { describeContinuation, formatLength } from './format.js';

// The server's defaults; an empty box sends nothing and gets these. top_k is capped by the model's vocabulary.
const SAMPLING_DEFAULTS = { top_k: 250, top_p: 0, temperature: 1, cfg_coef: 3, extend_stride: 18 };
const SAMPLING_FIELDS = Object.keys(SAMPLING_DEFAULTS);
const NUMBER_FIELDS = [...SAMPLING_FIELDS, 'seed'];
const FIELDS = ['prompt', 'duration', 'continue_from', ...NUMBER_FIELDS];
const MAX_DURATION = 300;

export class GenerateForm {
  constructor({ form, announce, onCreated }) {
    this.form = form;
    this.announce = announce;
    this.onCreated = onCreated;
    this.inputs = Object.fromEntries(FIELDS.map((name) => [name, form.elements.namedItem(name)]));
    this.advanced = form.querySelector('#advanced');
    this.submitButton = form.querySelector('#generate');
    this.formError = form.querySelector('#form-error');
    this.durationOutput = form.querySelector('#duration-output');
    this.defaults = { ...SAMPLING_DEFAULTS };
    this.chosen = form.querySelector('#continue_from-chosen');
    this.chosenText = form.querySelector('#continue_from-status');
    // The upload the next track continues ({id, filename, duration_secs, source_job}), and the one on its way.
    this.continuation = null;
    this.uploading = null;

    this.inputs.continue_from.addEventListener('change', () => this.uploadChosenFile());
    form.querySelector('#continue_from-remove').addEventListener('click', () => {
      this.setContinuation(null);
      this.inputs.continue_from.focus();
      this.announce('The next track starts from nothing.');
    });

    this.inputs.duration.addEventListener('input', () => this.showDuration());
    for (const name of FIELDS) this.inputs[name].addEventListener('input', () => this.clearError(name));
    this.inputs.prompt.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    form.querySelector('#dice').addEventListener('click', () => {
      this.inputs.seed.value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
      this.clearError('seed');
    });
    form.querySelector('#reset-advanced').addEventListener('click', () => {
      for (const name of NUMBER_FIELDS) {
        this.inputs[name].value = '';
        this.clearError(name);
      }
    });
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    this.showDuration();
  }

  /** Shows the model's real top-k default and limit once `/api/v1/models` has answered. */
  setVocabulary(size) {
    if (!Number.isInteger(size) || size < 1) return;
    this.defaults.top_k = Math.min(SAMPLING_DEFAULTS.top_k, size);
    this.inputs.top_k.placeholder = String(this.defaults.top_k);
    this.inputs.top_k.max = String(size);
  }

  showDuration() {
    this.durationOutput.value = formatLength(Number(this.inputs.duration.value));
    this.inputs.duration.setAttribute('aria-valuetext', this.durationOutput.value);
  }

  /** Uploads the file just chosen; the server checks it at once and says what is wrong with it. */
  uploadChosenFile() {
    const file = this.inputs.continue_from.files?.[0];
    this.clearError('continue_from');
    if (!file) {
      this.setContinuation(null);
      return;
    }
    this.continuation = null;
    this.chosen.hidden = false;
    this.chosenText.textContent = `Uploading “${file.name}”…`;
    const uploading = api.upload(file).then(
      (upload) => {
        if (this.uploading !== uploading) return true;
        this.setContinuation(upload);
        this.announce(`Uploaded “${upload.filename}”: the next track continues it.`);
        return true;
      },
      (error) => {
        if (this.uploading !== uploading) return true;
        this.setContinuation(null);
        this.showError('continue_from', plainWords(error));
        this.announce(`The file was refused. ${plainWords(error)}`);
        return false;
      },
    ).finally(() => {
      if (this.uploading === uploading) this.uploading = null;
    });
    this.uploading = uploading;
  }

  /** The audio the next track continues (an upload's JSON or a job's `continue_from`), or none. */
  setContinuation(upload) {
    this.uploading = null;
    this.continuation = upload
      ? { id: upload.id ?? upload.upload, filename: upload.filename, duration_secs: upload.duration_secs, source_job: upload.source_job ?? null }
      : null;
    if (!upload) this.inputs.continue_from.value = '';
    this.chosen.hidden = !upload;
    this.chosenText.textContent = upload ? `The track continues ${describeContinuation(this.continuation)}.` : '';
    if (upload) {
      // The length is the whole track: leave room after the continued audio.
      const duration = this.inputs.duration;
      const least = Math.ceil(this.continuation.duration_secs) + 1;
      if (Number(duration.value) < least) {
        duration.value = String(Math.min(MAX_DURATION, least + 9));
        this.showDuration();
      }
    }
  }

  /** The request body; empty advanced fields are left out so the server's defaults apply. */
  collect() {
    const body = {
      prompt: this.inputs.prompt.value.trim(),
      duration: Number(this.inputs.duration.value),
    };
    if (this.continuation) body.continue_from = this.continuation.id;
    const unreadable = [];
    for (const name of NUMBER_FIELDS) {
      const input = this.inputs[name];
      if (input.validity.badInput) unreadable.push(name);
      else if (input.value.trim() !== '') body[name] = Number(input.value);
    }
    return { body, unreadable };
  }

  async submit() {
    this.clearAllErrors();
    const { unreadable } = this.collect();
    if (unreadable.length > 0) {
      for (const name of unreadable) this.showError(name, 'Enter a number here, or leave it empty for the default.');
      this.focusField(unreadable[0]);
      return;
    }
    this.submitButton.disabled = true;
    this.submitButton.textContent = 'Sending…';
    try {
      // A file still uploading is waited for; a refused one stops here, its error beside the picker.
      if (this.uploading && !(await this.uploading)) {
        this.focusField('continue_from');
        return;
      }
      const { body } = this.collect();
      const job = await api.generate(body);
      this.onCreated(job);
      this.announce(`Queued “${job.prompt.slice(0, 80)}”.`);
    } catch (error) {
      const text = plainWords(error);
      if (error.field && this.inputs[error.field]) {
        this.showError(error.field, text);
        this.focusField(error.field);
      } else {
        this.formError.textContent = text;
        this.formError.hidden = false;
      }
    } finally {
      this.submitButton.disabled = false;
      this.submitButton.textContent = 'Generate';
    }
  }

  showError(name, text) {
    const slot = this.form.querySelector(`#${name}-error`);
    slot.textContent = text;
    slot.hidden = false;
    this.inputs[name].setAttribute('aria-invalid', 'true');
  }

  focusField(name) {
    const input = this.inputs[name];
    if (this.advanced.contains(input)) this.advanced.open = true;
    input.focus();
  }

  clearError(name) {
    const slot = this.form.querySelector(`#${name}-error`);
    slot.hidden = true;
    slot.textContent = '';
    this.inputs[name].removeAttribute('aria-invalid');
    this.formError.hidden = true;
  }

  clearAllErrors() {
    for (const name of FIELDS) this.clearError(name);
  }

  /** "Again": the same prompt and settings, seed and continued audio included, so the same track can be made again. */
  fill(job) {
    this.clearAllErrors();
    this.inputs.prompt.value = job.prompt;
    this.setContinuation(job.continue_from ?? null);
    this.inputs.duration.value = String(Math.round(job.duration));
    this.showDuration();
    // Settings equal to the defaults stay empty, so what was changed stands out.
    for (const name of SAMPLING_FIELDS) {
      const value = job[name];
      this.inputs[name].value = value === null || value === undefined || value === this.defaults[name] ? '' : String(value);
    }
    this.inputs.seed.value = job.seed === null || job.seed === undefined ? '' : String(job.seed);
    if (SAMPLING_FIELDS.some((name) => this.inputs[name].value !== '')) this.advanced.open = true;
    this.form.scrollIntoView({ behavior: matchMedia('(prefers-reduced-motion: reduce)').matches ? 'auto' : 'smooth', block: 'start' });
    this.inputs.prompt.focus({ preventScroll: true });
    this.announce('The form now holds that track’s prompt and settings. Press Generate to make it again.');
  }
}
