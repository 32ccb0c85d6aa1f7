// The API key dialog: shown when the server answers 401 (it needs a key and this browser has none,
// or a wrong or revoked one). The key is kept in localStorage and copied into the session cookie
// (POST /api/v1/session) that the audio players and event streams carry.

import { api, apiKey, plainWords, unauthorized } from './api.js';

export class KeyDialog {
  constructor({ dialog, signOut, announce, onReady }) {
    Object.assign(this, { dialog, signOut, announce, onReady });
    this.form = dialog.querySelector('form');
    this.input = dialog.querySelector('#api-key');
    this.reason = dialog.querySelector('#api-key-reason');
    this.error = dialog.querySelector('#api-key-error');
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    unauthorized.addEventListener('unauthorized', (event) => this.ask(event.detail));
    signOut.addEventListener('click', () => this.forget());
    this.showSignOut();
  }

  ask(reason) {
    if (this.dialog.open) return;
    this.reason.textContent = apiKey.get()
      ? `The key this browser has was refused: ${reason ?? 'it is not valid here.'}`
      : 'This server needs an API key.';
    this.error.hidden = true;
    this.input.value = '';
    this.dialog.showModal();
    this.input.focus();
  }

  async submit() {
    const key = this.input.value.trim();
    if (!key) {
      this.showError('Paste the key you were given (it starts with dgxm_).');
      return;
    }
    apiKey.set(key);
    try {
      await api.startSession();
    } catch (error) {
      apiKey.clear();
      this.showError(error.code === 'unauthorized' ? error.message : plainWords(error));
      return;
    }
    this.dialog.close();
    this.showSignOut();
    this.announce('Key accepted.');
    this.onReady();
  }

  /** Refreshes the cookie from the stored key, so that media requests work after a restart. */
  async resume() {
    if (!apiKey.get()) return;
    try {
      await api.startSession();
    } catch {
      // A 401 opens the dialog by itself.
    }
  }

  async forget() {
    apiKey.clear();
    try {
      await api.endSession();
    } catch {
      // Nothing to end on a server that needs no key.
    }
    this.showSignOut();
    this.announce('This browser forgot its key.');
    location.reload();
  }

  showError(text) {
    this.error.textContent = text;
    this.error.hidden = false;
    this.input.setAttribute('aria-invalid', 'true');
    this.input.focus();
  }

  showSignOut() {
    this.signOut.hidden = !apiKey.get();
  }
}
