// The live MQTT client: MQTT.js (vendored) in this page, over WebSockets to the broker's real
// endpoint, with a token issued on the spot (or pasted). Subscribe with filters, publish with
// QoS, retain and user properties, watch messages arrive (payload as text or hex, properties),
// and see every refusal with its MQTT reason code. The connection outlives page changes inside
// the console (so a revocation made on the Tokens tab shows here), and ends on sign-out.
import mqtt from '../vendor/mqtt.esm.js';
import { all, can, seg } from './api.js';
import { h, fill, field, check, attempt, progress, announce, showError } from './dom.js';
import { issue, filters } from './tokens.js';

/** MQTT 5 reason codes by value (MQTT 5.0, 2.4). */
export const REASONS = {
  0x00: 'Success', 0x01: 'Granted QoS 1', 0x02: 'Granted QoS 2', 0x04: 'Disconnect with Will Message',
  0x10: 'No matching subscribers', 0x11: 'No subscription existed', 0x80: 'Unspecified error',
  0x81: 'Malformed Packet', 0x82: 'Protocol Error', 0x83: 'Implementation specific error',
  0x84: 'Unsupported Protocol Version', 0x85: 'Client Identifier not valid', 0x86: 'Bad User Name or Password',
  0x87: 'Not authorized', 0x88: 'Server unavailable', 0x89: 'Server busy', 0x8a: 'Banned',
  0x8b: 'Server shutting down', 0x8c: 'Bad authentication method', 0x8d: 'Keep Alive timeout',
  0x8e: 'Session taken over', 0x8f: 'Topic Filter invalid', 0x90: 'Topic Name invalid',
  0x91: 'Packet Identifier in use', 0x92: 'Packet Identifier not found', 0x93: 'Receive Maximum exceeded',
  0x94: 'Topic Alias invalid', 0x95: 'Packet too large', 0x96: 'Message rate too high', 0x97: 'Quota exceeded',
  0x98: 'Administrative action', 0x99: 'Payload format invalid', 0x9a: 'Retain not supported',
  0x9b: 'QoS not supported', 0x9c: 'Use another server', 0x9d: 'Server moved',
  0x9e: 'Shared Subscriptions not supported', 0x9f: 'Connection rate exceeded', 0xa0: 'Maximum connect time',
  0xa1: 'Subscription Identifiers not supported', 0xa2: 'Wildcard Subscriptions not supported',
};

/** `0x87 Not authorized`. */
export function reason(code) {
  const hex = `0x${code.toString(16).padStart(2, '0')}`;
  return `${hex} ${REASONS[code] ?? 'unknown reason'}`;
}

/** ` 0x87 Not authorized` for an MQTT.js error that carries a reason code (as a number, or only
 * as the reason's name at the end of its message), else ''. */
export function errorReason(err) {
  if (typeof err?.code === 'number') return ` ${reason(err.code)}`;
  const name = String(err?.message ?? '').split(': ').at(-1);
  const code = Object.entries(REASONS).find(([, n]) => n === name)?.[0];
  return code === undefined ? '' : ` ${reason(Number(code))}`;
}

/** Bytes as spaced hex. */
export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}

/** User properties from `key=value` lines. */
export function userProperties(text) {
  const out = {};
  for (const line of text.split('\n').map((l) => l.trim()).filter(Boolean)) {
    const i = line.indexOf('=');
    if (i < 1) throw new Error(`user property "${line}" is not key=value`);
    const [k, v] = [line.slice(0, i).trim(), line.slice(i + 1).trim()];
    out[k] = k in out ? [].concat(out[k], v) : v;
  }
  return out;
}

const MAX_MESSAGES = 200;
const MAX_EVENTS = 100;

// The client and what it saw: kept while the console is open, drawn when the page is shown.
const live = {
  client: null,
  state: 'disconnected',
  target: null,
  events: [],
  messages: [],
  subscriptions: new Map(),
  showHex: false,
  view: null,
};

function event(text, kind = '') {
  live.events.unshift({ at: new Date(), text, kind });
  live.events.length = Math.min(live.events.length, MAX_EVENTS);
  if (live.view) drawEvents();
}

function setState(state, detail) {
  live.state = state;
  live.detail = detail;
  if (live.view) {
    live.view.status.textContent = detail ? `${state}: ${detail}` : state;
    live.view.status.className = state === 'connected' ? 'ok' : (state === 'disconnected' ? 'bad' : '');
    live.view.connect.disabled = state === 'connected' || state === 'connecting';
    live.view.disconnect.disabled = state !== 'connected' && state !== 'connecting';
    live.view.subscribe.disabled = state !== 'connected';
    live.view.publish.disabled = state !== 'connected';
  }
}

