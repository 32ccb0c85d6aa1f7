// The "make a track" form: collects the request, shows the API's errors beside the field they name,
// and can be refilled from an earlier job ("again").

import { api, plainWords } from './api.js';
import { formatLength } from './format.js';

// The server's defaults; an empty box sends nothing and gets these. top_k is capped by the model's vocabulary.
const SAMPLING_DEFAULTS = { top_k: 250, top_p: 0, temperature: 1, cfg_coef: 3 };
const SAMPLING_FIELDS = Object.keys(SAMPLING_DEFAULTS);
const NUMBER_FIELDS = [...SAMPLING_FIELDS, 'seed'];
const FIELDS = ['prompt', 'duration', ...NUMBER_FIELDS];

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

  /** The request body; empty advanced fields are left out so the server's defaults apply. */
  collect() {
    const body = {
      prompt: this.inputs.prompt.value.trim(),
      duration: Number(this.inputs.duration.value),
    };
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
    const { body, unreadable } = this.collect();
    if (unreadable.length > 0) {
      for (const name of unreadable) this.showError(name, 'Enter a number here, or leave it empty for the default.');
      this.focusField(unreadable[0]);
      return;
    }
    this.submitButton.disabled = true;
    this.submitButton.textContent = 'Sending…';
    try {
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

  /** "Again": the same prompt and settings, seed included, so the same track can be made again. */
  fill(job) {
    this.clearAllErrors();
    this.inputs.prompt.value = job.prompt;
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
