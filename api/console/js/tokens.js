// Client tokens of a broker: issue one or many (client ids, topic ACL, expiration) with copy
// buttons and ready mosquitto_sub and MQTT.js snippets; the issued-token records (jti, client
// id, expiry, revoked); revoke and unrevoke by jti.
import { api, can, seg } from './api.js';
import { h, fill, field, table, attempt, progress, announce, copyButton, confirmDialog, when, check } from './dom.js';

/** The claims of a JWT (its middle part), or {} when it is not one. */
export function claims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

/** Filter lists from a textarea: one per line (or comma-separated), blanks dropped. */
export function filters(text) {
  return text.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
}

/** `topicAcl` for the credentials route from the form's choice. */
export function topicAcl(everything, pub, sub) {
  if (everything) return '#';
  return JSON.stringify({ pub: filters(pub), sub: filters(sub) });
}

/** Issues tokens; returns [{clientId, token, jti, exp}]. */
export async function issue(ns, broker, { clientIds = [], number, acl, expiration }) {
  const result = await api('GET', `/namespaces/${seg(ns)}/brokers/${seg(broker)}/credentials`, {
    query: { type: 'TOKEN', topicAcl: acl, clientid: clientIds, number, expiration },
  });
  return Object.entries(result).map(([clientId, token]) => {
    const c = claims(token);
    return { clientId, token, jti: c.jti, exp: c.exp ?? null };
  });
}

function snippets(b, t, subFilter, dev) {
  const u = new URL(b.endpoint.replace(/^mqtts:/, 'https:'));
  const ca = dev ? 'ca.pem' : '/etc/ssl/certs/ca-certificates.crt';
  const sub = `mosquitto_sub -h ${u.hostname} -p ${u.port || 8883} --cafile ${ca} -V 5 -i '${t.clientId}' -u '${t.clientId}' -P '${t.token}' -t '${subFilter}' -v`;
  const js = `import mqtt from 'mqtt';\nconst client = mqtt.connect('${b.wsEndpoint}', {\n  protocolVersion: 5,\n  clientId: '${t.clientId}',\n  username: '${t.clientId}',\n  password: '${t.token}',\n});\nclient.on('connect', () => client.subscribe('${subFilter}'));\nclient.on('message', (topic, payload) => console.log(topic, payload.toString()));`;
  return { sub, js, ca };
}

export async function renderTokens(page) {
  const { main, ctx } = page;
  const parts = [];
  if (can(ctx.role, 'write')) parts.push(issueForm(page));
  const records = h('div', {});
  const revocations = h('div', {});
  parts.push(h('h2', { text: 'Issued tokens' }), records, h('h2', { text: 'Revocations' }), revocations);
  fill(main, parts);
  await progress('Loading issued tokens', () => Promise.all([
    renderRecords(page, records, revocations),
    renderRevocations(page, revocations, records),
  ]));
  page.refreshTokens = () => Promise.all([renderRecords(page, records, revocations), renderRevocations(page, revocations, records)]);
}

