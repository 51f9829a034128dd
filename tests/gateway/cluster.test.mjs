// Many replicas as one: two (and three) real gateway processes sharing a real redis-server,
// driven by socket.io-client. Covers cross-replica chat, gifts, presence and bridge calls,
// cluster-wide viewer counts and presence, a shared rate limit, mutes, host assertions and `end` across replicas,
// a SIGKILLed replica dropping out of counts, and a Redis outage with recovery.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, user, chan, connect, join, emitAck, nextEvent, expectNoEvent, closeAllSockets,
  http, freePort, sleep, token, OK, refusal, uid,
} from './harness.mjs';

const redisBin = process.env.REDIS_SERVER_BIN ?? 'redis-server';
const haveRedis = spawnSync(redisBin, ['--version']).status === 0;
const skip = haveRedis ? false : `${redisBin} not found (scripts/test.sh installs it)`;

let redisPort;
let redis;
let gw1;
let gw2;
let dir;
const prefix = uid('e2e').replace(/-/g, '_');
/** Cross-replica waits assert delivery, not latency: generous for a loaded 2-core CI machine. */
const CROSS_MS = 5000;
const bridgeToken = token({ userId: 'backend', role: 'service' });

async function startRedis() {
  const child = spawn(redisBin, [
    '--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  const deadline = Date.now() + 5000;
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  while (!out.includes('Ready to accept connections')) {
    if (Date.now() > deadline) throw new Error(`redis-server did not start:\n${out}`);
    await sleep(50);
  }
  return child;
}

async function stopRedis(child) {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

function startReplica(extraEnv = {}) {
  return startGateway({
    config: path.join(dir, 'gateway.yaml'),
    env: { REDIS_URL: `redis://127.0.0.1:${redisPort}`, LIVE_REDIS_PREFIX: prefix, ...extraEnv },
  });
}

/** Polls `fn` until it returns a truthy value or `ms` pass; returns the last value. */
async function eventually(fn, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(100);
  }
}

const viewers = async (gw, channel) =>
  (await http(`${gw.adminUrl}/v1/channels/${channel}/viewers`, { headers: { authorization: `Bearer ${bridgeToken}` } })).json.viewers;

before(async () => {
  if (skip) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-cluster-'));
  fs.writeFileSync(path.join(dir, 'gateway.yaml'), 'rateLimits: {messagesPerMinute: 4, giftsPerMinute: 30}\n');
  redisPort = await freePort();
  redis = await startRedis();
  gw1 = await startReplica({ POD_NAME: 'replica-1' });
  gw2 = await startReplica({ POD_NAME: 'replica-2' });
});

after(async () => {
  if (process.env.DUMP_GW_LOGS) { console.log(gw1?.stderr()); console.log(gw2?.stderr()); }
  closeAllSockets();
  await Promise.all([gw1?.stop(), gw2?.stop()]);
  if (redis) await stopRedis(redis);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(() => closeAllSockets());

test('chat, gifts and presence cross replicas', { skip }, async () => {
  const c = chan();
  const alice = user();
  const bob = user();
  const a = await connect(gw1, alice.token);
  const b = await connect(gw2, bob.token);
  await join(b, c);
  assert.deepEqual(await emitAck(a, 'join', { channelName: c }), OK);
  const presence = await nextEvent(b, 'presence:update', CROSS_MS);
  assert.equal(presence.userId, alice.userId);
  assert.equal(presence.delta, 1);
  // Alice's own copies of her join, so the presence assertion below sees only Bob's leave.
  assert.equal((await nextEvent(a, 'presence:update')).userId, alice.userId);
  assert.equal((await nextEvent(a, 'system:event')).type, 'join');

  assert.deepEqual(await emitAck(a, 'chat:send', { channelName: c, message: 'hello from replica 1' }), OK);
  const chat = await nextEvent(b, 'chat:new', CROSS_MS);
  assert.equal(chat.message, 'hello from replica 1');
  assert.equal(chat.userId, alice.userId);

  assert.deepEqual(await emitAck(b, 'gift:announce', { channelName: c, giftId: 'rose', qty: 3 }), OK);
  assert.equal((await nextEvent(a, 'chat:new')).message, 'hello from replica 1');
  const gift = await nextEvent(a, 'gift:new', CROSS_MS);
  assert.equal(gift.from, bob.userId);
  assert.equal(gift.qty, 3);

  b.close();
  const left = await nextEvent(a, 'presence:update', CROSS_MS);
  assert.equal(left.userId, bob.userId);
  assert.equal(left.delta, -1);
});

test('a bridge call on one replica reaches members on the other', { skip }, async () => {
  const c = chan();
  const b = await connect(gw2, user().token);
  await join(b, c);
  const res = await http(`${gw1.adminUrl}/v1/channels/${c}/gift`, {
    method: 'POST',
    headers: { authorization: `Bearer ${bridgeToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ from: 'u-bridge', giftId: 'star', qty: 2 }),
  });
  assert.equal(res.status, 202);
  const gift = await nextEvent(b, 'gift:new', CROSS_MS);
  assert.equal(gift.from, 'u-bridge');
  assert.equal(gift.giftId, 'star');
});

test('viewer counts and presence queries span replicas', { skip }, async () => {
  const c = chan();
  const carol = user();
  const s1 = await connect(gw1, user().token);
  const s2 = await connect(gw1, user().token);
  const s3 = await connect(gw2, carol.token);
  for (const s of [s1, s2, s3]) await emitAck(s, 'join', { channelName: c });
  for (const gw of [gw1, gw2]) {
    await eventually(async () => (await viewers(gw, c)) === 3, 5000, `3 viewers seen from ${gw.adminUrl}`);
  }
  const present = await eventually(async () => {
    const r = await http(`${gw1.adminUrl}/v1/channels/${c}/users/${carol.userId}`, { headers: { authorization: `Bearer ${bridgeToken}` } });
    return r.json.present ? r.json : null;
  }, 5000, 'carol present via replica 1');
  assert.deepEqual(present, { channelName: c, userId: carol.userId, present: true });
  const absent = await http(`${gw2.adminUrl}/v1/channels/${c}/users/nobody-here`, { headers: { authorization: `Bearer ${bridgeToken}` } });
  assert.equal(absent.json.present, false);
});

test("a user's rate limit is shared across replicas", { skip }, async () => {
  const c = chan();
  const dave = user();
  const d1 = await connect(gw1, dave.token);
  const d2 = await connect(gw2, dave.token);
  await emitAck(d1, 'join', { channelName: c });
  await emitAck(d2, 'join', { channelName: c });
  const acks = [];
  for (let i = 0; i < 6; i += 1) {
    acks.push(await emitAck(i % 2 ? d2 : d1, 'chat:send', { channelName: c, message: `m${i}` }));
  }
  assert.equal(acks.filter((a) => a.ok).length, 4, JSON.stringify(acks));
  assert.deepEqual(acks[5], refusal('rate_limited', 'Rate limit exceeded for messages'));
});

test("a host asserted through one replica's bridge may join as host on the other, until withdrawn", { skip }, async () => {
  const c = chan();
  const host = user();
  const route = `/v1/channels/${c}/hosts/${encodeURIComponent(host.userId)}`;
  const call = (gw, method) => http(`${gw.adminUrl}${route}`, {
    method, headers: { authorization: `Bearer ${bridgeToken}`, 'content-type': 'application/json' }, body: method === 'PUT' ? '{}' : undefined,
  });
  assert.equal((await call(gw1, 'PUT')).status, 200);
  const s = await connect(gw2, host.token);
  assert.deepEqual(await emitAck(s, 'join', { channelName: c, role: 'host' }), OK);
  assert.equal((await call(gw2, 'DELETE')).status, 200);
  const again = await connect(gw1, host.token);
  assert.deepEqual(await emitAck(again, 'join', { channelName: c, role: 'host' }),
    refusal('host_not_allowed', 'Not allowed to join as host'));
});

test('a mute set on one replica is enforced on the other, and end removes members everywhere', { skip }, async () => {
  const c = chan();
  const target = user();
  const admin = await connect(gw1, user({ role: 'admin' }).token);
  const t = await connect(gw2, target.token);
  await join(t, c);
  assert.deepEqual(await emitAck(admin, 'mod:decision', { channelName: c, action: 'mute', targetUserId: target.userId, durationSeconds: 30 }), OK);
  const ev = await nextEvent(t, 'mod:event', CROSS_MS);
  assert.equal(ev.action, 'mute');
  assert.deepEqual(await emitAck(t, 'chat:send', { channelName: c, message: 'let me talk' }),
    refusal('muted', 'You are muted in this channel'));

  const other = await connect(gw2, user().token);
  await join(other, c, { others: [t] });
  assert.deepEqual(await emitAck(admin, 'mod:decision', { channelName: c, action: 'end' }), OK);
  assert.equal((await nextEvent(other, 'mod:event', CROSS_MS)).action, 'end');
  await eventually(async () => {
    const r = await emitAck(other, 'chat:send', { channelName: c, message: 'still here?' });
    return r.ok === false && r.error.code === 'not_member';
  }, 3000, 'member on replica 2 removed by end on replica 1');
});

test('a replica killed with SIGKILL stops being counted within the pod TTL', { skip }, async () => {
  const c = chan();
  const gw3 = await startReplica({ POD_NAME: 'replica-3' });
  try {
    const s1 = await connect(gw1, user().token);
    const s3a = await connect(gw3, user().token);
    const s3b = await connect(gw3, user().token);
    for (const s of [s1, s3a, s3b]) await emitAck(s, 'join', { channelName: c });
    await eventually(async () => (await viewers(gw1, c)) === 3, 5000, '3 viewers before the kill');
    const killedAt = Date.now();
    gw3.child.kill('SIGKILL');
    await eventually(async () => (await viewers(gw1, c)) === 1, 15_000, 'the killed replica dropped out');
    const took = Date.now() - killedAt;
    assert.ok(took <= 15_000, `took ${took} ms`);
  } finally {
    await gw3.stop(1000);
  }
});

test('with Redis stopped each replica serves its local clients, and cross-replica delivery recovers when it returns', { skip }, async () => {
  const c = chan();
  const a1 = await connect(gw1, user().token);
  const a2 = await connect(gw1, user().token);
  const b = await connect(gw2, user().token);
  await join(b, c);
  await join(a1, c, { others: [b] });
  await join(a2, c, { others: [a1, b] });

  await stopRedis(redis);
  await eventually(async () => (await http(`${gw1.adminUrl}/metrics`)).text.includes('live_redis_up 0'), 5000, 'live_redis_up 0');

  assert.deepEqual(await emitAck(a1, 'chat:send', { channelName: c, message: 'during the outage' }), OK);
  assert.equal((await nextEvent(a2, 'chat:new')).message, 'during the outage');
  assert.equal((await nextEvent(a1, 'chat:new')).message, 'during the outage');
  await expectNoEvent(b, 'chat:new', 300); // at-most-once: not replayed later either

  redis = await startRedis();
  // Each try from a new sender: the file's limit of 4 messages a minute would otherwise be
  // spent by the tries made while the replicas reconnect, and the test would wait a minute.
  let n = 0;
  const acks = [];
  await eventually(async () => {
    n += 1;
    const sender = await connect(gw1, user().token);
    await join(sender, c);
    acks.push(await emitAck(sender, 'chat:send', { channelName: c, message: `after ${n}` }));
    sender.close();
    return b._events_log.some((e) => e.name === 'chat:new');
  }, 15_000, 'cross-replica chat after Redis restarted').catch((e) => {
    throw new Error(`${e.message}; acks: ${JSON.stringify(acks)}`);
  });
  assert.ok(acks.every((a) => a.ok), `every try was accepted: ${JSON.stringify(acks)}`);
  const got = b._events_log.filter((e) => e.name === 'chat:new').map((e) => e.args[0].message);
  assert.ok(!got.includes('during the outage'), 'outage messages are not replayed');
  assert.equal(gw1.running && gw2.running, true, 'no gateway was restarted');
});

test('a gateway starts and serves locally while Redis is unreachable', { skip }, async () => {
  const deadPort = await freePort();
  const gw = await startGateway({ env: { REDIS_URL: `redis://127.0.0.1:${deadPort}`, LIVE_REDIS_PREFIX: prefix } });
  try {
    const c = chan();
    const a = await connect(gw, user().token);
    const b = await connect(gw, user().token);
    await join(a, c);
    await join(b, c, { others: [a] });
    assert.deepEqual(await emitAck(a, 'chat:send', { channelName: c, message: 'local only' }), OK);
    assert.equal((await nextEvent(b, 'chat:new', CROSS_MS)).message, 'local only');
    const metrics = (await http(`${gw.adminUrl}/metrics`)).text;
    assert.match(metrics, /^live_redis_up 0$/m);
  } finally {
    await gw.stop(2000);
  }
});
