// MQTT.js in Node against the starling-broker binary over ws://, wss:// (trusting the dev CA
// made by --dev-tls), mqtts:// and raw MQTT on the wss port; messages cross transports.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import mqtt from 'mqtt';
import { startBroker } from './lib/broker.mjs';

let broker;
let ca;
before(async () => {
  broker = await startBroker();
  ca = readFileSync(broker.ca);
});
after(async () => { await broker?.stop(); });

const STEP_MS = 10000;

function within(promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timed out: ${what}`)), STEP_MS); }),
  ]).finally(() => clearTimeout(timer));
}

async function connect(url, opts = {}) {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: STEP_MS, ...opts });
  await within(new Promise((res, rej) => {
    client.once('connect', res);
    client.once('error', rej);
    client.once('close', () => rej(new Error(`closed before CONNACK: ${url}`)));
  }), `connect ${url}`);
  return client;
}

function nextMessage(client, topic) {
  return within(new Promise((res) => {
    const on = (t, payload, packet) => {
      if (t === topic) { client.off('message', on); res({ payload: payload.toString(), packet }); }
    };
    client.on('message', on);
  }), `message on ${topic}`);
}

async function roundtrip(subUrl, pubUrl, opts, label) {
  const topic = `node/${label}/${Math.random().toString(16).slice(2)}`;
  const sub = await connect(subUrl, opts.sub);
  const pub = await connect(pubUrl, opts.pub);
  try {
    await within(sub.subscribeAsync(topic, { qos: 1 }), 'subscribe');
    const got = nextMessage(sub, topic);
    await within(pub.publishAsync(topic, `hello ${label}`, { qos: 1 }), 'publish');
    const { payload } = await got;
    assert.equal(payload, `hello ${label}`);
  } finally {
    await Promise.all([sub.endAsync(), pub.endAsync()]);
  }
}

test('MQTT 5 over ws:// publishes and receives', async () => {
  const v5 = { protocolVersion: 5 };
  await roundtrip(broker.urls.ws, broker.urls.ws, { sub: v5, pub: v5 }, 'ws5');
});

test('MQTT 3.1.1 over ws:// publishes and receives', async () => {
  const v4 = { protocolVersion: 4 };
  await roundtrip(broker.urls.ws, broker.urls.ws, { sub: v4, pub: v4 }, 'ws311');
});

test('MQTT 5 over wss:// trusting the dev CA', async () => {
  const o = { protocolVersion: 5, ca };
  await roundtrip(broker.urls.wss, broker.urls.wss, { sub: o, pub: o }, 'wss5');
});

test('wss:// without trusting the dev CA is refused by the client', async () => {
  const client = mqtt.connect(broker.urls.wss, { reconnectPeriod: 0, connectTimeout: STEP_MS });
  const err = await within(new Promise((res) => {
    client.once('error', res);
    client.once('connect', () => res(null));
  }), 'untrusted wss');
  client.end(true);
  assert.ok(err, 'an untrusted certificate must fail the connection');
  assert.match(String(err.code ?? err.message), /CERT|certificate|UNABLE|SELF_SIGNED/i);
});

test('a message crosses transports: mqtts -> wss and wss -> tcp and ws -> mqtts', async () => {
  const tls = { protocolVersion: 5, ca };
  await roundtrip(broker.urls.wss, broker.urls.mqtts, { sub: tls, pub: tls }, 'mqtts-to-wss');
  await roundtrip(broker.urls.mqtt, broker.urls.wss, { sub: { protocolVersion: 4 }, pub: tls }, 'wss-to-tcp');
  await roundtrip(broker.urls.mqtts, broker.urls.ws, { sub: tls, pub: { protocolVersion: 5 } }, 'ws-to-mqtts');
});

test('mqtts:// on the wss port speaks raw MQTT over TLS', async () => {
  const rawOnWss = `mqtts://localhost:${broker.ports.wss}`;
  const o = { protocolVersion: 5, ca };
  await roundtrip(rawOnWss, broker.urls.wss, { sub: o, pub: o }, 'raw-on-wss');
});

test('a large message over wss:// arrives whole', async () => {
  const topic = `node/large/${Date.now()}`;
  const o = { protocolVersion: 5, ca };
  const sub = await connect(broker.urls.wss, o);
  const pub = await connect(broker.urls.ws, { protocolVersion: 5 });
  try {
    await within(sub.subscribeAsync(topic, { qos: 0 }), 'subscribe');
    const got = nextMessage(sub, topic);
    const payload = 'x'.repeat(48 * 1024);
    await within(pub.publishAsync(topic, payload, { qos: 1 }), 'publish');
    assert.equal((await got).payload.length, payload.length);
  } finally {
    await Promise.all([sub.endAsync(), pub.endAsync()]);
  }
});
