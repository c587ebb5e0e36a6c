// Small helpers shared by the Node test files: deadlines, child processes, free ports.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';

/** Resolves with `promise`, or rejects with "timed out: what" after `ms`. */
export function within(promise, what, ms) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timed out: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/** Polls `check` (sync or async, truthy = done) until it holds or `ms` pass; returns its value. */
export async function until(check, what, ms, everyMs = 50) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out: ${what}${last ? ` (last error: ${last.message})` : ''}`);
    await new Promise((res) => setTimeout(res, everyMs));
  }
}

/** Runs a command, collecting stdout and stderr together. */
export function run(cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const done = new Promise((res) => child.once('exit', (code) => res(code)));
  return { child, done, output: () => out };
}

/** `n` distinct loopback ports that were free a moment ago (bound to port 0, then released). */
export async function freePorts(n) {
  const servers = [];
  try {
    for (let i = 0; i < n; i += 1) {
      const s = createServer();
      await new Promise((res, rej) => { s.once('error', rej); s.listen(0, '127.0.0.1', res); });
      servers.push(s);
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((res) => s.close(res))));
  }
}
