// Hot-reloaded YAML config: file rewrite, broken YAML, Kubernetes ConfigMap symlink swap, SIGHUP.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, connect, connectError, closeAllSockets, nextEvent, user, chan, emitAck, join, metricsText, metricValue, poll, sleep,
  refusal, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

const RATE_LIMITED = refusal('rate_limited', 'Rate limit exceeded for messages');
const yaml = ({
  messagesPerMinute = 30, giftsPerMinute = 30, adminRoles = ['admin'], minOgLevel = 5, muteSeconds = 300,
  maxMessageLength = 500, maxGiftQty = 100, allowedOrigins,
} = {}) => `\
rateLimits:
  messagesPerMinute: ${messagesPerMinute}
  giftsPerMinute: ${giftsPerMinute}
${allowedOrigins ? `cors:\n  allowedOrigins: ${JSON.stringify(allowedOrigins)}\n` : ''}moderation:
  adminRoles: ${JSON.stringify(adminRoles)}
  minOgLevel: ${minOgLevel}
  muteSeconds: ${muteSeconds}
limits:
  maxMessageLength: ${maxMessageLength}
  maxGiftQty: ${maxGiftQty}
`;

/** Atomic rewrite (write temp + rename), as editors and config tools do. */
function writeAtomic(file, text) {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

/** `count` already-connected sockets of fresh users, each joined to its own channel. */
async function freshMembers(gw, count) {
  const out = [];
  for (let i = 0; i < count; i++) {
    const channelName = chan();
    const s = await connect(gw, user().token);
    await join(s, channelName);
    out.push({ s, channelName });
  }
  return out;
}

/** Polls (up to ~5 s) until one of the pre-connected fresh users gets rate limited on its third
 * message; each attempt uses an untouched user so earlier attempts cannot exhaust its budget.
 * Returns the acks of the successful attempt or of the last one. */
async function thirdMessageLimited(members) {
  let acks;
  for (const { s, channelName } of members) {
    acks = [];
    for (let i = 1; i <= 3; i++) acks.push(await emitAck(s, 'chat:send', { channelName, message: `m${i}` }));
    if (JSON.stringify(acks[2]) === JSON.stringify(RATE_LIMITED)) return acks;
    await sleep(500);
  }
  return acks;
}

describe('config file reload', () => {
  let gw;
  let dir;
  let file;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-config-'));
    file = path.join(dir, 'gateway.yaml');
    fs.writeFileSync(file, yaml());
    gw = await startGateway({ config: file });
  });
  after(async () => {
    await gw?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('the initial config file is loaded at start (30 messages per minute allow a third message)', async () => {
    const [{ s, channelName }] = await freshMembers(gw, 1);
    for (let i = 1; i <= 3; i++) assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: `m${i}` }), OK);
  });

  test('lowering messagesPerMinute to 2 applies to an already-connected socket within a few seconds', async () => {
    const members = await freshMembers(gw, 10);
    const before = metricValue(await metricsText(gw), 'live_config_reloads_total', { result: 'success' });
    writeAtomic(file, yaml({ messagesPerMinute: 2 }));
    const acks = await thirdMessageLimited(members);
    assert.deepEqual(acks, [OK, OK, RATE_LIMITED]);
    const after = metricValue(await metricsText(gw), 'live_config_reloads_total', { result: 'success' });
    assert.ok(after > before, `live_config_reloads_total{result="success"} ${before} -> ${after}`);
  });

  test('broken YAML keeps the previous config and counts a failed reload', async () => {
    writeAtomic(file, yaml({ messagesPerMinute: 2 }));
    const members = await freshMembers(gw, 10);
    assert.deepEqual(await thirdMessageLimited(members.slice(0, 5)), [OK, OK, RATE_LIMITED], 'limit of 2 in force first');

    const failures = async () => metricValue(await metricsText(gw), 'live_config_reloads_total', { result: 'failure' });
    const before = await failures();
    writeAtomic(file, 'rateLimits: [this is: not: valid\n  messagesPerMinute: {{{\n');
    assert.equal(await poll(async () => (await failures()) > before, { timeoutMs: 5000 }), true,
      'live_config_reloads_total{result="failure"} did not increase');
    assert.equal(gw.running, true, 'gateway still running');

    const [{ s, channelName }] = members.slice(5);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'a' }), OK);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'b' }), OK);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'c' }), RATE_LIMITED,
      'the previous limit of 2 stays in force after broken YAML');
  });

  test('lowering limits.maxMessageLength applies to connected sockets', async () => {
    const members = await freshMembers(gw, 10);
    writeAtomic(file, yaml({ maxMessageLength: 10 }));
    let ack;
    for (const { s, channelName } of members) {
      ack = await emitAck(s, 'chat:send', { channelName, message: 'x'.repeat(11) });
      if (ack.ok === false) break;
      await sleep(500);
    }
    assert.deepEqual(ack, refusal('invalid_message_length', 'Invalid message length'));
    const { s, channelName } = members.at(-1);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'x'.repeat(10) }), OK);
    writeAtomic(file, yaml());
  });

  test('lowering moderation.minOgLevel lets a lower ogLevel moderate', async () => {
    const channelName = chan();
    const mod = await connect(gw, user({ ogLevel: 3 }).token);
    await join(mod, channelName); // an ogLevel moderator acts only in its channels
    assert.equal((await emitAck(mod, 'mod:decision', { channelName, action: 'warn' })).error?.code, 'forbidden');
    writeAtomic(file, yaml({ minOgLevel: 3 }));
    const ok = await poll(async () => (await emitAck(mod, 'mod:decision', { channelName, action: 'warn' })).ok, { timeoutMs: 5000, intervalMs: 300 });
    assert.equal(ok, true);
    writeAtomic(file, yaml());
  });
});

