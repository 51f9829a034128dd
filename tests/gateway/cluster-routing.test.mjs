// Per-channel routing between replicas (issue 14) and the shared state that depends on it, with
// three real gateway processes on one real redis-server: a replica subscribes to a channel's Redis
// channel while it has members of it (and only then), joins are acknowledged once the replica
// receives the channel, churn on other channels costs a member nothing, counts read their own
// writes, presence is batched on the cluster-wide room size, and join/leave churn rewrites the
// pod's snapshot at most once a second.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  startGateway, user, chan, connect, join, emitAck, nextEvent, closeAllSockets, http, sleep,
  token, OK, uid,
} from './harness.mjs';
import {
  missing, startRedis, subscribers, info, tempDir, stopAll, eventually, redisUp, redisBin, delayProxy,
} from './redis-harness.mjs';

const skip = missing(redisBin);
const prefix = uid('rt').replace(/-/g, '_');
const bridgeToken = token({ userId: 'backend', role: 'service' });
const auth = { authorization: `Bearer ${bridgeToken}` };
/** The Redis pub/sub channel a gateway uses for `channel`'s room. */
const redisChannel = (channel, p = prefix) => `${p}-socket.io-room#/live#channel:${channel}#`;
/** The linger after the last local member left (cluster::ROOM_LINGER) plus slack for a loaded CI. */
const UNSUBSCRIBED_WITHIN_MS = 3000 + 5000;

let redis;
let gw1;
let gw2;
let gw3;
let dir;

function startReplica(name, env = {}, config = path.join(dir, 'gateway.yaml')) {
  return startGateway({
    config,
    env: { REDIS_URL: `redis://127.0.0.1:${redis.port}`, LIVE_REDIS_PREFIX: prefix, POD_NAME: name, ...env },
  });
}

before(async () => {
  if (skip) return;
  dir = tempDir('routing');
  fs.writeFileSync(path.join(dir, 'gateway.yaml'),
    'rateLimits: {messagesPerMinute: 1000, giftsPerMinute: 1000}\npresence: {batchThreshold: 4, batchIntervalMs: 200}\n');
  redis = await startRedis();
  [gw1, gw2, gw3] = await Promise.all([startReplica('r1'), startReplica('r2'), startReplica('r3')]);
});

after(async () => {
  if (process.env.DUMP_GW_LOGS) for (const g of [gw1, gw2, gw3]) console.log(g?.stderr());
  closeAllSockets();
  await Promise.all([gw1?.stop(), gw2?.stop(), gw3?.stop()]);
  await stopAll();
});

afterEach(() => closeAllSockets());

const viewers = async (gw, c) =>
  (await http(`${gw.adminUrl}/v1/channels/${c}/viewers`, { headers: auth })).json.viewers;

test('a replica subscribes to a channel while it has members of it, and unsubscribes a linger after the last one left', { skip }, async () => {
  const c = chan();
  const rc = redisChannel(c);
  assert.equal(subscribers(redis.port, rc), 0);
  const a = await connect(gw1, user().token);
  // The join's acknowledgement means the replica already receives the channel.
  assert.deepEqual(await emitAck(a, 'join', { channelName: c }), OK);
  assert.equal(subscribers(redis.port, rc), 1, 'replica 1 subscribed by the time the join is acknowledged');
  const b = await connect(gw2, user().token);
  assert.deepEqual(await emitAck(b, 'join', { channelName: c }), OK);
  assert.equal(subscribers(redis.port, rc), 2);
  // Replica 3 has no member: it never subscribes, so it receives none of the channel's traffic.
  for (let i = 0; i < 5; i += 1) {
    assert.deepEqual(await emitAck(a, 'chat:send', { channelName: c, message: `m${i}` }), OK);
  }
  assert.equal((await nextEvent(b, 'chat:new', 5000)).message, 'm0');
  assert.equal(subscribers(redis.port, rc), 2, 'replica 3 stays out');
  assert.equal(subscribers(redis.port, `${prefix}-socket.io-request#/live#`), 3, 'every replica hears the namespace channel');

  assert.deepEqual(await emitAck(b, 'leave', { channelName: c }), OK);
  assert.equal(subscribers(redis.port, rc), 2, 'lingering right after the last member left');
  await eventually(() => subscribers(redis.port, rc) === 1, UNSUBSCRIBED_WITHIN_MS, 'replica 2 unsubscribed after its linger');
  a.close();
  await eventually(() => subscribers(redis.port, rc) === 0, UNSUBSCRIBED_WITHIN_MS, 'replica 1 unsubscribed after its last member disconnected');
});

