// The web console (`/console/`, served by the api) in headless Chromium against `starling-api
// dev`: the real api binary with its embedded broker, driven only through the page as a user
// would (labels, buttons, the confirmation dialog), with real MQTT clients: MQTT.js in the page
// over wss:// (the browser trusts the dev CA through an NSS database, certificate errors never
// ignored) and mosquitto_pub over mqtts:// with the dev CA.
//
// It shows: sign-in with the token kept in the tab's sessionStorage only; a namespace and a
// broker created and edited through the forms (an api error shown with its message); tokens
// issued with copy buttons, snippets and their records; the in-page client connecting with a
// token issued on the spot, subscribing, publishing with QoS, retain and user properties and
// seeing the message (also one from mosquitto_pub); a refused SUBSCRIBE and PUBLISH shown with
// their reason codes; a revocation cutting the in-page client off with 0x87, then lifted; a key
// rotation with its retire time; live health charts; the audit log filtered; a read-role token
// seeing no write control; a phone-width screen without sideways scrolling; deletion behind a
// confirmation. Every main screen is saved as a screenshot (STARLING_CONSOLE_ARTIFACTS) and
// checked with axe-core (pinned in package.json), which must find nothing serious or critical.
// No Content-Security-Policy violation or page error may happen along the way.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdirSync } from 'node:fs';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { startDev } from './lib/dev.mjs';
import { launchChromium } from './lib/chromium.mjs';
import { within, run } from './lib/util.mjs';

const STEP_MS = 20000;
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const ARTIFACTS = process.env.STARLING_CONSOLE_ARTIFACTS ?? join(root, 'test-output', 'console');

const ns = `console-${process.pid}`;
const brokerName = 'sensors';
const liveId = `live-${process.pid}`;

let dev, browser, page;
const problems = [];
const axeFindings = [];

const within_ = (p, what) => within(p, what, STEP_MS);

/** Native api call with the admin token. */
async function api(method, path, body, token = dev.info.adminToken) {
  const headers = { authorization: `Bearer ${token}` };
  if (body) headers['content-type'] = 'application/json';
  const resp = await fetch(`${dev.info.apiUrl}/v1${path}`, {
    method, headers, body: body ? JSON.stringify(body) : undefined, signal: AbortSignal.timeout(STEP_MS),
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : null };
}

function watch(p, label) {
  p.on('console', (m) => {
    // Chromium logs every 4xx answer; the api errors the test provokes on purpose are checked
    // where they happen.
    if (m.type() === 'error' && !/^Failed to load resource: the server responded with a status of 4\d\d/.test(m.text())) {
      problems.push(`${label} console: ${m.text()}`);
    }
  });
  p.on('pageerror', (e) => problems.push(`${label} page error: ${e.message}`));
}

/** Saves a screenshot of the current screen and runs axe-core on it. */
async function screen(p, name) {
  await p.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
  // evaluate() runs through the DevTools protocol, which the page's CSP does not govern; a
  // <script> tag with axe inline would (rightly) be refused.
  if (!await p.evaluate(() => typeof window.axe === 'object')) await p.evaluate(AXE);
  const result = await p.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  for (const v of result.violations) {
    if (v.impact === 'serious' || v.impact === 'critical') {
      axeFindings.push(`${name}: ${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join('; ')}`);
    }
  }
}

async function go(hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
}

const alertText = () => page.locator('#alert-text').textContent();

/** Waits for a line of the live client's event list; fails naming the lines there were. */
async function waitEvent(p, text) {
  try {
    await p.locator('.events li', { hasText: text }).first().waitFor();
  } catch (e) {
    throw new Error(`no event ${text}; the events were:\n${(await p.locator('.events li').allTextContents()).join('\n')}`);
  }
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  dev = await startDev();
  browser = await launchChromium({ ca: dev.info.ca });
  await browser.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: dev.info.apiUrl });
  page = await browser.context.newPage();
  await page.setViewportSize({ width: 1280, height: 900 });
  watch(page, 'admin');
  page.setDefaultTimeout(STEP_MS);
});

after(async () => {
  console.log(`screenshots: ${ARTIFACTS}`);
  await browser?.close();
  await dev?.stop();
});

