// A broker: its settings (edit, delete), signing keys (states, rotation) and health (live
// charts), with the tokens tab from tokens.js. An operator-managed broker is shown read-only,
// naming the Kubernetes `Broker` resource that owns it (only its description stays editable).
import { api, can, seg } from './api.js';
import { h, fill, field, table, attempt, progress, confirmDialog, announce, copyButton, when, duration } from './dom.js';
import { lineChart } from './chart.js';
import { renderTokens } from './tokens.js';

const TABS = [['settings', 'Settings'], ['tokens', 'Tokens'], ['keys', 'Keys'], ['health', 'Health']];

/** The editable fields of a broker, filled from `b`. */
export function brokerForm(b, { managed = false } = {}) {
  const description = h('textarea', { name: 'description', maxlength: 1024 });
  description.value = b.description ?? '';
  const expiration = h('input', { type: 'number', name: 'expiration', min: 1, max: 315360000, step: 1, disabled: managed, inputmode: 'numeric' });
  expiration.value = b.expiration ?? '';
  const onPublish = h('input', { type: 'url', name: 'on_publish', maxlength: 2048, disabled: managed, placeholder: 'https://hooks.example.com/starling' });
  onPublish.value = b.on_publish?.url ?? '';
  const limits = h('textarea', { name: 'limits', class: 'mono', disabled: managed, spellcheck: 'false' });
  limits.value = b.limits ? JSON.stringify(b.limits, null, 2) : '';
  const fields = [
    field('Description', description),
    field('Token lifetime ceiling (seconds)', expiration, 'Empty for none. Tokens expire at the shorter of this and what they were issued with.'),
    field('On-publish hook URL', onPublish, 'Every message goes to this URL first (signed with the broker\'s key). Empty for none.'),
    field('Limits (JSON object)', limits, 'The broker\'s limits table, e.g. {"maxConnections": 100}; the broker applies each at or below its own configured value. Empty for none.'),
  ];
  return { description, expiration, onPublish, limits, fields };
}

/** The JSON body of a create (`patch` false) or change from the form; throws on bad limits. */
export function brokerBody(f, patch) {
  const body = { description: f.description.value };
  if (f.expiration.disabled) return body;
  const exp = f.expiration.value.trim();
  body.expiration = exp === '' ? (patch ? null : undefined) : Number(exp);
  const url = f.onPublish.value.trim();
  body.on_publish = url === '' ? (patch ? { url: null } : undefined) : { url };
  const limits = f.limits.value.trim();
  if (limits === '') {
    body.limits = patch ? null : undefined;
  } else {
    try {
      body.limits = JSON.parse(limits);
    } catch (e) {
      throw new Error(`Limits are not JSON: ${e.message}`);
    }
  }
  return body;
}

function tabs(ns, b, current) {
  return h('nav', { class: 'tabs', 'aria-label': `Broker ${b}` }, TABS.map(([id, label]) =>
    h('a', { href: `#/ns/${seg(ns)}/b/${seg(b)}/${id}`, 'aria-current': id === current ? 'page' : null, text: label })));
}

export async function renderBroker(page, nsName, name, tab) {
  const { main } = page;
  const b = await progress(`Loading broker ${name}`, () => api('GET', `/namespaces/${seg(nsName)}/brokers/${seg(name)}`));
  const body = h('div', {});
  fill(main,
    h('p', {}, h('a', { href: `#/ns/${seg(nsName)}`, text: `← Namespace ${nsName}` })),
    h('h1', { text: `Broker ${b.name}` }),
    b.managedBy ? h('p', { class: 'note' },
      'Managed by the Kubernetes resource ',
      h('strong', { text: `Broker ${b.managedBy.namespace}/${b.managedBy.name}` }),
      ': its expiration, hook and limits are set there, and it is deleted by deleting that resource.') : null,
    tabs(nsName, b.name, tab),
    body);
  const sub = { ...page, main: body, ns: nsName, broker: b };
  if (tab === 'tokens') await renderTokens(sub);
  else if (tab === 'keys') await renderKeys(sub);
  else if (tab === 'health') await renderHealth(sub);
  else renderSettings(sub);
}