test('a member joining again within the linger keeps the subscription', { skip }, async () => {
  const c = chan();
  const rc = redisChannel(c);
  const a = await connect(gw2, user().token);
  await emitAck(a, 'join', { channelName: c });
  await emitAck(a, 'leave', { channelName: c });
  await sleep(500);
  await emitAck(a, 'join', { channelName: c });
  await sleep(3500); // past the first leave's linger
  assert.equal(subscribers(redis.port, rc), 1);
  const sender = await connect(gw1, user().token);
  await emitAck(sender, 'join', { channelName: c });
  await emitAck(sender, 'chat:send', { channelName: c, message: 'still routed' });
  const got = await eventually(() => a._events_log.find((e) => e.name === 'chat:new'), 5000, 'chat across replicas');
  assert.equal(got.args[0].message, 'still routed');
});

test('a member receives what another replica publishes right after its join is acknowledged', { skip }, async () => {
  // Replica "slow" reaches Redis through a proxy that delays its commands by 150 ms, so its
  // subscription to each new channel takes that long; the join must not be acknowledged before
  // it, or the bridge publish that follows the acknowledgement (through a fast replica) would
  // reach Redis first and be lost.
  const proxy = await delayProxy(redis.port, 150);
  const slow = await startReplica('slow', { REDIS_URL: `redis://127.0.0.1:${proxy.port}` });
  try {
    await redisUp(slow);
    const member = await connect(slow, user().token);
    for (let i = 0; i < 5; i += 1) {
      const c = chan();
      assert.deepEqual(await emitAck(member, 'join', { channelName: c }), OK);
      const res = await http(`${gw1.adminUrl}/v1/channels/${c}/gift`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ from: 'backend', giftId: 'rose', qty: i + 1 }),
      });
      assert.equal(res.status, 202);
      assert.equal((await nextEvent(member, 'gift:new', 5000)).qty, i + 1, `channel ${i}`);
    }
  } finally {
    await slow.stop(2000);
    await proxy.stop();
  }
});

test('subscribing and unsubscribing other channels costs a member on the same replica nothing', { skip }, async () => {
  const c = chan();
  const member = await connect(gw2, user().token);
  await join(member, c);
  const churner = await connect(gw2, user().token);
  let churning = true;
  const churn = (async () => {
    let n = 0;
    while (churning) {
      const other = chan('churn');
      await emitAck(churner, 'join', { channelName: other });
      await emitAck(churner, 'leave', { channelName: other });
      n += 1;
    }
    return n;
  })();
  const total = 200;
  for (let i = 0; i < total; i += 1) {
    const res = await http(`${gw1.adminUrl}/v1/channels/${c}/chat`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ userId: 'backend', message: `n${i}` }),
    });
    assert.equal(res.status, 202);
  }
  churning = false;
  const churned = await churn;
  assert.ok(churned >= 5, `only ${churned} channels churned`);
  const got = await eventually(() => {
    const msgs = member._events_log.filter((e) => e.name === 'chat:new');
    return msgs.length >= total && msgs;
  }, 10_000, `${total} chats`);
  assert.deepEqual(got.map((e) => e.args[0].message), Array.from({ length: total }, (_, i) => `n${i}`));
});