/** Ends the client (on sign-out). */
export function stopLive() {
  live.client?.end(true);
  live.client = null;
  live.subscriptions.clear();
  setState('disconnected');
}

function connect(url, clientId, token) {
  live.client?.end(true);
  live.subscriptions.clear();
  setState('connecting', url);
  event(`connecting to ${url} as ${clientId}`);
  const client = mqtt.connect(url, {
    protocolVersion: 5,
    clientId,
    username: clientId,
    password: token,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: 15000,
    // Keep-alive timers on the page's own clock: the default runs them in a blob: worker,
    // which the console's Content-Security-Policy does not allow.
    timerVariant: 'native',
  });
  live.client = client;
  const mine = () => live.client === client;
  client.on('connect', (connack) => {
    if (!mine()) return;
    setState('connected', `CONNACK ${reason(connack.reasonCode ?? 0)}`);
    event(`connected: CONNACK ${reason(connack.reasonCode ?? 0)}`, 'ok');
  });
  client.on('disconnect', (packet) => {
    if (!mine()) return;
    const why = packet.properties?.reasonString ? ` (${packet.properties.reasonString})` : '';
    setState('disconnected', `by the broker, ${reason(packet.reasonCode ?? 0)}${why}`);
    event(`disconnected by the broker: ${reason(packet.reasonCode ?? 0)}${why}`, 'bad');
  });
  client.on('error', (e) => {
    if (!mine()) return;
    const code = errorReason(e);
    setState('disconnected', `refused:${code} ${e.message}`);
    event(`error:${code} ${e.message}`, 'bad');
  });
  client.on('close', () => {
    if (!mine()) return;
    if (live.state !== 'disconnected') setState('disconnected', 'the connection closed');
    event('connection closed');
  });
  client.on('message', (topic, payload, packet) => {
    if (!mine()) return;
    live.messages.unshift({ at: new Date(), topic, payload: new Uint8Array(payload), qos: packet.qos, retain: packet.retain, properties: packet.properties ?? {} });
    live.messages.length = Math.min(live.messages.length, MAX_MESSAGES);
    if (live.view) drawMessages();
  });
}

function subscribe(filter, qos) {
  return new Promise((resolve) => {
    live.client.subscribe(filter, { qos }, (err, granted) => {
      if (err) {
        const code = errorReason(err);
        event(`subscribe ${filter} refused:${code} (${err.message})`, 'bad');
        return resolve();
      }
      for (const g of granted ?? []) {
        if (g.qos >= 0x80) {
          event(`subscribe ${g.topic} refused: SUBACK ${reason(g.qos)}`, 'bad');
        } else {
          live.subscriptions.set(g.topic, g.qos);
          event(`subscribed ${g.topic}: SUBACK ${reason(g.qos)}`, 'ok');
        }
      }
      if (live.view) drawSubscriptions();
      resolve();
    });
  });
}

function publish(topic, payload, qos, retain, props) {
  return new Promise((resolve) => {
    const options = { qos, retain };
    if (Object.keys(props).length) options.properties = { userProperties: props };
    live.client.publish(topic, payload, options, (err, packet) => {
      if (err) {
        const code = errorReason(err);
        event(`publish to ${topic} refused:${code} (${err.message})`, 'bad');
      } else {
        const ack = qos === 0 ? 'sent (QoS 0: no acknowledgement)' : `acknowledged: ${reason(packet?.reasonCode ?? 0)}`;
        event(`published to ${topic}, ${ack}`, 'ok');
      }
      resolve();
    });
  });
}

// === drawing ===

function drawEvents() {
  fill(live.view.events, live.events.map((e) =>
    h('li', { class: e.kind }, h('time', { text: e.at.toLocaleTimeString() }), ' ', e.text)));
}

function drawSubscriptions() {
  fill(live.view.subs, [...live.subscriptions].map(([f, qos]) => {
    const button = h('button', { type: 'button', class: 'secondary small', text: 'Unsubscribe', 'aria-label': `Unsubscribe ${f}` });
    button.addEventListener('click', () => {
      live.client?.unsubscribe(f, () => {
        live.subscriptions.delete(f);
        event(`unsubscribed ${f}`);
        drawSubscriptions();
      });
    });
    return h('li', {}, h('code', { text: f }), ` QoS ${qos} `, button);
  }));
}

