// End to end through `starling-dev`: the real api binary (SQLite, its embedded broker with the
// mqtt/ws/mqtts/wss listeners and the dev CA), driven only through the Cloudflare-compatible REST
// routes, with real MQTT clients: MQTT.js in headless Chromium over wss:// (trusting the dev CA
// through an NSS database, certificate errors never ignored), mosquitto_pub over mqtts:// with
// --cafile, and MQTT.js in Node over mqtts:// with the CA.
//
// It shows: the mosquitto commands `dev` prints work when pasted; a namespace and a broker made through /client/v4/accounts/{account}/pubsub; two
// tokens issued for it; a message from mosquitto_pub reaching the page; tenant isolation between
// the new broker and `demo`; a revoked jti disconnected within 1 s and refused, then let back in
// after the revocation is lifted; a key rotation keeping old tokens working until the old key
// retires while new tokens work at once, and old tokens refused after retirement, their
// connections closed (0x87); a deleted broker's clients disconnected. Every step runs under a deadline; the only bounded wait is the
// isolation check, which must see nothing arrive.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { startDev } from './lib/dev.mjs';
import { launchChromium, servePage } from './lib/chromium.mjs';
import { within, until, run } from './lib/util.mjs';

const STEP_MS = 20000;
// `dev` serves the api's bootstrap account (api/src/config.rs, `bootstrap_account`).
const ACCOUNT = '00000000000000000000000000000001';
// Shortest retirement the test asks for: long enough to show old tokens still work, short enough
// for the tier; the embedded broker drops retired keys on its next 5 s resync.
const RETIRE_AFTER_SECS = 4;
const RESYNC_SECS = 5;
// The isolation check waits this long for a message that must not arrive.
const ABSENCE_MS = 750;
const NOT_AUTHORIZED = 0x87;
const BAD_CREDENTIALS = 0x86;

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>Starling end to end</title></head>
<body>
<h1>Starling end to end</h1>
<p>status: <span id="status">loading</span></p>
<ul id="messages"></ul>
<script src="/mqtt.min.js"></script>
<script>
  const status = (s) => { document.getElementById('status').textContent = s; };
  window.e2e = { messages: [], closedAt: null, disconnectReason: null };
  // Connects (replacing any earlier client) and subscribes; resolves with what happened.
  window.connectAndSubscribe = (url, clientId, token, filter) => new Promise((resolve) => {
    if (window.client) window.client.end(true);
    window.e2e.closedAt = null;
    window.e2e.disconnectReason = null;
    const client = mqtt.connect(url, {
      protocolVersion: 5, clientId, username: 'e2e', password: token,
      reconnectPeriod: 0, connectTimeout: 10000, clean: true,
    });
    window.client = client;
    client.on('connect', () => client.subscribe(filter, { qos: 1 }, (err, granted) => {
      status(err ? 'subscribe failed' : 'subscribed');
      resolve(err ? { ok: false, error: err.message } : { ok: true, granted: granted.map((g) => g.qos) });
    }));
    client.on('message', (topic, payload) => {
      window.e2e.messages.push(topic + ' ' + payload.toString());
      const li = document.createElement('li');
      li.textContent = topic + ' ' + payload.toString();
      document.getElementById('messages').appendChild(li);
    });
    client.on('disconnect', (packet) => { window.e2e.disconnectReason = packet.reasonCode; });
    client.on('error', (e) => { status('error: ' + e.message); resolve({ ok: false, error: e.message, code: e.code }); });
    client.on('close', () => {
      if (client !== window.client) return;
      window.e2e.closedAt = Date.now();
      if (!document.getElementById('status').textContent.startsWith('error')) status('closed');
      resolve({ ok: false, error: 'closed before subscribing' });
    });
  });