test('the console is served with a strict Content-Security-Policy and the pinned MQTT.js', async () => {
  const resp = await fetch(`${dev.info.apiUrl}/console/`);
  assert.equal(resp.status, 200);
  const csp = resp.headers.get('content-security-policy');
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self';/);
  assert.match(csp, new RegExp(`connect-src 'self' wss://localhost:${dev.info.wss} ws://127\\.0\\.0\\.1:\\d+;`));
  assert.doesNotMatch(csp, /unsafe/);
  assert.equal(resp.headers.get('x-content-type-options'), 'nosniff');
  const redirect = await fetch(`${dev.info.apiUrl}/console`, { redirect: 'manual' });
  assert.equal(redirect.status, 308);
  assert.equal(redirect.headers.get('location'), '/console/');
  // The vendored bundle is byte for byte the one of the mqtt version package-lock.json pins.
  const served = Buffer.from(await (await fetch(`${dev.info.apiUrl}/console/vendor/mqtt.esm.js`)).arrayBuffer());
  assert.ok(served.equals(readFileSync(join(root, 'tests/node/node_modules/mqtt/dist/mqtt.esm.js'))));
  assert.ok(served.equals(readFileSync(join(root, 'api/console/vendor/mqtt.esm.js'))));
});

test('dev prints the console URL', () => {
  assert.match(dev.banner, new RegExp(`Console\\s+${dev.info.apiUrl.replace(/\./g, '\\.')}/console/`));
});

test('a wrong token is refused with the api\'s message', async () => {
  await page.goto(`${dev.info.apiUrl}/console/`);
  await page.getByLabel('API token').fill('sat_not-a-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#alert:not([hidden])').waitFor();
  assert.match(await alertText(), /HTTP 401, code 10000/);
  await screen(page, '01-sign-in');
});

test('signing in shows the namespaces and keeps the token in this tab\'s sessionStorage only', async () => {
  await page.getByLabel('API token').fill(dev.info.adminToken);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Namespaces', level: 1 }).waitFor();
  assert.match(await page.locator('#who').textContent(), /\(admin\)/);
  const stored = await page.evaluate(() => ({
    session: sessionStorage.getItem('starling.console.token'),
    local: localStorage.length,
    cookie: document.cookie,
  }));
  assert.deepEqual(stored, { session: dev.info.adminToken, local: 0, cookie: '' });
  await page.getByRole('link', { name: 'demo' }).waitFor();
  await screen(page, '02-namespaces');
});

test('a namespace and a broker are created through the forms', async () => {
  await page.getByLabel('Name', { exact: true }).fill(ns);
  await page.getByLabel('Description').fill('made by the console test');
  await page.getByRole('button', { name: 'Create namespace' }).click();
  await page.getByRole('heading', { name: `Namespace ${ns}` }).waitFor();
  await page.getByLabel('Name', { exact: true }).fill(brokerName);
  await page.getByLabel('Token lifetime ceiling (seconds)').fill('7200');
  await page.getByRole('button', { name: 'Create broker' }).click();
  await page.getByRole('heading', { name: `Broker ${brokerName}` }).waitFor();
  const b = await api('GET', `/namespaces/${ns}/brokers/${brokerName}`);
  assert.equal(b.status, 200);
  assert.equal(b.body.expiration, 7200);
  assert.equal(b.body.wsEndpoint, `wss://localhost:${dev.info.wss}/mqtt`);
  await screen(page, '03-broker-settings');
});

test('editing a broker saves its fields, and a bad value shows the api\'s message', async () => {
  await page.getByLabel('On-publish hook URL').fill('ftp://hooks.example.com/in');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.locator('#alert:not([hidden])').waitFor();
  assert.match(await alertText(), /on_publish\.url.*must be an absolute https:\/\/.*HTTP 400/);
  await page.getByLabel('On-publish hook URL').fill('');
  await page.getByLabel('Description').fill('edited in the console');
  await page.getByLabel('Limits (JSON object)').fill('{"max_connections": 50}');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.locator('#alert').waitFor({ state: 'hidden' });
  await page.getByLabel('Description').and(page.locator('textarea')).waitFor();
  await within_((async () => {
    for (;;) {
      const b = (await api('GET', `/namespaces/${ns}/brokers/${brokerName}`)).body;
      if (b.description === 'edited in the console') return b;
      await new Promise((r) => setTimeout(r, 50));
    }
  })(), 'the description saved');
  const b = (await api('GET', `/namespaces/${ns}/brokers/${brokerName}`)).body;
  assert.deepEqual(b.limits, { maxConnections: 50 }, 'stored with the limits table\'s keys');
  assert.equal(b.on_publish, undefined);
});

