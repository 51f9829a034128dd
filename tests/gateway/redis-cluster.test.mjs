// Two gateway replicas on a real 3-master Redis Cluster (`redis-server --cluster-enabled yes` +
// `redis-cli --cluster create`), with REDIS_URL=redis-cluster://...: channel traffic on sharded
// pub/sub spread over the shards, and the shared state (rate limits, mutes, counts, `end`) whose
// scripts run on the cluster because their keys share hash tags.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  startGateway, user, chan, connect, join, emitAck, nextEvent, closeAllSockets, http, token, OK,
  refusal, uid,
} from './harness.mjs';
import {
  missing, startCluster, cli, tempDir, stopAll, eventually, redisUp, redisBin, cliBin,
} from './redis-harness.mjs';

const skip = missing(redisBin, cliBin);
const prefix = uid('cl').replace(/-/g, '_');
const bridgeToken = token({ userId: 'backend', role: 'service' });
const auth = { authorization: `Bearer ${bridgeToken}` };
const CROSS_MS = 5000;
const roomChannel = (c) => `${prefix}-socket.io-room#/live#channel:${c}#`;

let cluster;
let gw1;
let gw2;

before(async () => {
  if (skip) return;
  const dir = tempDir('cluster-gw');
  fs.writeFileSync(path.join(dir, 'gateway.yaml'), 'rateLimits: {messagesPerMinute: 4, giftsPerMinute: 30}\n');
  cluster = await startCluster({ masters: 3 });
  const start = (name) => startGateway({
    config: path.join(dir, 'gateway.yaml'),
    env: { REDIS_URL: cluster.url, LIVE_REDIS_PREFIX: prefix, POD_NAME: name },
  });
  [gw1, gw2] = await Promise.all([start('c1'), start('c2')]);
  for (const gw of [gw1, gw2]) {
    await redisUp(gw);
  }
});

after(async () => {
  if (process.env.DUMP_GW_LOGS) { console.log(gw1?.stderr()); console.log(gw2?.stderr()); }
  closeAllSockets();
  await Promise.all([gw1?.stop(), gw2?.stop()]);
  await stopAll();
});

afterEach(() => closeAllSockets());

test('chat, gifts and presence cross replicas over sharded pub/sub', { skip }, async () => {
  const c = chan();
  const alice = user();
  const bob = user();
  const a = await connect(gw1, alice.token);
  const b = await connect(gw2, bob.token);
  await join(b, c);
  assert.deepEqual(await emitAck(a, 'join', { channelName: c }), OK);
  assert.equal((await nextEvent(b, 'presence:update', CROSS_MS)).userId, alice.userId);
  // Both replicas hold a sharded subscription to the channel, on the shard that owns its slot.
  assert.equal(cluster.shardSubscribers(roomChannel(c)), 2);
  assert.deepEqual(await emitAck(a, 'chat:send', { channelName: c, message: 'over the cluster' }), OK);
  assert.equal((await nextEvent(b, 'chat:new', CROSS_MS)).message, 'over the cluster');
  assert.deepEqual(await emitAck(b, 'gift:announce', { channelName: c, giftId: 'rose', qty: 2 }), OK);
  assert.equal((await nextEvent(a, 'gift:new', CROSS_MS)).from, bob.userId);
});

test("channels' subscriptions spread over the cluster's shards", { skip }, async () => {
  const member = await connect(gw1, user().token);
  const channels = Array.from({ length: 24 }, () => chan('spread'));
  for (const c of channels) assert.deepEqual(await emitAck(member, 'join', { channelName: c }), OK);
  const perNode = cluster.ports.map((p) => cli(p, ['PUBSUB', 'SHARDCHANNELS', `${prefix}-socket.io-room#*`])
    .split('\n').filter((l) => channels.some((c) => l.includes(`channel:${c}#`))).length);
  assert.equal(perNode.reduce((a, b) => a + b, 0), channels.length, `per node: ${perNode}`);
  assert.ok(perNode.filter((n) => n > 0).length >= 2, `all on one shard: ${perNode}`);
});

test('a rate limit and a mute are shared across replicas on the cluster', { skip }, async () => {
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
  assert.equal(acks.filter((x) => x.ok).length, 4, JSON.stringify(acks));
  assert.deepEqual(acks[5], refusal('rate_limited', 'Rate limit exceeded for messages'));

  const target = user();
  const admin = await connect(gw1, user({ role: 'admin' }).token);
  const t = await connect(gw2, target.token);
  await join(t, c);
  assert.deepEqual(await emitAck(admin, 'mod:decision', { channelName: c, action: 'mute', targetUserId: target.userId, durationSeconds: 30 }), OK);
  assert.equal((await nextEvent(t, 'mod:event', CROSS_MS)).action, 'mute');
  assert.deepEqual(await emitAck(t, 'chat:send', { channelName: c, message: 'let me talk' }),
    refusal('muted', 'You are muted in this channel'));
  // Decided by the shared script, not a fallback: no Redis errors on either replica.
  for (const gw of [gw1, gw2]) {
    const text = (await http(`${gw.adminUrl}/metrics`)).text;
    assert.doesNotMatch(text, /^live_redis_errors_total\{op="(rate_limit|mute)"\} [1-9]/m);
  }
});

test('viewer counts and presence span replicas on the cluster, and end removes members everywhere', { skip }, async () => {
  const c = chan();
  const carol = user();
  const s1 = await connect(gw1, user().token);
  const s2 = await connect(gw2, carol.token);
  await emitAck(s1, 'join', { channelName: c });
  await emitAck(s2, 'join', { channelName: c });
  for (const gw of [gw1, gw2]) {
    await eventually(async () => (await http(`${gw.adminUrl}/v1/channels/${c}/viewers`, { headers: auth })).json.viewers === 2,
      5000, `2 viewers from ${gw.adminUrl}`);
  }
  const present = await http(`${gw1.adminUrl}/v1/channels/${c}/users/${carol.userId}`, { headers: auth });
  assert.equal(present.json.present, true);
  const admin = await connect(gw1, user({ role: 'admin' }).token);
  assert.deepEqual(await emitAck(admin, 'mod:decision', { channelName: c, action: 'end' }), OK);
  assert.equal((await nextEvent(s2, 'mod:event', CROSS_MS)).action, 'end');
  await eventually(async () => {
    const r = await emitAck(s2, 'chat:send', { channelName: c, message: 'still here?' });
    return r.ok === false && r.error.code === 'not_member';
  }, 3000, 'member on replica 2 removed by end on replica 1');
  await eventually(() => cluster.shardSubscribers(roomChannel(c)) === 0, 10_000, 'both replicas unsubscribed after the end');
});