function issueForm(page) {
  const { ns, broker: b, ctx } = page;
  const clientIds = h('textarea', { name: 'clientids', class: 'mono', spellcheck: 'false', placeholder: 'sensor-1\nsensor-2' });
  const number = h('input', { type: 'number', name: 'number', min: 1, max: 100, step: 1, value: 1, inputmode: 'numeric' });
  const all = check('Every topic (#)', { name: 'acl-all', checked: true });
  const pub = h('textarea', { name: 'pub', class: 'mono', spellcheck: 'false', placeholder: 'sensors/+/temperature' });
  const sub = h('textarea', { name: 'sub', class: 'mono', spellcheck: 'false', placeholder: 'commands/#' });
  const lists = h('div', { class: 'two' },
    field('May publish to (filters, one per line)', pub),
    field('May subscribe to (filters, one per line)', sub));
  const syncAcl = () => { lists.hidden = all.box.checked; };
  all.box.addEventListener('change', syncAcl);
  syncAcl();
  const expiration = h('input', { type: 'number', name: 'expiration', min: -1, max: 315360000, step: 1, inputmode: 'numeric' });
  const button = h('button', { type: 'submit', text: 'Issue tokens' });
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'stack', 'aria-labelledby': 'issue-title' },
    h('h2', { id: 'issue-title', text: 'Issue tokens' }),
    field('Client ids (one per line)', clientIds, 'One token per client id. Empty: the count below, with generated ids.'),
    field('How many (without client ids)', number),
    h('fieldset', {}, h('legend', { text: 'Topic ACL' }), all.el, lists),
    field('Lifetime (seconds)', expiration, `Empty or -1: the broker's ceiling${b.expiration ? ` (${b.expiration} s)` : ' (none: no exp)'}.`),
    h('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const ids = filters(clientIds.value);
    const issued = await attempt('Issuing tokens', () => issue(ns, b.name, {
      clientIds: ids,
      number: ids.length ? undefined : number.value,
      acl: topicAcl(all.box.checked, pub.value, sub.value),
      expiration: expiration.value.trim(),
    }), button);
    if (!issued) return;
    const subFilter = all.box.checked ? '#' : (filters(sub.value)[0] ?? '#');
    fill(out, h('h3', { text: `${issued.length} token(s) issued` }),
      h('p', { class: 'note', text: 'Tokens are shown only now: the api keeps their records (jti, client id, expiry), never the tokens.' }),
      issued.map((t) => issuedCard(b, t, subFilter, !!ctx.config.devPlainWs)));
    announce(`${issued.length} token(s) issued`);
    await page.refreshTokens?.();
  });
  return h('div', {}, form, out);
}

function issuedCard(b, t, subFilter, dev) {
  const s = snippets(b, t, subFilter, dev);
  return h('section', { class: 'card issued', 'aria-label': `Token for ${t.clientId}` },
    h('h4', {}, 'Client ', h('code', { text: t.clientId })),
    h('p', {}, 'jti ', h('code', { class: 'jti', text: t.jti ?? '?' }), ' · expires ', when(t.exp)),
    h('pre', { class: 'token', text: t.token }),
    h('div', { class: 'actions' },
      copyButton('Copy token', t.token),
      copyButton('Copy mosquitto_sub', s.sub),
      copyButton('Copy MQTT.js', s.js)),
    h('details', {},
      h('summary', { text: 'Snippets' }),
      dev ? h('p', { class: 'hint', text: 'ca.pem is the dev CA in `starling-dev`\'s data directory (its banner prints the path under CA).' }) : null,
      h('pre', { text: s.sub }),
      h('pre', { text: s.js })));
}