test('viewer and presence counts asked right after the join ack include the join', { skip }, async () => {
  const c = chan();
  const alice = user();
  const a = await connect(gw1, alice.token);
  assert.deepEqual(await emitAck(a, 'join', { channelName: c }), OK);
  // No wait: the answering replica counts its own members live.
  assert.equal(await viewers(gw1, c), 1);
  const present = await http(`${gw1.adminUrl}/v1/channels/${c}/users/${alice.userId}`, { headers: auth });
  assert.deepEqual(present.json, { channelName: c, userId: alice.userId, present: true });
  // The other replicas' members come from their snapshots, without counting anyone twice.
  const b = await connect(gw2, user().token);
  await emitAck(b, 'join', { channelName: c });
  assert.ok(await viewers(gw2, c) >= 1, 'replica 2 counts its own member at once');
  await eventually(async () => (await viewers(gw2, c)) === 2, 5000, "replica 1's member from its snapshot");
  await eventually(async () => (await viewers(gw1, c)) === 2, 5000, '2 viewers seen from replica 1');
  await eventually(async () => (await viewers(gw3, c)) === 2, 5000, '2 viewers seen from replica 3');
  assert.deepEqual(await emitAck(a, 'leave', { channelName: c }), OK);
  assert.equal(await viewers(gw1, c), 1, 'a leave is seen at once too');
});

test('presence is batched on the cluster-wide room size', { skip }, async () => {
  // batchThreshold is 4. Three members on replica 1 and one on replica 2: a join on replica 2
  // makes five, so it is batched even though replica 2 alone has one member.
  const c = chan();
  const locals = [];
  for (let i = 0; i < 3; i += 1) {
    const s = await connect(gw1, user().token);
    await emitAck(s, 'join', { channelName: c });
    locals.push(s);
  }
  await eventually(async () => (await viewers(gw2, c)) === 3, 5000, "replica 1's members in its snapshot");
  const watcher = await connect(gw2, user().token);
  await emitAck(watcher, 'join', { channelName: c });
  // Replica 2 learns the other replicas' sizes with its next snapshot write (every 2 s).
  await sleep(2500);
  watcher._events_log.length = 0;
  const joiner = user();
  const j = await connect(gw2, joiner.token);
  assert.deepEqual(await emitAck(j, 'join', { channelName: c }), OK);
  const update = await nextEvent(watcher, 'presence:update', 3000);
  assert.equal(update.batched, true, `expected a batched update, got ${JSON.stringify(update)}`);
  assert.equal(update.joins, 1);
  assert.deepEqual(update.joinedUserIds, [joiner.userId]);
  assert.ok(!watcher._events_log.some((e) => e.name === 'system:event'), 'no per-socket system event in a batched room');
});

test("join/leave churn rewrites the replica's Redis snapshot at most once a second", { skip }, async () => {
  // A Redis of its own and channel history off (its joins and leaves call scripts too), so
  // every script call counted is this replica's snapshot write.
  const own = await startRedis();
  const config = path.join(tempDir('churn'), 'gateway.yaml');
  fs.writeFileSync(config, 'history: {maxItems: 0, connectionStateRecovery: false}\n');
  const gw = await startGateway({
    config,
    env: { REDIS_URL: `redis://127.0.0.1:${own.port}`, LIVE_REDIS_PREFIX: prefix, POD_NAME: 'churn' },
  });
  try {
    const s = await connect(gw, user().token);
    await sleep(500);
    const calls = () => {
      const stats = info(own.port, 'commandstats');
      return ['cmdstat_evalsha', 'cmdstat_eval'].reduce(
        (n, k) => n + Number((stats[k] ?? '').match(/calls=(\d+)/)?.[1] ?? 0), 0);
    };
    const c = chan();
    const before = calls();
    const started = Date.now();
    for (let i = 0; i < 20; i += 1) {
      await emitAck(s, 'join', { channelName: c });
      await sleep(75);
      await emitAck(s, 'leave', { channelName: c });
      await sleep(75);
    }
    const seconds = (Date.now() - started) / 1000;
    await sleep(1200); // the last change's write
    const writes = calls() - before;
    // One write per second at most, plus the one after the churn stopped.
    assert.ok(writes <= Math.ceil(seconds) + 2, `${writes} snapshot writes in ${seconds.toFixed(1)} s of churn`);
    assert.ok(writes >= 1, 'the churn was written at all');
  } finally {
    await gw.stop(2000);
    await own.stop();
  }
});
