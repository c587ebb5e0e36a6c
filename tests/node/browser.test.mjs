// Headless Chromium (Debian's /usr/bin/chromium driven by playwright-core) loads a page served on
// loopback that loads MQTT.js from the npm package, connects to the broker over wss:// with MQTT
// 5 and subscribes. mosquitto_pub publishes over TLS on the mqtts listener and the page shows the
// message; then the page publishes and mosquitto_sub, over TLS, receives it.
//
// The browser trusts the broker's dev CA through an NSS database in its $HOME (certutil), as a
// user would import it; certificate errors are never ignored.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startBroker } from './lib/broker.mjs';
import { launchChromium, servePage } from './lib/chromium.mjs';
import { within as withinMs, run } from './lib/util.mjs';

const STEP_MS = 15000;

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>Starling in the browser</title></head>
<body>
<h1>Starling over wss://</h1>
<p>status: <span id="status">loading</span></p>
<ul id="messages"></ul>
<script src="/mqtt.min.js"></script>
<script>
  const params = new URLSearchParams(location.search);
  const status = (s) => { document.getElementById('status').textContent = s; };
  const client = mqtt.connect(params.get('url'), {
    protocolVersion: 5,
    clientId: params.get('id'),
    reconnectPeriod: 0,
  });
  client.on('connect', (connack) => {
    window.connack = { cmd: connack.cmd, reasonCode: connack.reasonCode, hasProperties: !!connack.properties };
    status('connected');
    client.subscribe(params.get('sub'), { qos: 1 }, (err) => status(err ? 'subscribe failed: ' + err.message : 'subscribed'));
  });
  client.on('message', (topic, payload) => {
    const li = document.createElement('li');
    li.textContent = topic + ' ' + payload.toString();
    document.getElementById('messages').appendChild(li);
  });
  client.on('error', (e) => status('error: ' + e.message));
  client.on('close', () => { if (!document.getElementById('status').textContent.startsWith('error')) status('closed'); });
  window.publish = (topic, text) => new Promise((res, rej) => client.publish(topic, text, { qos: 1 }, (e) => e ? rej(String(e)) : res('ok')));
</script>
</body></html>`;

let broker, server, pageBase, browser, page;
const clientId = `browser-${process.pid}`;
const inbound = `browser/in/${process.pid}`;
const outbound = `browser/out/${process.pid}`;

const within = (promise, what, ms = STEP_MS) => withinMs(promise, what, ms);

before(async () => {
  broker = await startBroker();
  browser = await launchChromium({ ca: broker.ca });
  server = await servePage(PAGE);
  pageBase = server.url;
  page = await browser.context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log('page console:', m.text()); });
  const query = new URLSearchParams({ url: broker.urls.wss, id: clientId, sub: inbound });
  await page.goto(`${pageBase}?${query}`);
  await page.waitForFunction(() => document.getElementById('status').textContent !== 'loading' &&
    document.getElementById('status').textContent !== 'connected', null, { timeout: STEP_MS });
  const status = await page.textContent('#status');
  assert.equal(status, 'subscribed', `the page did not subscribe: ${status}\n${broker.logs.slice(-20).join('\n')}`);
});

after(async () => {
  if (page) {
    const shot = join(tmpdir(), 'starling-browser.png');
    await page.screenshot({ path: shot }).catch(() => {});
    console.log(`screenshot: ${shot}`);
  }
  await browser?.close();
  await server?.close();
  await broker?.stop();
});

test('the page connected over wss:// with MQTT 5', async () => {
  const connack = await page.evaluate(() => window.connack);
  assert.equal(connack.cmd, 'connack');
  assert.equal(connack.reasonCode, 0);
  // MQTT.js only parses CONNACK properties for protocol version 5.
  assert.equal(connack.hasProperties, true);
});

test('without the dev CA in its NSS database the browser refuses the wss:// connection', async () => {
  // Same browser, fresh $HOME and profile without the CA: the handshake must fail, which shows
  // the test above trusts the CA and does not skip certificate checks.
  const bare = await launchChromium();
  try {
    const p = await bare.context.newPage();
    const query = new URLSearchParams({ url: broker.urls.wss, id: `${clientId}-bare`, sub: inbound });
    await p.goto(`${pageBase}?${query}`);
    await p.waitForFunction(() => !['loading', 'connected'].includes(document.getElementById('status').textContent),
      null, { timeout: STEP_MS });
    assert.notEqual(await p.textContent('#status'), 'subscribed');
  } finally {
    await bare.close();
  }
});

test('a message mosquitto_pub sends over TLS to the mqtts listener shows in the page', async () => {
  const text = `hello from mosquitto ${Date.now()}`;
  const pub = run('mosquitto_pub', [
    '-h', 'localhost', '-p', String(broker.ports.mqtts), '--cafile', broker.ca,
    '-V', '5', '-q', '1', '-i', `mosquitto-pub-${process.pid}`, '-t', inbound, '-m', text,
  ]);
  assert.equal(await within(pub.done, 'mosquitto_pub'), 0, pub.output());
  await page.locator('#messages li', { hasText: text }).waitFor({ timeout: STEP_MS });
  assert.equal(await page.locator('#messages li', { hasText: text }).count(), 1);
});

test('a message the page publishes reaches mosquitto_sub over TLS', async () => {
  const text = `hello from chromium ${Date.now()}`;
  // Line-buffered, so its debug line about the SUBACK arrives while it waits.
  const sub = run('stdbuf', [
    '-oL', 'mosquitto_sub', '-h', 'localhost', '-p', String(broker.ports.mqtts), '--cafile', broker.ca,
    '-V', '5', '-q', '1', '-i', `mosquitto-sub-${process.pid}`, '-t', outbound, '-C', '1', '-W', '20', '-d',
  ]);
  try {
    // Subscribed once the SUBACK shows in its debug output.
    await within(new Promise((res) => {
      const check = () => { if (/SUBACK/.test(sub.output())) res(); };
      sub.child.stdout.on('data', check);
      sub.child.stderr.on('data', check);
      check();
    }), 'mosquitto_sub subscribed');
    assert.equal(await page.evaluate(([t, m]) => window.publish(t, m), [outbound, text]), 'ok');
    assert.equal(await within(sub.done, 'mosquitto_sub received'), 0, sub.output());
    assert.match(sub.output(), new RegExp(text));
  } finally {
    sub.child.kill();
  }
});