async function renderRecords(page, el, revocationsEl) {
  const { ns, broker: b, ctx } = page;
  const path = `/namespaces/${seg(ns)}/brokers/${seg(b.name)}`;
  const filter = h('input', { type: 'text', name: 'clientid-filter', autocomplete: 'off' });
  filter.value = page.recordFilter ?? '';
  const tbody = [];
  let cursor = null;
  const more = h('button', { type: 'button', class: 'secondary', text: 'Load more' });
  const wrap = h('div', {});
  const load = async (reset) => {
    if (reset) { tbody.length = 0; cursor = null; }
    const pageOf = await api('GET', `${path}/credentials/issued`, { query: { limit: 50, cursor, clientid: filter.value.trim() } });
    for (const r of pageOf.items) tbody.push(recordRow(page, r, path, () => refresh()));
    cursor = pageOf.nextCursor;
    more.hidden = !cursor;
    fill(wrap, tbody.length
      ? table('Issued tokens', ['jti', 'Client id', 'Issued', 'Expires', 'State', ...(can(ctx.role, 'write') ? ['Action'] : [])], tbody)
      : h('p', { class: 'muted', text: 'No token issued (or all expired).' }));
  };
  const refresh = () => Promise.all([load(true), renderRevocations(page, revocationsEl, el)]);
  more.addEventListener('click', () => attempt('Loading more', () => load(false), more));
  const form = h('form', { class: 'row', role: 'search', 'aria-label': 'Filter issued tokens' },
    field('Client id', filter), h('button', { type: 'submit', class: 'secondary', text: 'Filter' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    page.recordFilter = filter.value;
    attempt('Filtering', () => load(true));
  });
  fill(el, form, wrap, more);
  await load(true);
}

function recordRow(page, r, path, refresh) {
  const { ctx } = page;
  const expired = r.expiresAt !== null && r.expiresAt * 1000 < Date.now();
  const state = r.revoked
    ? h('span', { class: 'badge revoked', text: 'revoked' })
    : h('span', { class: 'badge', text: expired ? 'expired' : 'valid' });
  let action = null;
  if (can(ctx.role, 'write')) {
    const button = h('button', {
      type: 'button', class: r.revoked ? 'secondary small' : 'danger small',
      text: r.revoked ? 'Unrevoke' : 'Revoke', 'aria-label': `${r.revoked ? 'Unrevoke' : 'Revoke'} ${r.jti} (${r.clientId})`,
    });
    button.addEventListener('click', async () => {
      if (!r.revoked && !await confirmDialog(`Revoke ${r.clientId}'s token ${r.jti}? Its connections are cut at once.`, 'Revoke')) return;
      const done = await attempt(r.revoked ? 'Lifting the revocation' : 'Revoking', () =>
        api(r.revoked ? 'DELETE' : 'POST', `${path}/revocations`, { query: { jti: r.jti } }), button);
      if (done !== undefined) {
        announce(`${r.jti} ${r.revoked ? 'unrevoked' : 'revoked'}`);
        await refresh();
      }
    });
    action = h('td', {}, button);
  }
  return h('tr', { 'data-jti': r.jti },
    h('td', { class: 'mono', text: r.jti }),
    h('td', { class: 'mono', text: r.clientId }),
    h('td', { text: when(r.issuedAt) }),
    h('td', { text: when(r.expiresAt) }),
    h('td', {}, state),
    action);
}

async function renderRevocations(page, el, recordsEl) {
  const { ns, broker: b, ctx } = page;
  const path = `/namespaces/${seg(ns)}/brokers/${seg(b.name)}`;
  const list = await api('GET', `${path}/revocations`);
  const refresh = () => Promise.all([renderRevocations(page, el, recordsEl), renderRecords(page, recordsEl, el)]);
  const rows = list.map((r) => {
    let action = null;
    if (can(ctx.role, 'write')) {
      const button = h('button', { type: 'button', class: 'secondary small', text: 'Unrevoke', 'aria-label': `Unrevoke ${r.jti}` });
      button.addEventListener('click', async () => {
        const done = await attempt('Lifting the revocation', () => api('DELETE', `${path}/revocations`, { query: { jti: r.jti } }), button);
        if (done !== undefined) await refresh();
      });
      action = h('td', {}, button);
    }
    return h('tr', {}, h('td', { class: 'mono', text: r.jti }), h('td', { text: when(r.expiresAt) }), action);
  });
  const parts = [list.length
    ? table('Revocations', ['jti', 'Kept until', ...(can(ctx.role, 'write') ? ['Action'] : [])], rows)
    : h('p', { class: 'muted', text: 'Nothing revoked.' })];
  if (can(ctx.role, 'write')) {
    const jtis = h('textarea', { name: 'jtis', class: 'mono', spellcheck: 'false' });
    const revoke = h('button', { type: 'submit', class: 'danger', text: 'Revoke' });
    const form = h('form', { class: 'stack', 'aria-labelledby': 'revoke-title' },
      h('h3', { id: 'revoke-title', text: 'Revoke by jti' }),
      field('jti values (one per line or comma-separated)', jtis, 'Tokens from elsewhere too; up to 1000 at once.'),
      h('div', { class: 'actions' }, revoke));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const done = await attempt('Revoking', () => api('POST', `${path}/revocations`, { query: { jti: filters(jtis.value) } }), revoke);
      if (done !== undefined) {
        announce('revoked');
        await refresh();
      }
    });
    parts.push(form);
  }
  fill(el, parts);
}
