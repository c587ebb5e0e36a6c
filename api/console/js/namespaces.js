// Namespaces (list, create, delete) and a namespace's brokers (list, create).
import { api, all, can, seg } from './api.js';
import { h, fill, field, table, attempt, progress, confirmDialog, announce } from './dom.js';
import { brokerForm, brokerBody } from './broker.js';

const LABEL_HINT = 'Letters, digits and -, starting with a letter, at most 63.';

export async function renderNamespaces(page) {
  const { main, ctx } = page;
  const namespaces = await progress('Loading namespaces', () => all('/namespaces'));
  const rows = namespaces.map((n) => h('tr', {},
    h('td', {}, h('a', { href: `#/ns/${seg(n.name)}`, text: n.name })),
    h('td', { text: n.description || '—' }),
    h('td', { text: new Date(n.created_on).toLocaleString() }),
    can(ctx.role, 'write') ? h('td', {}, deleteNamespaceButton(page, n.name)) : null));
  const headers = ['Name', 'Description', 'Created'];
  if (can(ctx.role, 'write')) headers.push('Actions');
  fill(main,
    h('h1', { text: 'Namespaces' }),
    namespaces.length
      ? table('Namespaces', headers, rows)
      : h('p', { class: 'muted', text: 'No namespace yet.' }),
    can(ctx.role, 'write') ? createNamespaceForm(page) : readOnlyNote(ctx));
}

function readOnlyNote(ctx) {
  return h('p', { class: 'note', text: `This token's role is ${ctx.role}: it can look, not change.` });
}

function deleteNamespaceButton(page, name) {
  const button = h('button', { type: 'button', class: 'danger small', text: 'Delete', 'aria-label': `Delete namespace ${name}` });
  button.addEventListener('click', async () => {
    if (!await confirmDialog(`Delete namespace ${name}? It must have no brokers left.`)) return;
    const done = await attempt(`Deleting namespace ${name}`, () => api('DELETE', `/namespaces/${seg(name)}`), button);
    if (done !== undefined) {
      announce(`Namespace ${name} deleted`);
      if (location.hash === '#/namespaces') await page.reload();
      else location.hash = '#/namespaces';
    }
  });
  return button;
}

function createNamespaceForm(page) {
  const name = h('input', { type: 'text', name: 'name', required: true, maxlength: 63, pattern: '[A-Za-z]([A-Za-z0-9\\-]{0,61}[A-Za-z0-9])?', autocomplete: 'off' });
  const description = h('input', { type: 'text', name: 'description', maxlength: 1024 });
  const button = h('button', { type: 'submit', text: 'Create namespace' });
  const form = h('form', { class: 'stack', 'aria-labelledby': 'ns-create' },
    h('h2', { id: 'ns-create', text: 'New namespace' }),
    field('Name', name, `${LABEL_HINT} Unique over the whole api.`),
    field('Description', description),
    h('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const created = await attempt('Creating the namespace', () => api('POST', '/namespaces', {
      body: { name: name.value.trim(), description: description.value },
    }), button);
    if (created) {
      announce(`Namespace ${created.name} created`);
      location.hash = `#/ns/${seg(created.name)}`;
    }
  });
  return form;
}

export async function renderNamespace(page, nsName) {
  const { main, ctx } = page;
  const [ns, brokers] = await progress(`Loading namespace ${nsName}`, () => Promise.all([
    api('GET', `/namespaces/${seg(nsName)}`),
    all(`/namespaces/${seg(nsName)}/brokers`),
  ]));
  const rows = brokers.map((b) => h('tr', {},
    h('td', {}, h('a', { href: `#/ns/${seg(ns.name)}/b/${seg(b.name)}/settings`, text: b.name })),
    h('td', {}, b.managedBy
      ? h('span', { class: 'badge managed', text: `managed by Broker ${b.managedBy.namespace}/${b.managedBy.name}` })
      : h('span', { class: 'muted', text: 'api' })),
    h('td', { class: 'mono', text: b.endpoint }),
    h('td', { text: b.description || '—' })));
  fill(main,
    h('p', {}, h('a', { href: '#/namespaces', text: '← Namespaces' })),
    h('h1', { text: `Namespace ${ns.name}` }),
    ns.description ? h('p', { text: ns.description }) : null,
    h('h2', { text: 'Brokers' }),
    brokers.length
      ? table(`Brokers of ${ns.name}`, ['Name', 'Managed', 'Endpoint', 'Description'], rows)
      : h('p', { class: 'muted', text: 'No broker yet.' }),
    can(ctx.role, 'write') ? createBrokerForm(ns.name) : null,
    can(ctx.role, 'write') ? h('h2', { text: 'Delete this namespace' }) : null,
    can(ctx.role, 'write') ? deleteNamespaceButton(page, ns.name) : null);
}

function createBrokerForm(nsName) {
  const f = brokerForm({});
  const name = h('input', { type: 'text', name: 'name', required: true, maxlength: 63, autocomplete: 'off' });
  const button = h('button', { type: 'submit', text: 'Create broker' });
  const form = h('form', { class: 'stack', 'aria-labelledby': 'b-create' },
    h('h2', { id: 'b-create', text: 'New broker' }),
    field('Name', name, `${LABEL_HINT} Unique in the namespace.`),
    f.fields,
    h('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const created = await attempt('Creating the broker', async () => {
      const body = { name: name.value.trim(), ...brokerBody(f, false) };
      return api('POST', `/namespaces/${seg(nsName)}/brokers`, { body });
    }, button);
    if (created) {
      announce(`Broker ${created.name} created`);
      location.hash = `#/ns/${seg(nsName)}/b/${seg(created.name)}/settings`;
    }
  });
  return form;
}
