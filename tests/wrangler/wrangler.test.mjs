// Cloudflare's CLI, unchanged, against `starling-dev`: every `wrangler pubsub` subcommand with
// only the environment `dev` prints for it (CLOUDFLARE_API_BASE_URL, CLOUDFLARE_API_TOKEN,
// CLOUDFLARE_ACCOUNT_ID), and again without the account id (the CLI then finds it through
// /memberships) and with X-Auth-Key instead of a bearer token. Tokens the CLI issued publish and
// subscribe with mosquitto_pub and mosquitto_sub over mqtts at the broker endpoint the CLI shows,
// trusting the dev CA, through an on-publish hook the CLI set. The CLI runs with a loopback-only
// guard (loopback-only.cjs): any connection elsewhere fails the tests.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';
import { startDev } from '../node/lib/dev.mjs';
import { freePorts, run, until, within } from '../node/lib/util.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const WRANGLER = resolve(here, 'node_modules/.bin/wrangler');
const GUARD = resolve(here, 'loopback-only.cjs');
const STEP_MS = 60000;

let dev;
let work;
let cfEnv;
let hook;
const hookMessages = [];

/** The `export CLOUDFLARE_...=...` lines `dev` printed, as an environment. */
function cloudflareEnv(banner) {
  const env = {};
  for (const m of banner.matchAll(/^\s*export (CLOUDFLARE_[A-Z_]+)=(\S+)\s*$/gm)) env[m[1]] = m[2];
  assert.deepEqual(Object.keys(env).sort(), ['CLOUDFLARE_ACCOUNT_ID', 'CLOUDFLARE_API_BASE_URL', 'CLOUDFLARE_API_TOKEN'],
    `dev printed the three variables:\n${banner}`);
  return env;
}

/**
 * Runs `wrangler ...args` with `cloudflare` as its whole configuration, from a directory with no
 * node_modules above it (so no cached account), a fresh HOME, telemetry and error reports off, an
 * npm registry on a closed loopback port for its update check, and the loopback-only guard.
 */
async function wrangler(args, cloudflare = cfEnv) {
  const env = {
    PATH: process.env.PATH,
    HOME: join(work, 'home'),
    XDG_CONFIG_HOME: join(work, 'home/.config'),
    TMPDIR: join(work, 'tmp'),
    WRANGLER_SEND_METRICS: 'false',
    WRANGLER_SEND_ERROR_REPORTS: 'false',
    WRANGLER_LOG_PATH: join(work, 'logs'),
    NO_COLOR: '1',
    FORCE_COLOR: '0',
    NODE_OPTIONS: `--require ${GUARD}`,
    STARLING_NETWORK_LOG: join(work, 'network.log'),
    ...cloudflare,
  };
  const p = run(WRANGLER, args, { cwd: join(work, 'cwd'), env });
  const code = await within(p.done, `wrangler ${args.join(' ')}`, STEP_MS);
  return { code, out: p.output() };
}

/** wrangler ...args, which must succeed; its output. */
async function ok(args, cloudflare) {
  const r = await wrangler(args, cloudflare);
  assert.equal(r.code, 0, `wrangler ${args.join(' ')} exited ${r.code}:\n${r.out}`);
  return r.out;
}

/** The value wrangler logged: util.inspect's JavaScript literal, from its first line that opens
 * with `{` or `[` to the first line where it parses. */
