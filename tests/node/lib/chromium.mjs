// Headless Chromium (Debian's /usr/bin/chromium driven by playwright-core) that trusts a given CA
// through an NSS database in its own $HOME (certutil), as a user would import it; certificate
// errors are never ignored. Plus a loopback HTTP server for a test page and MQTT.js.
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const nodeDir = join(dirname(fileURLToPath(import.meta.url)), '..');
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync',
];

/**
 * Launches Chromium with a fresh $HOME and profile; with `ca`, the NSS database in that $HOME
 * (Chromium on Linux reads $HOME/.pki/nssdb) trusts it for TLS servers.
 * @returns {Promise<{context: import('playwright-core').BrowserContext, close: () => Promise<void>}>}
 */
export async function launchChromium({ ca } = {}) {
  const home = mkdtempSync(join(tmpdir(), 'starling-chromium-home-'));
  const profile = mkdtempSync(join(tmpdir(), 'starling-chromium-profile-'));
  if (ca) {
    const nssdb = join(home, '.pki', 'nssdb');
    mkdirSync(nssdb, { recursive: true });
    execFileSync('certutil', ['-N', '-d', `sql:${nssdb}`, '--empty-password']);
    execFileSync('certutil', ['-A', '-d', `sql:${nssdb}`, '-n', 'starling-dev-ca', '-t', 'C,,', '-i', ca]);
  }
  const removeDirs = () => { for (const d of [home, profile]) rmSync(d, { recursive: true, force: true }); };
  // Also when the process ends without closing the browser (a timeout's SIGTERM).
  process.once('exit', removeDirs);
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      chromiumSandbox: false,
      args: ARGS,
      env: { ...process.env, HOME: home },
    });
  } catch (e) {
    process.off('exit', removeDirs);
    removeDirs();
    throw e;
  }
  const close = async () => {
    await context.close().catch(() => {});
    process.off('exit', removeDirs);
    removeDirs();
  };
  return { context, close };
}

/**
 * Serves `html` at `/` and MQTT.js's browser bundle at `/mqtt.min.js` on loopback.
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
export async function servePage(html) {
  const mqttJs = readFileSync(join(nodeDir, 'node_modules', 'mqtt', 'dist', 'mqtt.min.js'));
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(html);
    } else if (path === '/favicon.ico') {
      res.writeHead(204).end();
    } else if (path === '/mqtt.min.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(mqttJs);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((res) => server.listen(0, '127.0.0.1', res));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    close: () => new Promise((res) => { server.closeAllConnections?.(); server.close(() => res()); }),
  };
}
