// Headless Chromium (Debian's /usr/bin/chromium driven by playwright-core) loads a page served on
// loopback that loads MQTT.js from the npm package, connects to the broker over wss:// with MQTT
// 5 and subscribes. mosquitto_pub publishes over TLS on the mqtts listener and the page shows the
// message; then the page publishes and mosquitto_sub, over TLS, receives it.
//
// The browser trusts the broker's dev CA through an NSS database in its $HOME (certutil), as a
// user would import it; certificate errors are never ignored.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startBroker } from './lib/broker.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const STEP_MS = 15000;
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

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

let broker, server, pageBase, context, page, home, profile;
const clientId = `browser-${process.pid}`;
const inbound = `browser/in/${process.pid}`;
const outbound = `browser/out/${process.pid}`;

function within(promise, what, ms = STEP_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timed out: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

function run(cmd, args) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const done = new Promise((res) => child.once('exit', (code) => res(code)));
  return { child, done, output: () => out };
}

before(async () => {
  broker = await startBroker();
  // An NSS database that trusts the dev CA, in a fresh $HOME (Chromium on Linux reads
  // $HOME/.pki/nssdb), and a fresh profile directory.
  home = mkdtempSync(join(tmpdir(), 'starling-chromium-home-'));
  const nssdb = join(home, '.pki', 'nssdb');
  mkdirSync(nssdb, { recursive: true });
  execFileSync('certutil', ['-N', '-d', `sql:${nssdb}`, '--empty-password']);
  execFileSync('certutil', ['-A', '-d', `sql:${nssdb}`, '-n', 'starling-dev-ca', '-t', 'C,,', '-i', broker.ca]);
  profile = mkdtempSync(join(tmpdir(), 'starling-chromium-profile-'));

  const mqttJs = readFileSync(join(here, 'node_modules', 'mqtt', 'dist', 'mqtt.min.js'));
  server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(PAGE);
    } else if (path === '/favicon.ico') {
      res.writeHead(204).end();
    } else if (path === '/mqtt.min.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(mqttJs);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((res) => server.listen(0, '127.0.0.1', res));
  pageBase = `http://127.0.0.1:${server.address().port}/`;

  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync',
    ],
    env: { ...process.env, HOME: home },
  });
  page = await context.newPage();
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
  await context?.close();
  server?.close();
  await broker?.stop();
  for (const d of [home, profile]) if (d) rmSync(d, { recursive: true, force: true });
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
  const bareHome = mkdtempSync(join(tmpdir(), 'starling-chromium-bare-'));
  const bareProfile = mkdtempSync(join(tmpdir(), 'starling-chromium-bare-profile-'));
  const bare = await chromium.launchPersistentContext(bareProfile, {
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync'],
    env: { ...process.env, HOME: bareHome },
  });
  try {
    const p = await bare.newPage();
    const query = new URLSearchParams({ url: broker.urls.wss, id: `${clientId}-bare`, sub: inbound });
    await p.goto(`${pageBase}?${query}`);
    await p.waitForFunction(() => !['loading', 'connected'].includes(document.getElementById('status').textContent),
      null, { timeout: STEP_MS });
    assert.notEqual(await p.textContent('#status'), 'subscribed');
  } finally {
    await bare.close();
    rmSync(bareHome, { recursive: true, force: true });
    rmSync(bareProfile, { recursive: true, force: true });
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