function renderSettings(page) {
  const { main, ctx, ns, broker: b } = page;
  const path = `/namespaces/${seg(ns)}/brokers/${seg(b.name)}`;
  const facts = h('dl', {},
    h('dt', { text: 'MQTT endpoint' }), h('dd', {}, h('code', { text: b.endpoint }), ' ', copyButton('Copy endpoint', b.endpoint)),
    h('dt', { text: 'WebSocket endpoint' }), h('dd', {}, h('code', { text: b.wsEndpoint }), ' ', copyButton('Copy WebSocket endpoint', b.wsEndpoint)),
    h('dt', { text: 'Id' }), h('dd', { class: 'mono', text: b.id }),
    h('dt', { text: 'Created' }), h('dd', { text: new Date(b.created_on).toLocaleString() }),
    h('dt', { text: 'Modified' }), h('dd', { text: new Date(b.modified_on).toLocaleString() }));
  if (!can(ctx.role, 'write')) {
    fill(main, facts,
      h('h2', { text: 'Settings' }),
      h('dl', {},
        h('dt', { text: 'Description' }), h('dd', { text: b.description || '—' }),
        h('dt', { text: 'Token lifetime ceiling' }), h('dd', { text: b.expiration ? `${b.expiration} s (${duration(b.expiration)})` : 'none' }),
        h('dt', { text: 'On-publish hook' }), h('dd', { text: b.on_publish?.url ?? 'none' }),
        h('dt', { text: 'Limits' }), h('dd', {}, b.limits ? h('pre', { text: JSON.stringify(b.limits, null, 2) }) : 'none')));
    return;
  }
  const f = brokerForm(b, { managed: !!b.managedBy });
  const save = h('button', { type: 'submit', text: 'Save changes' });
  const form = h('form', { class: 'stack', 'aria-labelledby': 'b-settings' },
    h('h2', { id: 'b-settings', text: 'Settings' }), f.fields, h('div', { class: 'actions' }, save));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const changed = await attempt('Saving the broker', () => api('PATCH', path, { body: brokerBody(f, true) }), save);
    if (changed) {
      announce(`Broker ${changed.name} saved`);
      await page.reload();
    }
  });
  const del = h('button', { type: 'button', class: 'danger', text: `Delete broker ${b.name}`, disabled: !!b.managedBy });
  del.addEventListener('click', async () => {
    if (!await confirmDialog(`Delete broker ${b.name}? Its clients are disconnected and its tokens stop working.`)) return;
    const done = await attempt(`Deleting broker ${b.name}`, () => api('DELETE', path), del);
    if (done !== undefined) {
      announce(`Broker ${b.name} deleted`);
      location.hash = `#/ns/${seg(ns)}`;
    }
  });
  fill(main, facts, form,
    h('h2', { text: 'Delete' }),
    b.managedBy ? h('p', { class: 'muted', text: `Delete the Broker resource ${b.managedBy.namespace}/${b.managedBy.name} instead.` }) : null,
    del);
}

// === keys ===

