// The "make a track" form: collects the request, shows the API's errors beside the field they name,
// offers the server's models when it has several, uploads a file to continue and, on a melody
// model, a melody to follow (pickers of picker.js), and can be refilled from an earlier job ("again").

import { api, plainWords } from './api.js';
import { formatLength, formatModel } from './format.js';
import { UploadPicker } from './picker.js';

// The server's defaults; an empty box sends nothing and gets these. top_k is capped by the model's vocabulary.
const SAMPLING_DEFAULTS = { top_k: 250, top_p: 0, temperature: 1, cfg_coef: 3, extend_stride: 18 };
const SAMPLING_FIELDS = Object.keys(SAMPLING_DEFAULTS);
const NUMBER_FIELDS = [...SAMPLING_FIELDS, 'seed'];
const FIELDS = ['prompt', 'model', 'duration', 'continue_from', 'melody', ...NUMBER_FIELDS];
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
    const errors = { showError: (name, text) => this.showError(name, text), clearError: (name) => this.clearError(name) };
    this.continuation = new UploadPicker({
      form,
      name: 'continue_from',
      announce,
      sentence: (words) => `The track continues ${words}`,
      cleared: 'The next track starts from nothing.',
      onChosen: (upload) => this.makeRoomAfter(upload),
      ...errors,
    });
    this.melody = new UploadPicker({
      form,
      name: 'melody',
      announce,
      sentence: (words) => `The track follows the melody of ${words}`,
      cleared: 'The next track follows the words alone.',
      ...errors,
    });
    this.melodyField = form.querySelector('[data-field="melody"]');
    this.modelField = form.querySelector('[data-field="model"]');
    // GET /api/v1/models, once it has answered; the first is the server's default.
    this.models = [];
    this.inputs.model.addEventListener('change', () => this.applyModel());

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

  /** The server's models (`/api/v1/models`): a picker when there are several; the default is chosen. */
  setModels(models) {
    this.models = Array.isArray(models) ? models.filter((model) => typeof model?.id === 'string') : [];
    const select = this.inputs.model;
    select.replaceChildren(...this.models.map((model) => {
      const traits = [model.stereo && 'stereo', model.melody && 'follows a melody'].filter(Boolean);
      const option = new Option(`${formatModel(model.id)}${traits.length ? ` (${traits.join(', ')})` : ''}`, model.id);
      option.selected = model.default === true;
      return option;
    }));
    this.modelField.hidden = this.models.length < 2;
    this.applyModel();
  }

  /** The chosen model's description, or null before the server has said. */
  get model() {
    return this.models.find((model) => model.id === this.inputs.model.value) ?? this.models[0] ?? null;
  }

  /** Whether `id` is one of the server's models. */
  offers(id) {
    return this.models.some((model) => model.id === id);
  }

  chooseModel(id) {
    if (!this.offers(id) || this.inputs.model.value === id) return;
    this.inputs.model.value = id;
    this.applyModel();
  }

  /** The chosen model's top-k limit, and the melody picker when it follows melodies. */
  applyModel() {
    const model = this.model;
    this.setVocabulary(model?.vocab_size);
    this.melodyField.hidden = model?.melody !== true;
    if (this.melodyField.hidden) this.melody.set(null);
    this.clearError('model');
  }

  /** Shows the model's real top-k default and limit. */
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

  get takesMelody() {
    return !this.melodyField.hidden;
  }

  /** "Use as melody" on a finished track: the next track follows it, on a model that takes melodies. */
  useAsMelody(job) {
    if (!this.takesMelody) this.chooseModel(this.models.find((model) => model.melody)?.id);
    this.clearError('melody');
    this.melody.set({ id: job.id, source_job: job.id, filename: 'track', duration_secs: job.audio_duration ?? job.duration }, job.prompt);
    this.melodyField.scrollIntoView({ behavior: matchMedia('(prefers-reduced-motion: reduce)').matches ? 'auto' : 'smooth', block: 'center' });
    this.inputs.prompt.focus({ preventScroll: true });
    this.announce(`The next track follows the melody of “${job.prompt.slice(0, 80)}”. Describe it and press Generate.`);
  }

  /** The length is the whole track: leave room after the continued audio. */
  makeRoomAfter(continued) {
    const duration = this.inputs.duration;
    const least = Math.ceil(continued.duration_secs) + 1;
    if (Number(duration.value) < least) {
      duration.value = String(Math.min(MAX_DURATION, least + 9));
      this.showDuration();
    }
  }

  /** The request body; empty advanced fields are left out so the server's defaults apply. */
  collect() {
    const body = {
      prompt: this.inputs.prompt.value.trim(),
      duration: Number(this.inputs.duration.value),
    };
    if (!this.modelField.hidden) body.model = this.inputs.model.value;
    if (this.continuation.value) body.continue_from = this.continuation.value.id;
    if (this.melody.value && this.takesMelody) body.melody = this.melody.value.id;
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
      for (const picker of [this.continuation, this.melody]) {
        if (!(await picker.settled())) {
          this.focusField(picker.name);
          return;
        }
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

  /** "Again": the same model, prompt and settings, seed, continued audio and melody included, so the same track can be made again. */
  fill(job) {
    this.clearAllErrors();
    this.inputs.prompt.value = job.prompt;
    this.chooseModel(job.model);
    this.continuation.set(job.continue_from ?? null);
    this.melody.set(this.takesMelody ? job.melody ?? null : null);
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
