// The console's entry point: sign-in, the hash router and the page frame.
//
// Routes: #/signin, #/namespaces, #/ns/{ns}, #/ns/{ns}/b/{broker}/{settings|tokens|keys|health},
// #/live, #/audit. Each page is rendered by its module into <main>; the signed-in account and
// role (GET /v1/account) decide which controls exist at all (a read token gets no write control).
import { api, session } from './api.js';
import { h, fill, field, attempt, clearError, showError } from './dom.js';
import { renderNamespaces, renderNamespace } from './namespaces.js';
import { renderBroker } from './broker.js';
import { renderLive, stopLive } from './live.js';
import { renderAudit } from './audit.js';

const main = document.getElementById('main');
/** What every page gets: who is signed in and with which role, and the console's settings. */
const ctx = { account: null, role: null, config: {}, cleanup: [] };

async function loadConfig() {
  try {
    const resp = await fetch('config.json', { cache: 'no-store' });
    if (resp.ok) ctx.config = await resp.json();
  } catch { /* the defaults do */ }
}

function showSignedIn() {
  const signedIn = !!ctx.account;
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('signout').hidden = !signedIn;
  document.getElementById('who').textContent = signedIn
    ? `${ctx.account.name} · ${ctx.account.token.name} (${ctx.role})`
    : '';
  for (const a of document.querySelectorAll('#nav [data-role="admin"]')) a.hidden = ctx.role !== 'admin';
}

async function signIn(token) {
  const account = await api('GET', '/account', { token });
  session.set(token);
  ctx.account = account;
  ctx.role = account.token.role;
  showSignedIn();
}

function signOut() {
  stopLive();
  session.clear();
  ctx.account = null;
  ctx.role = null;
  showSignedIn();
  location.hash = '#/signin';
}

function renderSignIn() {
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', required: true, spellcheck: 'false' });
  const button = h('button', { type: 'submit', text: 'Sign in' });
  const form = h('form', { class: 'stack', 'aria-labelledby': 'signin-title' },
    field('API token', input, 'Kept in this tab only (sessionStorage); closing the tab signs you out. `starling-dev` prints its admin token.'),
    h('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const ok = await attempt('Signing in', async () => { await signIn(input.value.trim()); return true; }, button);
    if (ok) location.hash = '#/namespaces';
  });
  fill(main, h('h1', { id: 'signin-title', text: 'Sign in to Starling' }), form);
  input.focus();
}

function markNav(section) {
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

async function route() {
  for (const stop of ctx.cleanup.splice(0)) stop();
  clearError();
  const hash = location.hash.replace(/^#/, '') || '/namespaces';
  const [path, queryString] = hash.split('?');
  const query = new URLSearchParams(queryString ?? '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  if (!ctx.account) {
    if (session.token) {
      try { await signIn(session.token); } catch (e) { session.clear(); showError(e); }
    }
    if (!ctx.account) {
      markNav(null);
      renderSignIn();
      return;
    }
  }
  const page = { main, ctx, query, onLeave: (f) => ctx.cleanup.push(f), reload: route };
  try {
    if (parts[0] === 'signin') {
      location.hash = '#/namespaces';
    } else if (parts[0] === 'ns' && parts[1] && parts[2] === 'b' && parts[3]) {
      markNav('namespaces');
      await renderBroker(page, parts[1], parts[3], parts[4] ?? 'settings');
    } else if (parts[0] === 'ns' && parts[1]) {
      markNav('namespaces');
      await renderNamespace(page, parts[1]);
    } else if (parts[0] === 'live') {
      markNav('live');
      await renderLive(page);
    } else if (parts[0] === 'audit') {
      markNav('audit');
      await renderAudit(page);
    } else {
      markNav('namespaces');
      await renderNamespaces(page);
    }
  } catch (e) {
    showError(e);
  }
  main.focus({ preventScroll: true });
}

document.getElementById('signout').addEventListener('click', signOut);
document.getElementById('alert-close').addEventListener('click', clearError);
window.addEventListener('hashchange', route);
await loadConfig();
await route();
