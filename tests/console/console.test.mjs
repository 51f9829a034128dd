// The operator console in a real browser: headless Chromium (Debian's, driven by playwright-core)
// against two real gateway processes sharing a real redis-server, with viewers connected through
// the official socket.io-client. The console is opened on replica-1; viewers sit on both.
//
// Covers: a wrong token refused, signing in, channels ranked by viewers across replicas, a chat
// line from the other replica arriving live, HTML in user content rendered as text, a mute from
// the console refusing the user's next line, ending a stream, replicas and config views, and the
// Content-Security-Policy (Trusted Types refuse HTML sinks). Screenshots go to
// target/console-screenshots/ (LIVE_SCREENSHOT_DIR).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, user, chan, connect, join, emitAck, nextEvent, closeAllSockets, http, freePort,
  sleep, token, bridge, OK, refusal, uid,
} from '../gateway/harness.mjs';
import { browserSkipReason, launch, screenshot } from './browser.mjs';

const redisBin = process.env.REDIS_SERVER_BIN ?? 'redis-server';
const haveRedis = spawnSync(redisBin, ['--version']).status === 0;
const skip = browserSkipReason() || (haveRedis ? false : `${redisBin} not found (scripts/test.sh installs it)`);
if (skip) console.log(`# console browser tests skipped: ${skip}`);

/** Cluster-wide numbers come from snapshots every 2 s: generous waits for a loaded CI machine. */
const LIVE_MS = 15_000;

const admin = { userId: 'ops-1', username: 'Ops One', token: token({ userId: 'ops-1', username: 'Ops One', role: 'admin' }) };
const service = token({ userId: 'backend', role: 'service' });

let dir;
let redis;
let gw1;
let gw2;
let browser;
let page;

