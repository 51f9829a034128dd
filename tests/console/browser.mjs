// Headless Chromium for the console tests: Debian's chromium driven by playwright-core (which
// never downloads a browser of its own here), with a fresh profile per launch and the network
// features that would reach outside the machine turned off.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { repoRoot } from '../gateway/harness.mjs';

/** Where the browser is: CHROMIUM_BIN, else /usr/bin/chromium, else `chromium` on PATH. */
export function chromiumPath() {
  const candidates = [process.env.CHROMIUM_BIN, '/usr/bin/chromium', '/usr/bin/chromium-browser'];
  for (const c of candidates) if (c && fs.existsSync(c)) return c;
  const which = spawnSync('sh', ['-c', 'command -v chromium || command -v chromium-browser'], { encoding: 'utf8' });
  return which.status === 0 ? which.stdout.trim() : null;
}

/** Why the browser tests cannot run here, or false. */
export function browserSkipReason() {
  const bin = chromiumPath();
  if (!bin) return 'Chromium not found: install Debian\'s `chromium` package (scripts/test.sh does when it can) or set CHROMIUM_BIN';
  const v = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 20_000 });
  if (v.status !== 0) return `Chromium at ${bin} does not run: ${(v.stderr || v.error?.message || '').trim()}`;
  return false;
}

/** The launch flags: headless, no sandbox (containers and CI run as root), no GPU, nothing that
 * phones home (QUIC, component updates, sync, background networking), no first-run UI. */
export const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** Screenshots of a run land here (not in the source tree). */
export const screenshotDir = process.env.LIVE_SCREENSHOT_DIR ?? path.join(repoRoot, 'target', 'console-screenshots');

/**
 * Launches Chromium with a fresh --user-data-dir (Playwright passes it for a persistent
 * context) and returns {context, page, close}. `close` also deletes the profile.
 */
export async function launch({ width = 1360, height = 860 } = {}) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'live-console-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath(),
    headless: true,
    args: FLAGS,
    viewport: { width, height },
    deviceScaleFactor: 1,
    locale: 'en-US',
    timezoneId: 'UTC',
    colorScheme: 'light',
    timeout: 30_000,
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(10_000);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  return {
    context,
    page,
    problems,
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

export async function screenshot(page, name) {
  fs.mkdirSync(screenshotDir, { recursive: true });
  const file = path.join(screenshotDir, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}