async function renderKeys(page) {
  const { main, ctx, ns, broker: b } = page;
  const path = `/namespaces/${seg(ns)}/brokers/${seg(b.name)}`;
  const { keys } = await progress('Loading keys', () => api('GET', `${path}/keys`));
  const rows = keys.map((k) => h('tr', {},
    h('td', {}, h('span', { class: `badge ${k.status}`, text: k.status })),
    h('td', { class: 'mono', text: k.kid }),
    h('td', { text: new Date(k.createdOn).toLocaleString() }),
    h('td', { text: k.status === 'retiring' ? `${when(k.retireAt)} (in ${duration(k.retireAt - Date.now() / 1000)})` : '—' })));
  const parts = [
    h('p', {}, 'The ', h('strong', { text: 'current' }), ' key signs new tokens (and the hook\'s requests); the ',
      h('strong', { text: 'next' }), ' key is published ahead, so verifiers already know it when it takes over; a ',
      h('strong', { text: 'retiring' }), ' key signs nothing but still verifies the tokens it signed until its retire time, then leaves.'),
    table('Signing keys', ['State', 'Key id (kid)', 'Created', 'Retires'], rows),
  ];
  if (can(ctx.role, 'write')) {
    const defaultSecs = Math.max(b.expiration ?? 0, 86400);
    const after = h('input', { type: 'number', min: 0, max: 315360000, step: 1, name: 'retire_after', inputmode: 'numeric' });
    const button = h('button', { type: 'submit', text: 'Rotate keys' });
    const result = h('div', { 'aria-live': 'polite' });
    const form = h('form', { class: 'stack', 'aria-labelledby': 'rotate-title' },
      h('h2', { id: 'rotate-title', text: 'Rotate' }),
      h('p', { text: `Rotation makes the next key current at once. The current key becomes retiring: tokens it signed keep working until the retire time, then stop (tokens without exp too). Empty retires after ${duration(defaultSecs)}: the longer of the broker's token lifetime ceiling and 24 h, so no token it signed outlives its key by surprise.` }),
      field('Retire the old key after (seconds)', after, '0 cuts its tokens off at once.'),
      h('div', { class: 'actions' }, button), result);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const secs = after.value.trim();
      const text = secs === '0'
        ? 'Tokens signed by the current key stop working at once. Rotate?'
        : `Tokens signed by the current key keep working for ${duration(secs === '' ? defaultSecs : Number(secs))}. Rotate?`;
      if (!await confirmDialog(text, 'Rotate')) return;
      const r = await attempt('Rotating keys', () => api('POST', `${path}/keys/rotate`, { query: { retire_after: secs } }), button);
      if (r) {
        await renderKeys(page);
        main.append(h('p', { class: 'note', role: 'status', text: `Rotated: ${r.message}` }));
      }
    });
    parts.push(form);
  }
  fill(main, parts);
}

// === health ===

const HISTORY = 64;

async function renderHealth(page) {
  const { main, ns, broker: b, onLeave } = page;
  const path = `/namespaces/${seg(ns)}/brokers/${seg(b.name)}/stats`;
  const note = h('p', { class: 'muted' });
  const cards = h('div', { class: 'cards' });
  const when_ = h('p', { class: 'muted' });
  fill(main, h('h2', { text: 'Health' }), note, cards, when_);
  let stopped = false;
  const draw = (s) => {
    note.textContent = s.note;
    const pts = s.points.slice(-HISTORY);
    const series = (key) => pts.map((p) => ({ at: p.at, value: p[key] }));
    cards.replaceChildren(
      lineChart({ title: 'Connections', unit: '', data: series('connections') }),
      lineChart({ title: 'Messages in', unit: '/s', data: series('messagesInPerSec') }),
      lineChart({ title: 'Messages out', unit: '/s', data: series('messagesOutPerSec') }),
      lineChart({ title: 'Drops', unit: '/s', data: series('droppedPerSec') }));
    const last = s.instances.map((i) => i.reportedAt).sort().at(-1);
    when_.textContent = last
      ? `${s.instances.length} reporting process(es); latest report ${new Date(last).toLocaleTimeString()}.`
      : 'No report yet.';
  };
  const tick = async () => {
    if (stopped) return;
    try {
      draw(await api('GET', path));
    } catch (e) {
      note.textContent = `Could not read the figures: ${e.message}`;
    }
    if (!stopped) timer = setTimeout(tick, 2000);
  };
  let timer = null;
  onLeave(() => { stopped = true; clearTimeout(timer); });
  await progress('Loading health', tick);
}
