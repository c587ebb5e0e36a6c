// Preloaded into Cloudflare's CLI by the wrangler tests (NODE_OPTIONS=--require): every outgoing
// connection that is not to loopback is refused before any DNS lookup, and written to the file
// named by STARLING_NETWORK_LOG, so the tests fail when the CLI reaches for the network
// (telemetry, update checks, error reports) instead of passing quietly on a connected machine.
'use strict';

const fs = require('node:fs');
const net = require('node:net');

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost', '[::1]']);
const log = process.env.STARLING_NETWORK_LOG;

/** The host and port a `Socket#connect` call asks for; `null` for a Unix socket. */
function destination(args) {
  let first = args[0];
  // net.connect() hands Socket#connect its arguments already normalized into an array.
  if (Array.isArray(first)) first = first[0];
  if (typeof first === 'object' && first !== null) {
    if (first.path) return null;
    return { host: first.host ?? 'localhost', port: first.port };
  }
  if (typeof first === 'string' && Number.isNaN(Number(first))) return null;
  return { host: typeof args[1] === 'string' ? args[1] : 'localhost', port: first };
}

const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function guardedConnect(...args) {
  const to = destination(args);
  if (to && !LOOPBACK.has(String(to.host).toLowerCase())) {
    const line = `${process.pid} ${to.host}:${to.port} (${process.argv.slice(2).join(' ')})\n`;
    if (log) fs.appendFileSync(log, line);
    process.nextTick(() => this.destroy(new Error(`network access refused in tests: ${to.host}:${to.port}`)));
    return this;
  }
  return connect.apply(this, args);
};