async function startRedis(port) {
  const child = spawn(redisBin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  const deadline = Date.now() + 5000;
  while (!out.includes('Ready to accept connections')) {
    if (Date.now() > deadline) throw new Error(`redis-server did not start:\n${out}`);
    await sleep(50);
  }
  return child;
}

/** Waits until `fn(arg)`, evaluated in the page, is truthy. */
function until(fn, arg, timeout = LIVE_MS) {
  return page.waitForFunction(fn, arg, { timeout, polling: 100 });
}

/** The text of the channel list's viewer cell for `channel`, or null. */
const viewersCell = (channel) => page.locator(`#channels tbody tr[data-channel="${channel}"] td.viewers`);

/** Lines of the feed whose text contains `text`. */
const feedLine = (text) => page.locator('#feed li.line').filter({ hasText: text });

async function signIn(tok) {
  await page.goto(`${gw1.adminUrl}/console`);
  await page.fill('#token', tok);
  await page.click('#signin-submit');
}

async function openChannel(name) {
  await page.click('button[data-tab="live"]');
  await page.fill('#open-channel-name', name);
  await page.click('#open-channel button[type="submit"]');
  await page.locator('#feed-title').filter({ hasText: name }).waitFor();
  // The feed is open once its first presence event arrived.
  await page.locator('#feed-viewers').waitFor({ state: 'visible', timeout: LIVE_MS });
}

describe('the operator console in Chromium', { skip }, () => {
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-console-'));
    fs.writeFileSync(path.join(dir, 'gateway.yaml'), 'rateLimits: {messagesPerMinute: 120, giftsPerMinute: 30}\n');
    const redisPort = await freePort();
    redis = await startRedis(redisPort);
    const prefix = uid('console').replace(/-/g, '_');
    const replica = (pod) => startGateway({
      config: path.join(dir, 'gateway.yaml'),
      env: { REDIS_URL: `redis://127.0.0.1:${redisPort}`, LIVE_REDIS_PREFIX: prefix, POD_NAME: pod },
    });
    gw1 = await replica('replica-1');
    gw2 = await replica('replica-2');
    browser = await launch();
    page = browser.page;
  });

  after(async () => {
    closeAllSockets();
    await browser?.close();
    await gw1?.stop();
    await gw2?.stop();
    redis?.kill('SIGKILL');
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('the console is served under a strict Content-Security-Policy with no inline code', async () => {
    const r = await http(`${gw1.adminUrl}/console/`);
    assert.equal(r.status, 200);
    const csp = r.headers.get('content-security-policy');
    for (const d of ["default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "require-trusted-types-for 'script'"]) {
      assert.ok(csp.includes(d), `CSP lacks ${d}: ${csp}`);
    }
    assert.ok(!csp.includes('unsafe'), csp);
    assert.equal(r.headers.get('x-frame-options'), 'DENY');
    assert.ok(!/<script>|<style|\son[a-z]+=/.test(r.text), 'inline script, style or handler in index.html');
    // The public listener does not serve it.
    assert.equal((await http(`${gw1.url}/console/`)).status, 404);
  });

  test('a wrong token is refused, and a viewer\'s token too', async () => {
    const forged = token({ userId: 'ops-1', role: 'admin' }, { secret: 'not-the-gateway-secret' });
    await signIn(forged);
    await page.locator('#signin-error').filter({ hasText: 'refused this token' }).waitFor();
    assert.equal(await page.locator('#tabs').isVisible(), false, 'no console behind a refused token');
    assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused token is not kept');
    assert.ok(!page.url().includes(forged.slice(0, 20)), 'the token never goes into the URL');
    await screenshot(page, 'console-refused');

    await page.fill('#token', user({ ogLevel: 9 }).token);
    await page.click('#signin-submit');
    await page.locator('#signin-error').filter({ hasText: 'may not use the console' }).waitFor();
    assert.equal(await page.locator('#tabs').isVisible(), false);
  });

  test('an admin signs in; the token stays in this tab and out of every URL', async () => {
    const urls = [];
    page.on('request', (req) => urls.push(req.url()));
    await signIn(admin.token);
    await page.locator('#who-name').filter({ hasText: 'Ops One (ops-1)' }).waitFor();
    assert.match(await page.locator('#who-pod').textContent(), /replica-1/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('live-console-token')), admin.token);
    assert.ok(urls.length > 0 && urls.every((u) => !u.includes(admin.token.slice(0, 16))), 'token in a URL');
    // A reload keeps the session (sessionStorage), and the page is still signed in.
    await page.reload();
    await page.locator('#tabs').waitFor({ state: 'visible' });
  });

  test('channels appear ranked by viewers counted over both replicas', async () => {
    const big = chan('big');
    const small = chan('small');
    for (const [gw, channel] of [[gw1, big], [gw2, big], [gw2, big], [gw1, small]]) {
      const s = await connect(gw, user().token);
      await emitAck(s, 'join', { channelName: channel });
    }
    await viewersCell(big).filter({ hasText: /^3$/ }).waitFor({ timeout: LIVE_MS });
    await viewersCell(small).filter({ hasText: /^1$/ }).waitFor({ timeout: LIVE_MS });
    const order = await page.locator('#channels tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.channel));
    assert.ok(order.indexOf(big) < order.indexOf(small), `ranked ${order}`);
    assert.equal(await page.locator('#channels-scope').textContent(), 'all replicas');
  });

  test('a chat line sent on the other replica arrives live in the channel\'s feed, with presence', async () => {
    const channelName = chan('feed');
    const talker = user({ username: 'Talker' });
    const s = await connect(gw2, talker.token);
    await join(s, channelName);
    await openChannel(channelName);
    await page.locator('#feed-viewers').filter({ hasText: '1 viewer' }).waitFor({ timeout: LIVE_MS });
    await page.locator('#users button.chip').filter({ hasText: talker.userId }).waitFor({ timeout: LIVE_MS });
    const text = `hello from replica-2 ${uid('m')}`;
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: text }), OK);
    const line = feedLine(text);
    await line.waitFor({ timeout: LIVE_MS });
    assert.equal(await line.getAttribute('data-kind'), 'chat');
    assert.equal(await line.getAttribute('data-user'), talker.userId);
    assert.match(await line.textContent(), /Talker/);
  });

  test('HTML in chat lines, names and backend events renders as text and never runs', async () => {
    const channelName = chan('xss');
    const evil = user({ username: '<img src=x onerror="window.__pwned=1">' });
    const s = await connect(gw2, evil.token);
    await join(s, channelName);
    await openChannel(channelName);
    // The gateway's sanitizer strips tags and escapes the rest, so a chat line that reads as
    // `<script>` arrives as `&lt;script&gt;`: the console shows it as the characters typed.
    const message = '&lt;script&gt;window.__pwned=2&lt;/script&gt; hi';
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message }), OK);
    await feedLine('<script>window.__pwned=2</script> hi').waitFor({ timeout: LIVE_MS });
    // Backend system events are not sanitized at all.
    const r = await bridge(gw1, 'POST', `/v1/channels/${channelName}/system`,
      { type: 'announce', text: '<script>window.__pwned=3</script><b>bold</b>' }, service);
    assert.equal(r.status, 202);
    await feedLine('<script>window.__pwned=3</script><b>bold</b>').waitFor({ timeout: LIVE_MS });
    await page.locator('#feed li.line .who-ref').filter({ hasText: '<img src=x onerror="window.__pwned=1">' }).first().waitFor();
    const injected = await page.evaluate(() => ({
      pwned: window.__pwned ?? null,
      elements: document.querySelectorAll('#feed script, #feed img, #feed b, #users img').length,
    }));
    assert.deepEqual(injected, { pwned: null, elements: 0 });
    // Trusted Types: even the app itself could not assign HTML.
    const sink = await page.evaluate(() => {
      try { document.createElement('div').innerHTML = '<b>x</b>'; return 'assigned'; } catch (e) { return e.name; }
    });
    assert.equal(sink, 'TypeError');
    await screenshot(page, 'console-xss-as-text');
  });

  test('muting a user from the feed refuses their next line, on any replica', async () => {
    const channelName = chan('mute');
    const loud = user({ username: 'Loud' });
    const other = user();
    const s = await connect(gw2, loud.token);
    await join(s, channelName);
    const o = await connect(gw1, other.token);
    await join(o, channelName, { others: [s] });
    await openChannel(channelName);
    const text = `first line ${uid('m')}`;
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: text }), OK);
    const line = feedLine(text);
    await line.waitFor({ timeout: LIVE_MS });
    await page.selectOption('#mod-duration', '900');
    await line.hover();
    await line.getByRole('button', { name: 'Mute' }).click();
    await page.locator('#mod-result[data-state="ok"]').filter({ hasText: `Muted ${loud.userId} in ${channelName} for 15 min` }).waitFor();
    // Everyone in the room hears about it, and the mute holds on the user's replica.
    const notice = await nextEvent(s, 'mod:event', 5000);
    assert.equal(notice.action, 'mute');
    assert.equal(notice.targetUserId, loud.userId);
    assert.equal(notice.durationSeconds, 900);
    assert.equal(notice.by, admin.userId);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'can I still talk?' }),
      refusal('muted', 'You are muted in this channel'));
    assert.deepEqual(await emitAck(o, 'chat:send', { channelName, message: 'others can' }), OK);
    await page.locator('#feed li.kind-moderation').filter({ hasText: `muted ${loud.userId} for 15 min` }).waitFor({ timeout: LIVE_MS });
    await screenshot(page, 'console-live');
  });

  test('a refused moderation shows why, and ending a stream takes two clicks and empties it', async () => {
    const channelName = chan('end');
    const s = await connect(gw1, user().token);
    await join(s, channelName);
    await openChannel(channelName);
    await page.fill('#mod-target', '');
    await page.click('#moderation button[data-action="mute"]');
    await page.locator('#mod-result[data-state="error"]').filter({ hasText: 'Enter the user id' }).waitFor();
    await page.click('#mod-end');
    assert.equal(await page.locator('#mod-end').textContent(), 'Confirm end');
    await sleep(300);
    assert.equal((await nextEvent(s, 'mod:event', 200).catch(() => null)), null, 'one click ends nothing');
    await page.click('#mod-end');
    await page.locator('#mod-result[data-state="ok"]').filter({ hasText: `Ended ${channelName}` }).waitFor();
    assert.equal((await nextEvent(s, 'mod:event', 5000)).action, 'end');
    await page.locator('#feed-viewers').filter({ hasText: '0 viewers' }).waitFor({ timeout: LIVE_MS });
  });

  test('the replicas view lists both gateways with their health; the config view the running settings', async () => {
    await page.click('button[data-tab="replicas"]');
    for (const pod of ['replica-1', 'replica-2']) {
      const row = page.locator(`#replicas tbody tr[data-pod="${pod}"]`);
      await row.waitFor({ timeout: LIVE_MS });
      assert.match(await row.textContent(), /up/);
      assert.match(await row.textContent(), /serving/);
    }
    assert.match(await page.locator('#replicas tbody tr[data-pod="replica-1"]').textContent(), /this/);
    await screenshot(page, 'console-replicas');
    await page.click('button[data-tab="config"]');
    const rates = page.locator('.config-section[data-section="rateLimits"]');
    await rates.waitFor();
    assert.match(await rates.textContent(), /messagesPerMinute\s*120/);
    assert.match(await page.locator('.config-section[data-section="process"]').textContent(), /jwtAlgorithm\s*HS256/);
    await screenshot(page, 'console-config');
  });

  test('signing out forgets the token', async () => {
    await page.click('#sign-out');
    await page.locator('#signin').waitFor({ state: 'visible' });
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
    await page.reload();
    await page.locator('#signin').waitFor({ state: 'visible' });
    assert.deepEqual(browser.problems.filter((p) => !/401|403|TrustedHTML/.test(p)), []);
  });
});
