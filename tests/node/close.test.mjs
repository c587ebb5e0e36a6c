// MQTT.js in Node ends its connection over ws:// and wss:// 200 times in a row: never an `error`
// event (on the client or its WebSocket), and every time the broker's close frame (1000) arrives
// before the TCP connection ends. The WebSocket is made by the test (MQTT.js's createWebsocket
// option, with the same `ws` library MQTT.js uses) only to see its errors, its socket's errors
// (a reset) and its close code.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import mqtt from 'mqtt';
import WebSocket from 'ws';
import { startBroker } from './lib/broker.mjs';
import { within } from './lib/util.mjs';

const ROUNDS = 200;
const STEP_MS = 10000;

let broker;
let ca;
before(async () => {
  broker = await startBroker();
  ca = readFileSync(broker.ca);
});
after(async () => { await broker?.stop(); });

/**
 * Connects, publishes one QoS 1 message and ends, ROUNDS times. Errors are collected from every
 * client and WebSocket for the whole run, so a late one of an early round is seen too.
 */
async function endRepeatedly(url, opts, label) {
  const errors = [];
  const codes = new Map();
  for (let i = 0; i < ROUNDS; i += 1) {
    let ws;
    const client = mqtt.connect(url, {
      reconnectPeriod: 0,
      connectTimeout: STEP_MS,
      ...opts,
      createWebsocket: (u, protocols, o) => {
        ws = new WebSocket(u, protocols, o.wsOptions);
        ws.on('error', (e) => errors.push(`${label} #${i} websocket: ${e.message}`));
        // The TCP (or TLS) socket itself: a reset shows here even when the WebSocket hides it.
        ws.on('upgrade', (res) => res.socket.on('error', (e) => errors.push(`${label} #${i} socket: ${e.code ?? e.message}`)));
        return ws;
      },
    });
    client.on('error', (e) => errors.push(`${label} #${i} client: ${e.message}`));
    await within(new Promise((res, rej) => {
      client.once('connect', res);
      client.once('close', () => rej(new Error(`${label} #${i}: closed before CONNACK`)));
    }), `${label} #${i} connect`, STEP_MS);
    const code = new Promise((res) => ws.once('close', (c) => res(c)));
    await within(client.publishAsync(`node/close/${label}`, `round ${i}`, { qos: 1 }), `${label} #${i} publish`, STEP_MS);
    await within(client.endAsync(), `${label} #${i} end`, STEP_MS);
    const c = await within(code, `${label} #${i} websocket close`, STEP_MS);
    codes.set(c, (codes.get(c) ?? 0) + 1);
  }
  assert.deepEqual(errors, [], `${label}: error events`);
  assert.deepEqual([...codes], [[1000, ROUNDS]], `${label}: close codes seen by the client`);
}

test(`MQTT 5 over ws:// ends ${ROUNDS} times without an error`, async () => {
  await endRepeatedly(broker.urls.ws, { protocolVersion: 5 }, 'ws5');
});

test(`MQTT 3.1.1 over ws:// ends ${ROUNDS} times without an error`, async () => {
  await endRepeatedly(broker.urls.ws, { protocolVersion: 4 }, 'ws311');
});

test(`MQTT 5 over wss:// ends ${ROUNDS} times without an error`, async () => {
  await endRepeatedly(broker.urls.wss, { protocolVersion: 5, ca }, 'wss5');
});