</script>
</body></html>`;

let dev, browser, server, page;
const nodeClients = [];
const ns = `e2e-${process.pid}`;
const brokerName = 'sensors';
const topic = `e2e/${process.pid}/readings`;
const subId = `sub-${process.pid}`;
const pubId = `pub-${process.pid}`;
let subToken, pubToken, rotatedToken, rotatedId;

function claims(token) {
  const [header, payload] = token.split('.').slice(0, 2)
    .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  return { ...payload, kid: header.kid, alg: header.alg };
}

/** A call without a body to the Cloudflare-compatible routes; checks the v4 envelope, returns `result`. */
async function cf(method, path, { expectStatus = 200 } = {}) {
  const url = `${dev.info.apiUrl}/client/v4/accounts/${ACCOUNT}/pubsub${path}`;
  const headers = { authorization: `Bearer ${dev.info.adminToken}` };
  const resp = await fetch(url, { method, headers, signal: AbortSignal.timeout(STEP_MS) });
  const text = await resp.text();
  assert.equal(resp.status, expectStatus, `${method} ${path}: ${resp.status} ${text}`);
  const envelope = JSON.parse(text);
  assert.equal(envelope.success, expectStatus < 300, `${method} ${path}: ${text}`);
  if (expectStatus < 300) assert.deepEqual(envelope.errors, []);
  return envelope.result;
}

async function cfJson(path, json) {
  const url = `${dev.info.apiUrl}/client/v4/accounts/${ACCOUNT}/pubsub${path}`;
  const resp = await fetch(url, {
    method: 'POST',
    headers: { authorization: `Bearer ${dev.info.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(json),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const text = await resp.text();
  assert.equal(resp.status, 200, `POST ${path}: ${resp.status} ${text}`);
  const envelope = JSON.parse(text);
  assert.equal(envelope.success, true, text);
  assert.deepEqual(envelope.errors, []);
  return envelope.result;
}

const brokerPath = () => `/namespaces/${ns}/brokers/${brokerName}`;

/** Issues tokens for the new broker, one per client id. */
async function issue(...clientIds) {
  const q = new URLSearchParams({ number: String(clientIds.length), type: 'TOKEN', topicAcl: '#' });
  for (const id of clientIds) q.append('clientid', id);
  const result = await cf('GET', `${brokerPath()}/credentials?${q}`);
  assert.deepEqual(Object.keys(result).sort(), [...clientIds].sort());
  return clientIds.map((id) => result[id]);
}

/** mosquitto_pub over mqtts:// with the dev CA; resolves with its exit code and output. */
async function mosquittoPub(clientId, token, text) {
  const pub = run('mosquitto_pub', [
    '-h', 'localhost', '-p', String(dev.info.mqtts), '--cafile', dev.info.ca,
    '-V', '5', '-q', '1', '-i', clientId, '-u', 'e2e', '-P', token, '-t', topic, '-m', text,
  ]);
  const code = await within(pub.done, 'mosquitto_pub', STEP_MS);
  return { code, output: pub.output() };
}

/**
 * MQTT.js in Node over mqtts:// trusting the dev CA. Resolves with the connected client, or with
 * `{refused: reasonCode}` when the CONNACK refuses it.
 */
function connectNode(clientId, token) {
  return within(new Promise((resolve) => {
    const client = mqtt.connect(`mqtts://localhost:${dev.info.mqtts}`, {
      protocolVersion: 5, clientId, username: 'e2e', password: token, ca: readFileSync(dev.info.ca),
      reconnectPeriod: 0, connectTimeout: 10000, clean: true,
    });
    nodeClients.push(client);
    client.e2e = { messages: [], closedAt: null, disconnectReason: null };
    client.on('message', (t, p) => client.e2e.messages.push(`${t} ${p}`));
    client.on('disconnect', (packet) => { client.e2e.disconnectReason = packet.reasonCode; });
    client.on('close', () => { client.e2e.closedAt = Date.now(); resolve({ refused: 'closed' }); });
    client.on('connect', () => resolve({ client }));
    client.on('error', (e) => resolve({ refused: e.code, message: e.message }));
  }), `MQTT.js connect as ${clientId}`, STEP_MS);
}

/** What a connectNode result says, for assertion messages. */
const why = (r) => (r.client ? 'connected' : `refused (${r.refused}) ${r.message ?? ''}`);

const pageConnect = (token, clientId = subId) => within(
  page.evaluate(([url, id, tok, filter]) => window.connectAndSubscribe(url, id, tok, filter),
    [`wss://localhost:${dev.info.wss}/mqtt`, clientId, token, topic]),
  'page connect', STEP_MS);
const pageState = () => page.evaluate(() => window.e2e);
const pageGot = (text) => page.locator('#messages li', { hasText: text }).waitFor({ timeout: STEP_MS });

before(async () => {
  dev = await startDev();
  browser = await launchChromium({ ca: dev.info.ca });
  server = await servePage(PAGE);
  page = await browser.context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log('page console:', m.text()); });
  await page.goto(server.url);
});

after(async () => {
  for (const c of nodeClients) c.end(true);
  await browser?.close();
  await server?.close();
  if (dev) {
    if (process.exitCode) console.log(`dev output (last 40 lines):\n${dev.logs.slice(-40).join('\n')}`);
    await dev.stop();
  }
});