test('issuing tokens shows each with copy buttons, snippets and its record', async () => {
  await page.getByRole('link', { name: 'Tokens' }).click();
  await page.getByLabel('Client ids (one per line)').fill('console-a\nconsole-b');
  await page.getByRole('button', { name: 'Issue tokens' }).click();
  await page.getByRole('heading', { name: '2 token(s) issued' }).waitFor();
  const cards = page.locator('.issued');
  assert.equal(await cards.count(), 2);
  const token = (await cards.first().locator('pre.token').textContent()).trim();
  assert.match(token, /^eyJ[\w-]+\.[\w-]+\.[\w-]+$/);
  assert.match(await cards.first().textContent(), /mosquitto_sub -h localhost -p \d+ --cafile ca\.pem -V 5 -i 'console-a'/);
  assert.match(await cards.first().textContent(), /mqtt\.connect\('wss:\/\/localhost:\d+\/mqtt'/);
  await cards.first().getByRole('button', { name: 'Copy token' }).click();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), token);
  const jti = (await cards.first().locator('code.jti').textContent()).trim();
  await page.locator(`tr[data-jti="${jti}"]`).waitFor();
  assert.match(await page.locator(`tr[data-jti="${jti}"]`).textContent(), /console-a.*valid/);
  await screen(page, '04-tokens');
});

test('the in-page client connects over wss with a token issued on the spot, publishes and sees the message', async () => {
  await page.getByRole('link', { name: 'Live client' }).click();
  await page.getByRole('heading', { name: 'Live client' }).waitFor();
  await page.getByLabel('Broker').selectOption({ label: `${ns} / ${brokerName}` });
  assert.equal(await page.getByLabel('WebSocket URL').inputValue(), `wss://localhost:${dev.info.wss}/mqtt`);
  await page.getByLabel('Client id', { exact: true }).fill(liveId);
  await page.getByRole('button', { name: 'Connect', exact: true }).click();
  await page.locator('#live-status', { hasText: 'connected: CONNACK 0x00 Success' }).waitFor();
  await page.getByLabel('Topic filter').fill('console/#');
  await page.getByLabel('QoS').first().selectOption('1');
  await page.getByRole('button', { name: 'Subscribe', exact: true }).click();
  await waitEvent(page, 'subscribed console/#: SUBACK 0x01 Granted QoS 1');
  await page.getByLabel('Topic', { exact: true }).fill('console/page');
  await page.getByLabel('Payload', { exact: true }).fill('hello from the page');
  await page.locator('select[name="pub-qos"]').selectOption('1');
  await page.getByLabel('Retain').check();
  await page.getByLabel('User properties (key=value, one per line)').fill('source=console\nrun=1');
  await page.getByRole('button', { name: 'Publish', exact: true }).click();
  await waitEvent(page, 'published to console/page, acknowledged: 0x00 Success');
  const msg = page.locator('.message', { hasText: 'hello from the page' });
  await msg.waitFor();
  assert.match(await msg.textContent(), /console\/page · QoS 1/);
  assert.match(await msg.textContent(), /userProperties: \{"source":"console","run":"1"\}/);
  await page.getByLabel('Show payloads as hex').check();
  await page.locator('.message', { hasText: '68 65 6c 6c 6f 20 66 72 6f 6d' }).first().waitFor();
  await page.getByLabel('Show payloads as hex').uncheck();
  await screen(page, '05-live-client');
  // The top of the screen alone, the size the README shows.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(ARTIFACTS, '05-live-client-top.png') });
});

test('a message mosquitto_pub sends over mqtts with the dev CA arrives in the page', async () => {
  const issued = await api('GET', `/namespaces/${ns}/brokers/${brokerName}/credentials?topicAcl=%23&clientid=mosquitto-${process.pid}`);
  assert.equal(issued.status, 200);
  const text = `hello from mosquitto ${Date.now()}`;
  const pub = run('mosquitto_pub', [
    '-h', 'localhost', '-p', String(dev.info.mqtts), '--cafile', dev.info.ca, '-V', '5', '-q', '1',
    '-i', `mosquitto-${process.pid}`, '-u', 'x', '-P', issued.body[`mosquitto-${process.pid}`],
    '-t', 'console/mosquitto', '-m', text,
  ]);
  assert.equal(await within_(pub.done, 'mosquitto_pub'), 0, pub.output());
  await page.locator('.message', { hasText: text }).waitFor();
});