describe('Kubernetes ConfigMap-style symlink swap', () => {
  let gw;
  let dir;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-cm-'));
    fs.mkdirSync(path.join(dir, '..2026_01_01'));
    fs.writeFileSync(path.join(dir, '..2026_01_01', 'gateway.yaml'), yaml());
    fs.symlinkSync('..2026_01_01', path.join(dir, '..data'));
    fs.symlinkSync('..data/gateway.yaml', path.join(dir, 'gateway.yaml'));
    gw = await startGateway({ config: path.join(dir, 'gateway.yaml') });
  });
  after(async () => {
    await gw?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('atomically swapping ..data to a new version applies the new limits', async () => {
    const members = await freshMembers(gw, 10);
    fs.mkdirSync(path.join(dir, '..2026_01_02'));
    fs.writeFileSync(path.join(dir, '..2026_01_02', 'gateway.yaml'), yaml({ messagesPerMinute: 2 }));
    fs.symlinkSync('..2026_01_02', path.join(dir, '..data_tmp'));
    fs.renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
    fs.rmSync(path.join(dir, '..2026_01_01'), { recursive: true });
    assert.deepEqual(await thirdMessageLimited(members), [OK, OK, RATE_LIMITED]);
  });
});

describe('SIGHUP', () => {
  let gw;
  let dir;
  let file;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-hup-'));
    file = path.join(dir, 'gateway.yaml');
    fs.writeFileSync(file, yaml());
    gw = await startGateway({ config: file });
  });
  after(async () => {
    await gw?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('writing the file and sending SIGHUP reloads it and the process keeps running', async () => {
    const members = await freshMembers(gw, 10);
    const successes = async () => metricValue(await metricsText(gw), 'live_config_reloads_total', { result: 'success' });
    const before = await successes();
    fs.writeFileSync(file, yaml({ messagesPerMinute: 2 }));
    gw.signal('SIGHUP');
    assert.deepEqual(await thirdMessageLimited(members), [OK, OK, RATE_LIMITED]);
    assert.equal(gw.running, true);
    assert.ok((await successes()) > before, 'a successful reload was counted');
    const s2 = await connect(gw, user().token);
    assert.equal(s2.connected, true, 'new connections still accepted after SIGHUP');
  });
});

