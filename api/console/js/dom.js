// Small DOM helpers. Text always goes in as text (textContent), never as HTML, so nothing an api
// answer or an MQTT message carries can inject markup or script.

/** Creates an element: `attrs` sets attributes (`on*` functions become listeners). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let ids = 0;
/** A unique element id. */
export const uid = (prefix = 'f') => `${prefix}-${(ids += 1)}`;

/** A labelled form field around `control` (an input, select or textarea), with an optional hint. */
export function field(label, control, hint) {
  const id = control.id || uid();
  control.id = id;
  const parts = [h('label', { for: id, text: label }), control];
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute('aria-describedby', hintId);
    parts.push(h('span', { class: 'hint', id: hintId, text: hint }));
  }
  return h('div', { class: 'field' }, parts);
}

/** A labelled checkbox. */
export function check(label, attrs = {}) {
  const id = attrs.id ?? uid();
  const box = h('input', { type: 'checkbox', id, ...attrs });
  return { box, el: h('div', { class: 'check' }, box, h('label', { for: id, text: label })) };
}

/** A table in a scrollable, focusable region (so keyboard users can scroll it). */
export function table(caption, headers, rows) {
  return h('div', { class: 'table-wrap', role: 'region', 'aria-label': caption, tabindex: 0 },
    h('table', {},
      h('caption', { class: 'visually-hidden', text: caption }),
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, rows)));
}

// === progress, errors, announcements ===

let busy = 0;
/** Shows `label` as progress while `work` runs; disables `button` meanwhile. */
export async function progress(label, work, button) {
  const el = document.getElementById('progress');
  busy += 1;
  el.classList.add('busy');
  el.textContent = `${label}…`;
  document.getElementById('main').setAttribute('aria-busy', 'true');
  if (button) button.disabled = true;
  try {
    return await work();
  } finally {
    busy -= 1;
    if (button) button.disabled = false;
    if (busy === 0) {
      el.classList.remove('busy');
      el.textContent = '';
      document.getElementById('main').removeAttribute('aria-busy');
    }
  }
}

/** Says `text` in the polite status region. */
export function announce(text) {
  const el = document.getElementById('progress');
  if (busy === 0) el.textContent = text;
}

/** Shows an error (an api error carries the api's message). */
export function showError(e) {
  const box = document.getElementById('alert');
  document.getElementById('alert-text').textContent = e?.message ?? String(e);
  box.hidden = false;
}

export function clearError() {
  document.getElementById('alert').hidden = true;
}

/** Runs `work`, showing any error it throws; returns its result or undefined. */
export async function attempt(label, work, button) {
  clearError();
  try {
    return await progress(label, work, button);
  } catch (e) {
    showError(e);
    return undefined;
  }
}

/** Asks before something that cannot be undone; resolves true when confirmed. */
export function confirmDialog(text, okLabel = 'Delete') {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = okLabel;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'ok');
      opener?.focus?.();
    }, { once: true });
    dialog.returnValue = '';
    dialog.showModal();
    document.getElementById('confirm-cancel').focus();
  });
}

/** A button that copies `text()` to the clipboard and says so. */
export function copyButton(label, text) {
  const button = h('button', { type: 'button', class: 'secondary small', text: label });
  button.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(typeof text === 'function' ? text() : text);
      announce(`${label}: copied`);
      button.textContent = 'Copied';
    } catch {
      announce('the browser refused the clipboard; select the text and copy it');
      button.textContent = 'Copy failed';
    }
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

// === formatting ===

/** Unix seconds as a local date and time, or `never`. */
export function when(secs) {
  if (secs === null || secs === undefined) return 'never';
  return new Date(secs * 1000).toLocaleString();
}

/** `3 h 20 min` style duration from seconds. */
export function duration(secs) {
  if (secs === null || secs === undefined) return 'none';
  const units = [['d', 86400], ['h', 3600], ['min', 60], ['s', 1]];
  const parts = [];
  let left = Math.round(secs);
  for (const [u, n] of units) {
    if (left >= n) {
      parts.push(`${Math.floor(left / n)} ${u}`);
      left %= n;
    }
    if (parts.length === 2) break;
  }
  return parts.join(' ') || '0 s';
}
