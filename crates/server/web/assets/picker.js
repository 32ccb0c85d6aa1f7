// A file picker that uploads the chosen audio at once (POST /api/v1/uploads), so the server checks it
// before the form is sent, and then holds what the next track uses: the audio it continues, or the
// melody it follows. The form has one picker of each.

import { api, plainWords } from './api.js';
import { describeContinuation } from './format.js';

export class UploadPicker {
  /**
   * `name` is the request field and the prefix of the elements' ids; `sentence(words)` says what the
   * next track does with the audio; `onChosen(upload)` runs when audio is set (not when cleared).
   */
  constructor({ form, name, announce, sentence, cleared, onChosen = () => {}, showError, clearError }) {
    Object.assign(this, { name, announce, sentence, cleared, onChosen, showError, clearError });
    this.input = form.elements.namedItem(name);
    this.chosen = form.querySelector(`#${name}-chosen`);
    this.status = form.querySelector(`#${name}-status`);
    // The upload the next track uses ({id, filename, duration_secs, source_job}), and the one on its way.
    this.value = null;
    this.uploading = null;
    this.input.addEventListener('change', () => this.uploadChosenFile());
    form.querySelector(`#${name}-remove`).addEventListener('click', () => {
      this.set(null);
      this.input.focus();
      this.announce(this.cleared);
    });
  }

  uploadChosenFile() {
    const file = this.input.files?.[0];
    this.clearError(this.name);
    if (!file) {
      this.set(null);
      return;
    }
    this.value = null;
    this.chosen.hidden = false;
    this.status.textContent = `Uploading “${file.name}”…`;
    const uploading = api.upload(file).then(
      (upload) => {
        if (this.uploading !== uploading) return true;
        this.set(upload);
        this.announce(`Uploaded “${upload.filename}”. ${this.sentence(`“${upload.filename}”`)}.`);
        return true;
      },
      (error) => {
        if (this.uploading !== uploading) return true;
        this.set(null);
        this.showError(this.name, plainWords(error));
        this.announce(`The file was refused. ${plainWords(error)}`);
        return false;
      },
    ).finally(() => {
      if (this.uploading === uploading) this.uploading = null;
    });
    this.uploading = uploading;
  }

  /**
   * The audio the next track uses: an upload's JSON, a job's `continue_from` or `melody`, or a
   * finished job (`{id, source_job: id, ...}`), or none.
   */
  set(upload, sourcePrompt = null) {
    this.uploading = null;
    this.value = upload
      ? { id: upload.id ?? upload.upload, filename: upload.filename, duration_secs: upload.duration_secs, source_job: upload.source_job ?? null }
      : null;
    if (!upload) this.input.value = '';
    this.chosen.hidden = !upload;
    this.status.textContent = upload ? `${this.sentence(describeContinuation(this.value, sourcePrompt))}.` : '';
    if (upload) this.onChosen(this.value);
  }

  /** Waits for a file still uploading: false when it was refused (its error is beside the picker). */
  async settled() {
    return this.uploading ?? true;
  }
}