function logged(out) {
  const lines = out.split('\n');
  const start = lines.findIndex((l) => /^[[{]/.test(l));
  assert.ok(start >= 0, `no value in the output:\n${out}`);
  for (let end = start + 1; end <= lines.length; end += 1) {
    try {
      const value = vm.runInNewContext(`(${lines.slice(start, end).join('\n')})`, Object.create(null), { timeout: 1000 });
      // Plain data of this realm, so that deepStrictEqual compares it with literals here.
      return JSON.parse(JSON.stringify(value));
    } catch {
      // Not complete yet.
    }
  }
  assert.fail(`the value in the output does not parse:\n${out}`);
}

/** The claims of a JWT (unverified: the broker verifies it when the token connects). */
function claims(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
}

before(async () => {
  assert.ok(existsSync(WRANGLER), `${WRANGLER} is missing: npm ci in tests/wrangler`);
  work = mkdtempSync(join(tmpdir(), 'starling-wrangler-'));
  for (const d of ['home/.config', 'tmp', 'logs', 'cwd']) mkdirSync(join(work, d), { recursive: true });
  // wrangler's update check asks the npm registry named by .npmrc: a loopback port nothing
  // listens on, so it fails at once without leaving the machine.
  const [closed] = await freePorts(1);
  writeFileSync(join(work, 'cwd/.npmrc'), `registry=http://127.0.0.1:${closed}/\n`);
  // An on-publish hook that approves every message unchanged and keeps what it was sent.
  hook = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      hookMessages.push(...JSON.parse(body));
      res.writeHead(200, { 'content-type': 'application/json' }).end(body);
    });
  });
  await new Promise((res) => hook.listen(0, '127.0.0.1', res));
  dev = await startDev();
  cfEnv = cloudflareEnv(dev.banner);
});

after(async () => {
  await dev?.stop();
  await new Promise((res) => (hook ? hook.close(res) : res()));
  if (work) rmSync(work, { recursive: true, force: true });
});

const NS = 'wr-ns';
const BROKER = 'wr-broker';
const ns = ['--namespace', NS];
let endpoint;
let tokens;

