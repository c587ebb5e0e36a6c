// Starts `starling-dev` on free loopback ports with a fresh data directory, parses the banner
// it prints (API URL, admin token, client token, CA path, listener ports), waits until the api
// and the embedded broker answer /readyz, and stops the whole process group again.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import readline from 'node:readline';
import { freePorts, until } from './util.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export function devBinary() {
  return process.env.STARLING_DEV_BIN ?? join(root, 'target/debug/starling-dev');
}

/** Reads the values `dev` prints; throws naming what is missing. */
export function parseBanner(text) {
  const grab = (re, what) => {
    const m = text.match(re);
    if (!m) throw new Error(`the banner has no ${what}:\n${text}`);
    return m[1];
  };
  return {
    apiUrl: grab(/^\s*API\s+(http:\/\/\S+)/m, 'API URL'),
    adminToken: grab(/^\s*admin token\s+(\S+)/m, 'admin token'),
    clientToken: grab(/^\s*client token\s+(\S+)/m, 'client token'),
    ca: grab(/^\s*CA\s+(\S+)/m, 'CA path'),
    mqtts: Number(grab(/mqtts:\/\/localhost:(\d+)/, 'mqtts port')),
    wss: Number(grab(/wss:\/\/localhost:(\d+)\/mqtt/, 'wss port')),
  };
}

/**
 * @returns {Promise<{info: ReturnType<typeof parseBanner>, ports: Record<string, number>,
 *   dataDir: string, logs: string[], exited: () => object|null, stop: () => Promise<void>}>}
 */
export async function startDev({ timeoutMs = 30000 } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'starling-dev-'));
  const [api, internal, mqtt, ws, mqtts, wss, brokerHttp] = await freePorts(7);
  const ports = { api, internal, mqtt, ws, mqtts, wss, brokerHttp };
  const at = (p) => `127.0.0.1:${p}`;
  const args = [
    '--data-dir', dataDir, '--api-addr', at(api), '--internal-addr', at(internal),
    '--mqtt', at(mqtt), '--ws', at(ws), '--mqtts', at(mqtts), '--wss', at(wss), '--broker-http', at(brokerHttp),
  ];
  // Its own process group, so stopping it stops everything it started.
  const child = spawn(devBinary(), args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const logs = [];
  const stdout = [];
  let exited = null;
  const exit = new Promise((res) => child.once('exit', (code, signal) => { exited = { code, signal }; res(exited); }));
  readline.createInterface({ input: child.stderr }).on('line', (l) => logs.push(l));
  // Also when this process ends without running its `after` hooks (a timeout's SIGTERM, ^C).
  const killGroup = () => { if (!exited) { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } } };
  const onSignal = (sig) => {
    killGroup();
    rmSync(dataDir, { recursive: true, force: true });
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('exit', killGroup);
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  const stop = async () => {
    if (!exited) {
      try { process.kill(-child.pid, 'SIGTERM'); } catch { /* already gone */ }
      const killer = setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }, 10000);
      await exit;
      clearTimeout(killer);
    }
    process.off('exit', killGroup);
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    rmSync(dataDir, { recursive: true, force: true });
  };
  try {
    // The banner ends with the curl line for more tokens.
    const banner = await new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`dev printed no banner within ${timeoutMs} ms:\n${logs.join('\n')}`)), timeoutMs);
      readline.createInterface({ input: child.stdout }).on('line', (line) => {
        stdout.push(line);
        logs.push(line);
        if (/^More tokens:/.test(stdout.at(-2) ?? '') && /curl /.test(line)) { clearTimeout(timer); res(stdout.join('\n')); }
      });
      exit.then((e) => { clearTimeout(timer); rej(new Error(`dev exited early (${JSON.stringify(e)}):\n${logs.join('\n')}`)); });
    });
    const info = parseBanner(banner);
    const ready = async (url) => (await fetch(url, { signal: AbortSignal.timeout(2000) })).ok;
    await until(() => ready(`${info.apiUrl}/readyz`), 'api /readyz', timeoutMs);
    await until(() => ready(`http://${at(brokerHttp)}/readyz`), 'broker /readyz', timeoutMs);
    return { info, ports, dataDir, banner, logs, exited: () => exited, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