describe('every config file setting is honoured', () => {
  let gw;
  let dir;
  let file;
  const settings = {
    giftsPerMinute: 3, adminRoles: ['moderator'], minOgLevel: 9, muteSeconds: 7, maxGiftQty: 10,
    allowedOrigins: ['http://cfg.test'],
  };
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-settings-'));
    file = path.join(dir, 'gateway.yaml');
    fs.writeFileSync(file, yaml(settings));
    gw = await startGateway({ config: file });
  });
  after(async () => {
    await gw?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('rateLimits.giftsPerMinute 3 refuses the fourth gift', async () => {
    const channelName = chan();
    const s = await connect(gw, user().token);
    await join(s, channelName);
    for (let i = 0; i < 3; i++) assert.deepEqual(await emitAck(s, 'gift:announce', { channelName, giftId: 'g', qty: 1 }), OK);
    assert.deepEqual(await emitAck(s, 'gift:announce', { channelName, giftId: 'g', qty: 1 }),
      refusal('rate_limited', 'Rate limit exceeded for gifts'));
  });

  test('limits.maxGiftQty 10 refuses qty 11 and accepts qty 10', async () => {
    const channelName = chan();
    const s = await connect(gw, user().token);
    await join(s, channelName);
    assert.deepEqual(await emitAck(s, 'gift:announce', { channelName, giftId: 'g', qty: 11 }),
      refusal('invalid_gift', 'Invalid gift data'));
    assert.deepEqual(await emitAck(s, 'gift:announce', { channelName, giftId: 'g', qty: 10 }), OK);
  });

  test('moderation.adminRoles and minOgLevel decide who may moderate', async () => {
    const channelName = chan();
    for (const [claims, allowed] of [
      [{ role: 'moderator' }, true], [{ ogLevel: 9 }, true], [{ role: 'admin' }, false], [{ ogLevel: 8 }, false],
    ]) {
      const s = await connect(gw, user(claims).token);
      // An ogLevel moderator acts only in channels it is in; a role moderator anywhere.
      if (claims.ogLevel !== undefined) assert.deepEqual(await emitAck(s, 'join', { channelName }), OK);
      const ack = await emitAck(s, 'mod:decision', { channelName, action: 'warn' });
      assert.deepEqual(ack, allowed ? OK : refusal('forbidden', 'Insufficient privileges for moderation'), JSON.stringify(claims));
      s.close();
    }
  });

  test('moderation.muteSeconds is the default mute duration', async () => {
    const channelName = chan();
    const viewer = user();
    const sv = await connect(gw, viewer.token);
    await join(sv, channelName);
    const sm = await connect(gw, user({ role: 'moderator' }).token);
    assert.deepEqual(await emitAck(sm, 'mod:decision', { channelName, action: 'mute', targetUserId: viewer.userId }), OK);
    assert.equal((await nextEvent(sv, 'mod:event')).durationSeconds, 7);
  });

  test('cors.allowedOrigins admits its origins, refuses others, and a reload adds a new one', async () => {
    await connect(gw, user().token, { origin: 'http://cfg.test' });
    await connectError(gw, user().token, { origin: 'http://later.test' });
    writeAtomic(file, yaml({ ...settings, allowedOrigins: ['http://cfg.test', 'http://later.test'] }));
    let s;
    const deadline = Date.now() + 5000;
    while (!s && Date.now() < deadline) {
      s = await connect(gw, user().token, { origin: 'http://later.test' }).catch(() => undefined);
      if (!s) await sleep(300);
    }
    assert.ok(s?.connected, 'http://later.test admitted after the reload');
    await connectError(gw, user().token, { origin: 'http://evil.test' });
  });
});