test('namespace create, list and describe', async () => {
  const out = await ok(['pubsub', 'namespace', 'create', NS, '--description', 'made by wrangler']);
  assert.match(out, /Success! Created Pub\/Sub Namespace wr-ns/);
  const listed = logged(await ok(['pubsub', 'namespace', 'list']));
  assert.deepEqual(listed.map((n) => n.name).sort(), ['demo', NS]);
  const described = logged(await ok(['pubsub', 'namespace', 'describe', NS]));
  assert.equal(described.name, NS);
  assert.equal(described.description, 'made by wrangler');
  assert.match(described.id, /^[0-9a-f]{32}$/);
  assert.match(described.created_on, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
});

test('broker create, update, list and describe', async () => {
  const url = `http://127.0.0.1:${hook.address().port}/hook`;
  const created = logged(await ok(['pubsub', 'broker', 'create', BROKER, ...ns,
    '--description', 'first', '--expiration', '1d', '--on-publish-url', url]));
  assert.equal(created.name, BROKER);
  assert.equal(created.authType, 'TOKEN');
  assert.equal(created.auth_type, 'TOKEN');
  assert.equal(created.expiration, 86400);
  assert.deepEqual(created.on_publish, { url });
  endpoint = new URL(created.endpoint);
  assert.equal(endpoint.protocol, 'mqtts:');
  assert.equal(`${endpoint.hostname}:${endpoint.port}`, `localhost:${dev.info.mqtts}`,
    'the endpoint is the mqtts listener, by the name the dev certificate covers');

  const out = await ok(['pubsub', 'broker', 'update', BROKER, ...ns, '--description', 'second', '--expiration', '2h']);
  assert.match(out, /Successfully updated Pub\/Sub Broker wr-broker/);
  const updated = logged(out);
  assert.equal(updated.description, 'second');
  assert.equal(updated.expiration, 7200);
  assert.deepEqual(updated.on_publish, { url }, 'what update leaves out stays');

  const listed = logged(await ok(['pubsub', 'broker', 'list', ...ns]));
  assert.deepEqual(listed.map((b) => b.name), [BROKER]);
  const described = logged(await ok(['pubsub', 'broker', 'describe', BROKER, ...ns]));
  assert.equal(described.id, created.id);
  assert.equal(described.description, 'second');
  assert.equal(described.endpoint, created.endpoint);
});

test('broker issue and public-keys: tokens for the given client ids, signed by a published key', async () => {
  let out = await ok(['pubsub', 'broker', 'issue', BROKER, ...ns, '--client-id', 'wr-sub', '--client-id', 'wr-pub']);
  assert.match(out, /Issuing credential\(s\) for wr-broker\.wr-ns/);
  tokens = logged(out);
  assert.deepEqual(Object.keys(tokens).sort(), ['wr-pub', 'wr-sub'], 'one token per --client-id (wrangler sends number=1)');
  const generated = logged(await ok(['pubsub', 'broker', 'issue', BROKER, ...ns, '--number', '3', '--expiration', '1h']));
  assert.equal(Object.keys(generated).length, 3);
  for (const [id, jwt] of Object.entries(generated)) {
    assert.match(id, /^[0-9A-Z]{26}$/, 'ULID client ids');
    const c = claims(jwt);
    assert.equal(c.sub, id);
    assert.equal(c.exp - c.iat, 3600);
  }
  out = await ok(['pubsub', 'broker', 'public-keys', BROKER, ...ns]);
  const { keys } = logged(out);
  assert.equal(keys.length, 3, 'the current and next token keys, and the hook key');
  for (const k of keys) {
    assert.deepEqual([k.kty, k.crv, k.alg, k.use], ['OKP', 'Ed25519', 'EdDSA', 'sig']);
    assert.equal(k.d, undefined, 'never a private part');
  }
  const kid = JSON.parse(Buffer.from(tokens['wr-sub'].split('.')[0], 'base64url').toString()).kid;
  assert.ok(keys.some((k) => k.kid === kid), 'the tokens name a published key');
  for (const [id, jwt] of Object.entries(tokens)) {
    const c = claims(jwt);
    assert.equal(c.sub, id);
    assert.ok(c.exp - c.iat <= 7200, 'the broker expiration is a ceiling');
  }
});

/** Publishes `message` with the token of `wr-pub` until the subscriber has it. */
async function publishUntilReceived(sub, message) {
  await until(async () => {
    if (sub.output().includes(`wr/hello ${message}`)) return true;
    const p = run('mosquitto_pub', mqttArgs('wr-pub', tokens['wr-pub']).concat(['-t', 'wr/hello', '-m', message, '-q', '1']));
    const code = await within(p.done, 'mosquitto_pub', 30000);
    assert.equal(code, 0, `mosquitto_pub failed:\n${p.output()}`);
    return sub.output().includes(`wr/hello ${message}`);
  }, `the subscriber receiving ${message}`, 30000, 200);
}

function mqttArgs(clientId, token) {
  return ['-h', endpoint.hostname, '-p', endpoint.port, '--cafile', dev.info.ca, '-V', '5',
    '-i', clientId, '-u', 'anything', '-P', token];
}

test('tokens wrangler issued publish and subscribe with mosquitto over mqtts, through the hook it set', async () => {
  const sub = run('mosquitto_sub', mqttArgs('wr-sub', tokens['wr-sub']).concat(['-t', 'wr/#', '-v', '-q', '1', '-C', '1', '-W', '60']));
  try {
    await publishUntilReceived(sub, 'hello-from-wrangler-tokens');
  } finally {
    sub.child.kill();
  }
  const seen = hookMessages.find((m) => m.topic === 'wr/hello');
  assert.ok(seen, 'the message went through the on-publish hook');
  assert.equal(seen.broker, `${BROKER}.${NS}.localhost`, 'the hook names the broker by its hostname');
  assert.equal(seen.clientId, 'wr-pub');
  assert.equal(seen.jti, claims(tokens['wr-pub']).jti);
});

test('broker revoke, show-revocations and unrevoke reach the broker', async () => {
  const jti = claims(tokens['wr-pub']).jti;
  let out = await ok(['pubsub', 'broker', 'revoke', BROKER, ...ns, '--jti', jti]);
  assert.match(out, /Revoked 1 credential\(s\)\./);
  out = await ok(['pubsub', 'broker', 'show-revocations', BROKER, ...ns]);
  assert.match(out, /Listing previously revoked tokens for wr-broker/);
  assert.deepEqual(logged(out), [jti]);
  // The revoked token is refused at CONNECT.
  await until(async () => {
    const p = run('mosquitto_pub', mqttArgs('wr-pub', tokens['wr-pub']).concat(['-t', 'wr/hello', '-m', 'refused']));
    return (await within(p.done, 'mosquitto_pub', 30000)) !== 0;
  }, 'the revoked token refused', 10000, 200);

  out = await ok(['pubsub', 'broker', 'unrevoke', BROKER, ...ns, '--jti', jti]);
  assert.match(out, /Unrevoked 1 credential\(s\)/);
  assert.deepEqual(logged(await ok(['pubsub', 'broker', 'show-revocations', BROKER, ...ns])), []);
  const sub = run('mosquitto_sub', mqttArgs('wr-sub', tokens['wr-sub']).concat(['-t', 'wr/#', '-v', '-q', '1', '-C', '1', '-W', '60']));
  try {
    await publishUntilReceived(sub, 'after-unrevoke');
  } finally {
    sub.child.kill();
  }
});

test('without CLOUDFLARE_ACCOUNT_ID the CLI finds the account through /memberships', async () => {
  const { CLOUDFLARE_ACCOUNT_ID: account, ...noAccount } = cfEnv;
  const listed = logged(await ok(['pubsub', 'namespace', 'list'], noAccount));
  assert.ok(listed.some((n) => n.name === NS), 'the same account');
  const described = logged(await ok(['pubsub', 'broker', 'describe', BROKER, ...ns], noAccount));
  assert.equal(described.name, BROKER);
  // whoami reads /user/tokens/verify, /user and /accounts.
  const out = await ok(['whoami'], noAccount);
  assert.ok(out.includes(account), `whoami shows the account id:\n${out}`);
});

test('X-Auth-Key and X-Auth-Email (CLOUDFLARE_API_KEY, CLOUDFLARE_EMAIL) instead of a bearer token', async () => {
  const { CLOUDFLARE_API_TOKEN: token, ...rest } = cfEnv;
  const keyed = { ...rest, CLOUDFLARE_API_KEY: token, CLOUDFLARE_EMAIL: 'ops@example.com' };
  const described = logged(await ok(['pubsub', 'namespace', 'describe', NS], keyed));
  assert.equal(described.name, NS);
});

test("failures show the api's message and code as wrangler renders Cloudflare's", async () => {
  let r = await wrangler(['pubsub', 'namespace', 'create', 'demo']);
  assert.notEqual(r.code, 0);
  assert.match(r.out, /the namespace name "demo" is taken \[code: 10005\]/);
  r = await wrangler(['pubsub', 'namespace', 'list'], { ...cfEnv, CLOUDFLARE_API_TOKEN: 'sat_not-a-token' });
  assert.notEqual(r.code, 0);
  assert.match(r.out, /Authentication error \[code: 10000\]/);
  r = await wrangler(['pubsub', 'broker', 'describe', 'missing', ...ns]);
  assert.notEqual(r.code, 0);
  assert.match(r.out, /broker not found \[code: 10004\]/);
});

test('broker delete and namespace delete', async () => {
  let out = await ok(['pubsub', 'broker', 'delete', BROKER, ...ns]);
  assert.match(out, /Deleted Pub\/Sub Broker wr-broker\./);
  assert.deepEqual(logged(await ok(['pubsub', 'broker', 'list', ...ns])), []);
  out = await ok(['pubsub', 'namespace', 'delete', NS]);
  assert.match(out, /Deleted namespace wr-ns\./);
  const listed = logged(await ok(['pubsub', 'namespace', 'list']));
  assert.deepEqual(listed.map((n) => n.name), ['demo']);
});

test('the CLI reached nothing but loopback', () => {
  const log = join(work, 'network.log');
  const reached = existsSync(log) ? readFileSync(log, 'utf8') : '';
  assert.equal(reached, '', `wrangler tried to leave the machine:\n${reached}`);
});