test('dev starts on the free ports it was given and prints its tokens and CA', { timeout: STEP_MS }, async () => {
  assert.equal(dev.info.apiUrl, `http://127.0.0.1:${dev.ports.api}`);
  assert.equal(dev.info.mqtts, dev.ports.mqtts);
  assert.equal(dev.info.wss, dev.ports.wss);
  assert.equal(dev.info.ca, join(dev.dataDir, 'ca.pem'));
  assert.match(readFileSync(dev.info.ca, 'utf8'), /-----BEGIN CERTIFICATE-----/);
  assert.equal(statSync(join(dev.dataDir, 'admin-token')).mode & 0o777, 0o600);
  assert.equal(readFileSync(join(dev.dataDir, 'admin-token'), 'utf8').trim(), dev.info.adminToken);
  const demo = claims(dev.info.clientToken);
  assert.equal(demo.alg, 'EdDSA');
  assert.equal(demo.sub, 'demo-client');
});

test('the mosquitto commands the banner prints work as printed', { timeout: STEP_MS }, async () => {
  const lines = dev.banner.split('\n');
  const after = (heading, n) => {
    const i = lines.findIndex((l) => l.startsWith(heading));
    assert.ok(i >= 0, `no "${heading}" in the banner`);
    return lines.slice(i + 1, i + 1 + n).map((l) => l.trim());
  };
  const [subLine] = after('Subscribe with mosquitto', 1);
  const pubLines = after('Publish with a second token', 2);
  assert.match(subLine, /^mosquitto_sub /);
  assert.match(pubLines[0], /^TOKEN=\$\(curl /);
  assert.match(pubLines[1], /^mosquitto_pub /);
  // The printed line, plus: stop after one message or 15 s, and print the SUBACK (-d).
  const sub = run('stdbuf', ['-oL', 'bash', '-c', `${subLine} -C 1 -W 15 -d`]);
  try {
    await within(new Promise((res) => {
      const check = () => { if (/SUBACK/.test(sub.output())) res(); };
      sub.child.stdout.on('data', check);
      sub.child.stderr.on('data', check);
      check();
    }), `the printed mosquitto_sub subscribes: ${sub.output()}`, STEP_MS);
    const pub = run('bash', ['-euo', 'pipefail', '-c', pubLines.join('\n')]);
    assert.equal(await within(pub.done, 'the printed curl and mosquitto_pub', STEP_MS), 0, pub.output());
    assert.equal(await within(sub.done, 'the printed mosquitto_sub receives', STEP_MS), 0, sub.output());
    assert.match(sub.output(), /^demo\/hello hello from mosquitto$/m);
  } finally {
    sub.child.kill();
  }
});

test('a namespace, a broker and two tokens through the Cloudflare-compatible routes', { timeout: STEP_MS }, async () => {
  const namespace = await cfJson('/namespaces', { name: ns });
  assert.equal(namespace.name, ns);
  assert.match(namespace.id, /^[0-9a-f]{32}$/);
  const broker = await cfJson(`/namespaces/${ns}/brokers`, { name: brokerName, authType: 'TOKEN' });
  assert.equal(broker.name, brokerName);
  assert.equal(broker.authType, 'TOKEN');
  const listed = await cf('GET', `/namespaces/${ns}/brokers`);
  assert.deepEqual(listed.map((b) => b.name), [brokerName]);

  [subToken, pubToken] = await issue(subId, pubId);
  const sub = claims(subToken);
  const pub = claims(pubToken);
  assert.equal(sub.sub, subId);
  assert.equal(pub.sub, pubId);
  assert.notEqual(sub.jti, pub.jti);
  assert.equal(sub.topicAcl, '#');
  // Signed by the new broker's own key, not demo's.
  const { keys } = await cf('GET', `${brokerPath()}/publickeys`);
  assert.ok(keys.some((k) => k.kid === sub.kid), `kid ${sub.kid} not in ${JSON.stringify(keys)}`);
  assert.notEqual(sub.kid, claims(dev.info.clientToken).kid);
});

test('MQTT.js in Chromium over wss:// receives what mosquitto_pub sends over mqtts://', { timeout: STEP_MS }, async () => {
  // The embedded broker learns of the new broker from the store's change feed: allow it 1 s.
  const r = await until(async () => { const c = await pageConnect(subToken); return c.ok && c; },
    'the page connects with a token of the new broker', 1000, 20);
  assert.deepEqual(r, { ok: true, granted: [1] });
  const text = `first reading ${Date.now()}`;
  const pub = await mosquittoPub(pubId, pubToken, text);
  assert.equal(pub.code, 0, pub.output);
  await pageGot(text);
});

test("a token of broker demo sees nothing of the new broker's topics, and the other way round", { timeout: STEP_MS }, async () => {
  const demo = await connectNode('demo-client', dev.info.clientToken);
  assert.ok(demo.client, `demo token: ${why(demo)}`);
  await within(demo.client.subscribeAsync(topic, { qos: 1 }), 'demo subscribe', STEP_MS);

  // Through the new broker: the page gets it (so it was delivered), demo must not.
  const fromNew = `new broker only ${Date.now()}`;
  const pub = await mosquittoPub(pubId, pubToken, fromNew);
  assert.equal(pub.code, 0, pub.output);
  await pageGot(fromNew);
  // Through demo: demo's own subscription gets it (so it was delivered), the page must not.
  const fromDemo = `demo only ${Date.now()}`;
  await within(demo.client.publishAsync(topic, fromDemo, { qos: 1 }), 'demo publish', STEP_MS);
  await until(() => demo.client.e2e.messages.includes(`${topic} ${fromDemo}`), 'demo receives its own message', STEP_MS);
  // The one bounded wait: anything crossing tenants would have arrived by now.
  await new Promise((res) => setTimeout(res, ABSENCE_MS));
  assert.deepEqual(demo.client.e2e.messages, [`${topic} ${fromDemo}`]);
  assert.ok(!(await pageState()).messages.some((m) => m.includes(fromDemo)));
  await within(demo.client.endAsync(), 'demo disconnect', STEP_MS);
});

test('a revoked jti is disconnected within 1 s and refused; lifting the revocation lets it back in', { timeout: 2 * STEP_MS }, async (t) => {
  const { jti } = claims(subToken);
  assert.equal((await pageState()).closedAt, null, 'the page is connected');

  assert.equal(await cf('POST', `${brokerPath()}/revocations?jti=${encodeURIComponent(jti)}`), null);
  const revokedAt = Date.now();
  const closedAt = await until(async () => (await pageState()).closedAt, 'the page is disconnected', 5000, 20);
  const latency = closedAt - revokedAt;
  t.diagnostic(`revocation to the page's close event: ${latency} ms`);
  assert.ok(latency <= 1000, `disconnected ${latency} ms after the revocation response`);
  assert.equal((await pageState()).disconnectReason, NOT_AUTHORIZED);
  assert.deepEqual(await cf('GET', `${brokerPath()}/revocations`), [jti]);

  const again = await pageConnect(subToken);
  assert.equal(again.ok, false, 'a revoked token connected');
  assert.ok([NOT_AUTHORIZED, BAD_CREDENTIALS].includes(again.code), `refused with ${JSON.stringify(again)}`);
  t.diagnostic(`reconnect with the revoked token: CONNACK reason ${again.code}`);
  // The other token of the same broker is untouched.
  const other = await mosquittoPub(pubId, pubToken, `still allowed ${Date.now()}`);
  assert.equal(other.code, 0, other.output);

  assert.equal(await cf('DELETE', `${brokerPath()}/revocations?jti=${encodeURIComponent(jti)}`), null);
  assert.deepEqual(await cf('GET', `${brokerPath()}/revocations`), []);
  // The embedded broker applies the change right after the commit: allow it 1 s.
  const back = await until(async () => { const r = await pageConnect(subToken); return r.ok && r; },
    'reconnect after the revocation is lifted', 1000, 20);
  assert.deepEqual(back, { ok: true, granted: [1] });
  const text = `after unrevoke ${Date.now()}`;
  const pub = await mosquittoPub(pubId, pubToken, text);
  assert.equal(pub.code, 0, pub.output);
  await pageGot(text);
});

test('after a key rotation old tokens work until the old key retires and new tokens work at once', { timeout: 3 * STEP_MS }, async (t) => {
  const oldKid = claims(pubToken).kid;
  const rotation = await cf('POST', `${brokerPath()}/keys/rotate?retire_after=${RETIRE_AFTER_SECS}`);
  assert.equal(rotation.retiringKid, oldKid);
  assert.notEqual(rotation.currentKid, oldKid);
  const retireAtMs = rotation.retireAt * 1000;
  const kidsNow = (await cf('GET', `${brokerPath()}/publickeys`)).keys.map((k) => k.kid);
  for (const kid of [oldKid, rotation.currentKid, rotation.nextKid]) assert.ok(kidsNow.includes(kid), `${kid} not published`);

  rotatedId = `rotated-${process.pid}`;
  [rotatedToken] = await issue(rotatedId);
  assert.equal(claims(rotatedToken).kid, rotation.currentKid);
  const fresh = await connectNode(rotatedId, rotatedToken);
  assert.ok(fresh.client, `a token issued after the rotation: ${why(fresh)}`);
  await within(fresh.client.subscribeAsync(topic, { qos: 1 }), 'subscribe with the new token', STEP_MS);

  const text = `old key still verifies ${Date.now()}`;
  const old = await mosquittoPub(pubId, pubToken, text);
  const checkedAt = Date.now();
  assert.ok(checkedAt < retireAtMs, `inconclusive: the old-token check ran ${checkedAt - retireAtMs} ms after retirement`);
  assert.equal(old.code, 0, `an old token was refused before its key retired: ${old.output}`);
  await pageGot(text);
  await until(() => fresh.client.e2e.messages.includes(`${topic} ${text}`), 'the new-token client receives it', STEP_MS);

  // After retireAt the broker drops the key on its next resync: old tokens are refused.
  const deadline = RETIRE_AFTER_SECS * 1000 + RESYNC_SECS * 1000 + 5000;
  const refused = await until(async () => {
    const r = await mosquittoPub(pubId, pubToken, `after retirement ${Date.now()}`);
    return r.code !== 0 && { at: Date.now(), output: r.output };
  }, 'an old token refused after the key retired', deadline, 250);
  t.diagnostic(`old token first refused ${refused.at - retireAtMs} ms after retireAt`);
  // retireAt has one-second resolution.
  assert.ok(refused.at >= retireAtMs - 1000, `refused ${retireAtMs - refused.at} ms before retireAt`);
  assert.match(refused.output, /not authori[sz]ed|bad user name or password|Connection Refused/i);

  const kidsLater = (await cf('GET', `${brokerPath()}/publickeys`)).keys.map((k) => k.kid);
  assert.ok(!kidsLater.includes(oldKid), 'the retired key is still published');
  assert.ok(kidsLater.includes(rotation.currentKid));

  // The page was let in by the old key: its connection is closed (0x87) when the key retires,
  // and its session ends, so a retired key lets nothing through any more.
  const pageClosed = await until(async () => (await pageState()).closedAt, 'the old-key page is disconnected', STEP_MS, 20);
  t.diagnostic(`old-key page disconnected ${pageClosed - retireAtMs} ms after retireAt`);
  assert.equal((await pageState()).disconnectReason, NOT_AUTHORIZED);

  // The new key keeps working: for the Node client, and for the page back with a new token.
  const [newSubToken] = await issue(subId);
  assert.equal(claims(newSubToken).kid, rotation.currentKid);
  const back = await pageConnect(newSubToken);
  assert.ok(back.ok, `the page with a new token: ${JSON.stringify(back)}`);
  const later = `new key after retirement ${Date.now()}`;
  await within(fresh.client.publishAsync(topic, later, { qos: 1 }), 'publish with the new token', STEP_MS);
  await pageGot(later);
});

test("deleting the broker disconnects its clients, in the browser and in Node, within 1 s", { timeout: STEP_MS }, async (t) => {
  const node = nodeClients.find((c) => c.options.clientId === rotatedId && c.connected);
  assert.ok(node, 'the client with the new token is connected');
  assert.equal((await pageState()).closedAt, null, 'the page is connected');

  assert.equal(await cf('DELETE', brokerPath()), null);
  const deletedAt = Date.now();
  const pageClosed = await until(async () => (await pageState()).closedAt, 'the page is disconnected', 5000, 20);
  const nodeClosed = await until(() => node.e2e.closedAt, 'the Node client is disconnected', 5000, 20);
  t.diagnostic(`deletion to close: page ${pageClosed - deletedAt} ms, Node ${nodeClosed - deletedAt} ms`);
  assert.ok(pageClosed - deletedAt <= 1000, `page closed ${pageClosed - deletedAt} ms after the deletion`);
  assert.ok(nodeClosed - deletedAt <= 1000, `Node client closed ${nodeClosed - deletedAt} ms after the deletion`);
  assert.equal((await pageState()).disconnectReason, NOT_AUTHORIZED);
  assert.equal(node.e2e.disconnectReason, NOT_AUTHORIZED);

  await cf('GET', brokerPath(), { expectStatus: 404 });
  const again = await connectNode(rotatedId, rotatedToken);
  assert.ok(!again.client, 'a token of a deleted broker connected');
  // demo is unaffected.
  const demo = await connectNode('demo-client', dev.info.clientToken);
  assert.ok(demo.client, `demo token after another broker was deleted: ${why(demo)}`);
  await within(demo.client.endAsync(), 'demo disconnect', STEP_MS);
});