test('revoking the in-page client\'s token disconnects it with 0x87, and the revocation can be lifted', async () => {
  await go(`#/ns/${ns}/b/${brokerName}/tokens`);
  await page.getByLabel('Client id', { exact: true }).fill(liveId);
  await page.getByRole('button', { name: 'Filter' }).click();
  const row = page.locator('tr', { hasText: liveId });
  await row.getByRole('button', { name: /^Revoke / }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
  await page.locator('tr', { hasText: liveId }).locator('.badge.revoked').waitFor();
  await page.getByRole('link', { name: 'Live client' }).click();
  await page.locator('#live-status', { hasText: 'disconnected: by the broker, 0x87 Not authorized' }).waitFor();
  await waitEvent(page, 'disconnected by the broker: 0x87 Not authorized');
  await go(`#/ns/${ns}/b/${brokerName}/tokens`);
  await page.getByLabel('Client id', { exact: true }).fill(liveId);
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.locator('tr', { hasText: liveId }).getByRole('button', { name: /^Unrevoke / }).first().click();
  await page.locator('tr', { hasText: liveId }).locator('.badge', { hasText: 'valid' }).first().waitFor();
  assert.deepEqual((await api('GET', `/namespaces/${ns}/brokers/${brokerName}/revocations`)).body, []);
});

test('a refused subscription and a refused publish show their reason codes', async () => {
  const id = `narrow-${process.pid}`;
  const acl = encodeURIComponent(JSON.stringify({ pub: ['console/allowed'], sub: ['console/allowed'] }));
  const issued = await api('GET', `/namespaces/${ns}/brokers/${brokerName}/credentials?topicAcl=${acl}&clientid=${id}`);
  await page.getByRole('link', { name: 'Live client' }).click();
  await page.getByRole('heading', { name: 'Live client' }).waitFor();
  await page.getByLabel('Client id', { exact: true }).fill(id);
  await page.getByLabel(/^Issue a token/).uncheck();
  await page.getByLabel('Client token').fill(issued.body[id]);
  await page.getByRole('button', { name: 'Connect', exact: true }).click();
  await page.locator('#live-status', { hasText: 'connected: CONNACK 0x00 Success' }).waitFor();
  await page.getByLabel('Topic filter').fill('console/secret');
  await page.getByRole('button', { name: 'Subscribe', exact: true }).click();
  await waitEvent(page, /subscribe console\/secret refused: (SUBACK )?0x87 Not authorized/);
  await page.getByLabel('Topic', { exact: true }).fill('console/secret');
  await page.locator('select[name="pub-qos"]').selectOption('1');
  await page.getByRole('button', { name: 'Publish', exact: true }).click();
  await waitEvent(page, /publish to console\/secret refused: 0x87 Not authorized/);
});

test('rotating keys shows the next, current and retiring keys with the retire time', async () => {
  await go(`#/ns/${ns}/b/${brokerName}/keys`);
  await page.locator('.badge.current').waitFor();
  assert.equal(await page.locator('.badge.next').count(), 1);
  assert.equal(await page.locator('.badge.retiring').count(), 0);
  const oldCurrent = (await page.locator('tr', { has: page.locator('.badge.current') }).locator('td').nth(1).textContent()).trim();
  await page.getByLabel('Retire the old key after (seconds)').fill('600');
  await page.getByRole('button', { name: 'Rotate keys' }).click();
  assert.match(await page.getByRole('dialog').textContent(), /keep working for 10 min/);
  await page.getByRole('dialog').getByRole('button', { name: 'Rotate' }).click();
  await page.locator('.note', { hasText: 'Rotated: new tokens are signed by the new current key now' }).waitFor();
  const retiring = page.locator('tr', { has: page.locator('.badge.retiring') });
  assert.equal((await retiring.locator('td').nth(1).textContent()).trim(), oldCurrent);
  assert.match(await retiring.locator('td').nth(3).textContent(), /\(in (9 min|10 min)/);
  await screen(page, '06-keys');
});

test('health shows live charts of the embedded broker', async () => {
  await go(`#/ns/${ns}/b/${brokerName}/health`);
  await page.getByRole('heading', { name: 'Messages in' }).waitFor();
  // The page polls every 2 s; the messages above make the inbound rate non-zero somewhere.
  await page.waitForFunction(() => Number((document.querySelector('section[aria-label="Messages in"] svg')
    ?.getAttribute('aria-label') ?? '').match(/at most ([\d.]+)/)?.[1] ?? 0) > 0, null, { timeout: STEP_MS });
  assert.match(await page.locator('main').textContent(), /one embedded broker serves every broker/);
  assert.ok(await page.locator('section[aria-label="Connections"] polyline').count() === 1);
  await screen(page, '07-health');
});

test('the audit log lists what the console did and filters by action', async () => {
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.getByRole('heading', { name: 'Audit log' }).waitFor();
  await page.getByLabel('Action').selectOption('keys.rotate');
  const rows = page.locator('tbody tr');
  assert.ok(await rows.count() >= 1);
  for (const text of await rows.allTextContents()) assert.match(text, /keys\.rotate/);
  await page.getByLabel('Action').selectOption('');
  await page.getByLabel('Actor or target contains').fill(ns);
  await page.locator('tbody tr', { hasText: 'broker.create' }).waitFor();
  for (const text of await rows.allTextContents()) assert.ok(text.includes(ns), text);
  await screen(page, '08-audit');
});

test('a read-role token sees no write control anywhere', async () => {
  const created = await api('POST', '/tokens', { name: 'console-reader', role: 'read' });
  assert.equal(created.status, 201);
  // A new tab: sessionStorage is per tab, so it starts signed out.
  const reader = await browser.context.newPage();
  watch(reader, 'reader');
  reader.setDefaultTimeout(STEP_MS);
  try {
    await reader.goto(`${dev.info.apiUrl}/console/`);
    await reader.getByLabel('API token').waitFor();
    await reader.getByLabel('API token').fill(created.body.token);
    await reader.getByRole('button', { name: 'Sign in' }).click();
    await reader.getByRole('heading', { name: 'Namespaces', level: 1 }).waitFor();
    const writeControls = () => reader.locator('main').locator('button.danger, button:has-text("Create"), button:has-text("Save"), button:has-text("Issue"), button:has-text("Rotate"), button:has-text("Revoke"), button:has-text("Unrevoke")').count();
    assert.equal(await writeControls(), 0, 'namespaces');
    assert.equal(await reader.getByRole('link', { name: 'Audit log' }).isVisible(), false);
    for (const tab of ['settings', 'tokens', 'keys', 'health']) {
      await reader.evaluate((h) => { location.hash = h; }, `#/ns/${ns}/b/${brokerName}/${tab}`);
      await reader.locator('.tabs a[aria-current="page"]').waitFor();
      await reader.waitForFunction(() => !document.getElementById('main').hasAttribute('aria-busy'));
      assert.equal(await writeControls(), 0, tab);
      assert.equal(await reader.locator('form input:not([name="clientid-filter"]), form textarea, form select').count(), 0, `${tab}: no editable form`);
    }
    await reader.evaluate(() => { location.hash = '#/live'; });
    await reader.getByLabel(/^Issue a token/).waitFor();
    assert.equal(await reader.getByLabel(/^Issue a token/).isDisabled(), true);
    await screen(reader, '09-read-role');
  } finally {
    await reader.close();
  }
});

test('a phone-width screen shows every section without sideways scrolling', async () => {
  const phone = await browser.context.newPage();
  watch(phone, 'phone');
  phone.setDefaultTimeout(STEP_MS);
  await phone.setViewportSize({ width: 390, height: 844 });
  try {
    await phone.goto(`${dev.info.apiUrl}/console/`);
    await phone.getByLabel('API token').fill(dev.info.adminToken);
    await phone.getByRole('button', { name: 'Sign in' }).click();
    await phone.getByRole('heading', { name: 'Namespaces', level: 1 }).waitFor();
    for (const [hash, name] of [['#/namespaces', 'namespaces'], [`#/ns/${ns}/b/${brokerName}/tokens`, 'tokens'], ['#/live', 'live']]) {
      await phone.evaluate((h) => { location.hash = h; }, hash);
      await phone.waitForFunction(() => !document.getElementById('main').hasAttribute('aria-busy'));
      await phone.locator('main h1, main h2').first().waitFor();
      const { scroll, width } = await phone.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: window.innerWidth }));
      assert.ok(scroll <= width, `${name}: page is ${scroll}px wide in a ${width}px screen`);
      await screen(phone, `10-phone-${name}`);
    }
  } finally {
    await phone.close();
  }
});

test('deleting the broker and the namespace asks first, and cancel keeps them', async () => {
  await go(`#/ns/${ns}/b/${brokerName}/settings`);
  await page.getByRole('button', { name: `Delete broker ${brokerName}` }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
  assert.equal((await api('GET', `/namespaces/${ns}/brokers/${brokerName}`)).status, 200);
  await page.getByRole('button', { name: `Delete broker ${brokerName}` }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('heading', { name: `Namespace ${ns}` }).waitFor();
  await page.getByText('No broker yet.').waitFor();
  assert.equal((await api('GET', `/namespaces/${ns}/brokers/${brokerName}`)).status, 404);
  await page.getByRole('button', { name: `Delete namespace ${ns}` }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('heading', { name: 'Namespaces', level: 1 }).waitFor();
  assert.equal((await api('GET', `/namespaces/${ns}`)).status, 404);
});

test('axe-core finds nothing serious or critical on any screen', () => {
  assert.deepEqual(axeFindings, []);
});

test('no Content-Security-Policy violation or page error happened', () => {
  assert.deepEqual(problems, []);
});
