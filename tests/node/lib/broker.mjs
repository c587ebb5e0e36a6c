// Starts the starling-broker binary on loopback with every listener kind on port 0 and the dev
// CA (--dev-tls), reads the bound addresses from its JSON log, and stops it again.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import readline from 'node:readline';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export function brokerBinary() {
  return process.env.STARLING_BROKER_BIN ?? join(root, 'target/debug/starling-broker');
}

/**
 * @returns {Promise<{urls: Record<string,string>, ports: Record<string,number>, ca: string,
 *   dir: string, logs: string[], stop: () => Promise<void>}>}
 */
export async function startBroker({ timeoutMs = 30000 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'starling-node-'));
  const devTls = join(dir, 'dev-tls');
  const args = [
    '--mqtt', '127.0.0.1:0', '--mqtts', '127.0.0.1:0', '--ws', '127.0.0.1:0', '--wss', '127.0.0.1:0',
    '--dev-tls', devTls, '--http', '127.0.0.1:0', '--auth', 'none',
  ];
  const child = spawn(brokerBinary(), args, {
    env: { ...process.env, STARLING_BROKER__LOG__FORMAT: 'json', RUST_LOG: process.env.RUST_LOG ?? 'info', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs = [];
  const ports = {};
  let exited = null;
  const exit = new Promise((res) => child.once('exit', (code, signal) => { exited = { code, signal }; res(exited); }));
  const ready = new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`broker not ready within ${timeoutMs} ms:\n${logs.join('\n')}`)), timeoutMs);
    const onLine = (line) => {
      logs.push(line);
      let entry;
      try { entry = JSON.parse(line); } catch { return; }
      const f = entry.fields ?? {};
      if (f.message === 'listening' && f.listener && f.addr) ports[f.listener] = Number(f.addr.split(':').pop());
      if (f.http_addr) ports.http = Number(String(f.http_addr).split(':').pop());
      if (['mqtt', 'mqtts', 'ws', 'wss', 'http'].every((k) => ports[k])) { clearTimeout(timer); res(); }
    };
    readline.createInterface({ input: child.stdout }).on('line', onLine);
    readline.createInterface({ input: child.stderr }).on('line', onLine);
    exit.then((e) => { clearTimeout(timer); rej(new Error(`broker exited early (${JSON.stringify(e)}):\n${logs.join('\n')}`)); });
  });
  await ready;
  const urls = {
    mqtt: `mqtt://127.0.0.1:${ports.mqtt}`,
    mqtts: `mqtts://localhost:${ports.mqtts}`,
    ws: `ws://127.0.0.1:${ports.ws}/mqtt`,
    wss: `wss://localhost:${ports.wss}/mqtt`,
    http: `http://127.0.0.1:${ports.http}`,
  };
  const stop = async () => {
    if (!exited) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 15000);
      await exit;
      clearTimeout(killer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  return { urls, ports, ca: join(devTls, 'ca.pem'), dir, logs, stop };
}