function drawMessages() {
  const list = live.messages.map((m) => {
    const props = Object.entries(m.properties)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}: ${typeof v === 'object' && !(v instanceof Uint8Array) ? JSON.stringify(v) : String(v)}`);
    const text = live.showHex ? hex(m.payload) : new TextDecoder().decode(m.payload);
    return h('li', { class: 'message' },
      h('div', {}, h('code', { class: 'topic', text: m.topic }), ` · QoS ${m.qos}${m.retain ? ' · retained' : ''} · `,
        h('time', { text: m.at.toLocaleTimeString() })),
      h('pre', { class: 'payload', text: text || '(empty payload)' }),
      props.length ? h('div', { class: 'hint', text: props.join(' · ') }) : null);
  });
  fill(live.view.messages, list.length ? list : [h('li', { class: 'muted', text: 'No message yet.' })]);
}

// === the page ===

export async function renderLive(page) {
  const { main, ctx, query, onLeave } = page;
  // Every broker of every namespace (brokers do not carry their namespace's name).
  const entries = await progress('Loading brokers', async () => {
    const namespaces = await all('/namespaces');
    const lists = await Promise.all(namespaces.map((n) => all(`/namespaces/${seg(n.name)}/brokers`)));
    return namespaces.flatMap((n, k) => lists[k].map((b) => ({ ns: n.name, b })));
  });
  const pick = h('select', { name: 'broker' });
  fill(pick, entries.map((e, k) => h('option', { value: String(k), text: `${e.ns} / ${e.b.name}` })));
  const wanted = entries.findIndex((e) => e.ns === (query.get('ns') ?? live.target?.ns) && e.b.name === (query.get('b') ?? live.target?.b));
  pick.value = String(wanted >= 0 ? wanted : 0);

  const url = h('input', { type: 'url', name: 'url', spellcheck: 'false' });
  const clientId = h('input', { type: 'text', name: 'clientid', autocomplete: 'off', maxlength: 64 });
  clientId.value = live.target?.clientId ?? `console-${Math.random().toString(36).slice(2, 8)}`;
  const token = h('input', { type: 'password', name: 'client-token', autocomplete: 'off', spellcheck: 'false' });
  const mayIssue = can(ctx.role, 'write');
  const issueNow = check('Issue a token for this client id now (topic ACL #, valid 1 h)', { name: 'issue-now', checked: mayIssue, disabled: !mayIssue });
  const syncUrl = () => {
    const e = entries[Number(pick.value)];
    if (e) url.value = live.target && live.target.ns === e.ns && live.target.b === e.b.name ? live.target.url : e.b.wsEndpoint;
  };
  pick.addEventListener('change', () => { live.target = null; syncUrl(); });
  syncUrl();
  const connectButton = h('button', { type: 'submit', text: 'Connect' });
  const disconnectButton = h('button', { type: 'button', class: 'secondary', text: 'Disconnect' });
  const status = h('strong', { id: 'live-status', text: live.state });
  const connectForm = h('form', { class: 'stack', 'aria-labelledby': 'live-connect' },
    h('h2', { id: 'live-connect', text: 'Connection' }),
    entries.length ? field('Broker', pick) : h('p', { class: 'muted', text: 'No broker yet: create one first.' }),
    field('WebSocket URL', url, 'The broker\'s wsEndpoint.'),
    field('Client id', clientId),
    issueNow.el,
    field('Client token', token, mayIssue ? 'Or paste a token (uncheck the box above).' : 'This role cannot issue tokens: paste one.'),
    h('div', { class: 'actions' }, connectButton, disconnectButton),
    h('p', { role: 'status' }, 'Status: ', status));
  const dev = ctx.config.devPlainWs;
  const devNote = dev ? h('div', { class: 'note' },
    h('p', { text: 'starling-dev: wss:// needs this browser to trust the dev CA, ca.pem in dev\'s data directory (the banner prints its path under CA): import it as a certificate authority (Chrome: Settings → Privacy and security → Security → Manage certificates → Authorities; Firefox: Settings → Certificates → View Certificates → Authorities).' }),
    h('p', {}, 'Or use the plain WebSocket listener on this machine: ',
      h('button', { type: 'button', class: 'secondary small', text: `Use ${dev}`, onclick: () => { url.value = dev; } }))) : null;

  connectForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const e = entries[Number(pick.value)];
    if (!e) return;
    const id = clientId.value.trim();
    let secret = token.value.trim();
    if (issueNow.box.checked) {
      const issued = await attempt('Issuing a token', () => issue(e.ns, e.b.name, { clientIds: [id], acl: '#', expiration: 3600 }), connectButton);
      if (!issued) return;
      secret = issued[0].token;
      live.jti = issued[0].jti;
      event(`token issued for ${id}: jti ${issued[0].jti}`);
      announce(`token issued: jti ${issued[0].jti}`);
    }
    if (!secret) {
      showError(new Error('a client token is needed: issue one or paste one'));
      return;
    }
    live.target = { ns: e.ns, b: e.b.name, url: url.value.trim(), clientId: id };
    connect(url.value.trim(), id, secret);
  });
  disconnectButton.addEventListener('click', () => {
    live.client?.end(false, {}, () => event('disconnected (by this page)'));
    setState('disconnected', 'by this page');
  });

  // Subscribe.
  const filter = h('input', { type: 'text', name: 'filter', spellcheck: 'false' });
  filter.value = '#';
  const subQos = qosSelect('sub-qos');
  const subscribeButton = h('button', { type: 'submit', text: 'Subscribe' });
  const subs = h('ul', { 'aria-label': 'Subscriptions' });
  const subForm = h('form', { class: 'stack', 'aria-labelledby': 'live-sub' },
    h('h2', { id: 'live-sub', text: 'Subscribe' }),
    h('div', { class: 'row' }, field('Topic filter', filter), field('QoS', subQos)),
    h('div', { class: 'actions' }, subscribeButton), subs);
  subForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    for (const f of filters(filter.value)) await subscribe(f, Number(subQos.value));
  });

  // Publish.
  const topic = h('input', { type: 'text', name: 'topic', spellcheck: 'false' });
  const payload = h('textarea', { name: 'payload', spellcheck: 'false' });
  const pubQos = qosSelect('pub-qos');
  const retain = check('Retain', { name: 'retain' });
  const props = h('textarea', { name: 'user-properties', class: 'mono', spellcheck: 'false', placeholder: 'key=value' });
  const publishButton = h('button', { type: 'submit', text: 'Publish' });
  const pubForm = h('form', { class: 'stack', 'aria-labelledby': 'live-pub' },
    h('h2', { id: 'live-pub', text: 'Publish' }),
    field('Topic', topic),
    field('Payload', payload),
    h('div', { class: 'row' }, field('QoS', pubQos), retain.el),
    field('User properties (key=value, one per line)', props),
    h('div', { class: 'actions' }, publishButton));
  pubForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let p;
    try { p = userProperties(props.value); } catch (e) { showError(e); return; }
    await publish(topic.value, payload.value, Number(pubQos.value), retain.box.checked, p);
  });

  // Messages and events.
  const asHex = check('Show payloads as hex', { name: 'hex', checked: live.showHex });
  asHex.box.addEventListener('change', () => { live.showHex = asHex.box.checked; drawMessages(); });
  const clear = h('button', { type: 'button', class: 'secondary small', text: 'Clear messages' });
  clear.addEventListener('click', () => { live.messages.length = 0; drawMessages(); });
  const messages = h('ul', { class: 'messages', 'aria-label': 'Messages received', 'aria-live': 'polite', tabindex: 0 });
  const events = h('ul', { class: 'events', 'aria-label': 'Connection events' });

  fill(main,
    h('h1', { text: 'Live client' }),
    h('p', { class: 'muted', text: 'MQTT 5 over WebSockets from this page (MQTT.js), to the broker\'s real endpoint.' }),
    devNote,
    h('div', { class: 'two' }, connectForm, h('section', { 'aria-labelledby': 'live-events' }, h('h2', { id: 'live-events', text: 'Events' }), events)),
    h('div', { class: 'two' }, subForm, pubForm),
    h('section', { 'aria-labelledby': 'live-messages' },
      h('h2', { id: 'live-messages', text: 'Messages' }),
      h('div', { class: 'row' }, asHex.el, clear),
      messages));
  live.view = { status, events, messages, subs, connect: connectButton, disconnect: disconnectButton, subscribe: subscribeButton, publish: publishButton };
  onLeave(() => { live.view = null; });
  setState(live.state, live.detail);
  drawEvents();
  drawSubscriptions();
  drawMessages();
}

function qosSelect(name) {
  return h('select', { name }, [0, 1, 2].map((q) => h('option', { value: q, text: `${q}` })));
}
