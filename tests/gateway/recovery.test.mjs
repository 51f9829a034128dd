// History and recovery across replicas on a real redis-server: a viewer who drops for 5 s and
// reconnects to the other replica (behind a switchable TCP proxy, as behind a load balancer)
// recovers every message in order with the stock client; join {since} across replicas; two
// replicas publishing into one channel at once agree on strictly increasing offsets; a flushed
// Redis gives a new epoch (recovered: false); and while Redis does not answer, delivery goes on
// without offsets and the channel's stream is renewed afterwards, so no recovery skips them.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, user, chan, connect, join, emitAck, nextEvent, expectNoEvent, closeAllSockets,
  freePort, sleep, token, uid, bridge, waitDisconnect, metricsText, metricValue, OK,
} from './harness.mjs';

const redisBin = process.env.REDIS_SERVER_BIN ?? 'redis-server';
const haveRedis = spawnSync(redisBin, ['--version']).status === 0;
const skip = haveRedis ? false : `${redisBin} not found (scripts/test.sh installs it)`;
/** Cross-replica waits assert delivery, not latency: generous for a loaded 2-core machine. */
const CROSS_MS = 5000;

let redisPort;
let redis;
let gwA;
let gwB;
let dir;
const prefix = uid('hist').replace(/-/g, '_');
const service = () => token({ userId: 'backend', role: 'service' });

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

/** Sends one command to the test's Redis and resolves with its raw reply. */
function redisCommand(...args) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(redisPort, '127.0.0.1');
    let reply = '';
    sock.on('data', (d) => { reply += d; sock.end(); });
    sock.on('end', () => resolve(reply));
    sock.on('error', reject);
    sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('')}`);
  });
}

/** A TCP proxy whose upstream can be switched; `drop()` cuts every open connection. */
async function proxy(target) {
  let upstream = target;
  const open = new Set();
  const server = net.createServer((client) => {
    const up = net.connect(upstream.port, '127.0.0.1');
    open.add(client);
    open.add(up);
    client.pipe(up);
    up.pipe(client);
    const close = () => { client.destroy(); up.destroy(); open.delete(client); open.delete(up); };
    client.on('error', close);
    up.on('error', close);
    client.on('close', close);
    up.on('close', close);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    switchTo(gw) { upstream = gw; },
    drop() { for (const s of open) s.destroy(); open.clear(); },
    close() { this.drop(); return new Promise((r) => server.close(r)); },
  };
}

function startReplica(pod) {
  return startGateway({
    config: path.join(dir, 'gateway.yaml'),
    env: { REDIS_URL: `redis://127.0.0.1:${redisPort}`, LIVE_REDIS_PREFIX: prefix, POD_NAME: pod },
  });
}

async function say(socket, channelName, message) {
  assert.deepEqual(await emitAck(socket, 'chat:send', { channelName, message }), OK);
}

function reconnected(socket, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no reconnect within ${ms} ms`)), ms);
    socket.once('connect', () => { clearTimeout(timer); resolve(); });
  });
}

before(async () => {
  if (skip) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-recovery-'));
  fs.writeFileSync(path.join(dir, 'gateway.yaml'), 'rateLimits: {messagesPerMinute: 10000, giftsPerMinute: 10000}\n');
  redisPort = await freePort();
  redis = await startRedis();
  gwA = await startReplica('replica-a');
  gwB = await startReplica('replica-b');
});

after(async () => {
  if (process.env.DUMP_GW_LOGS) { console.log(gwA?.stderr()); console.log(gwB?.stderr()); }
  closeAllSockets();
  await Promise.all([gwA?.stop(), gwB?.stop()]);
  if (redis) {
    const exited = new Promise((r) => redis.once('exit', r));
    redis.kill('SIGKILL');
    await exited;
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(() => closeAllSockets());

test('a viewer who drops for 5 s and comes back on the other replica recovers every message in order', { skip }, async () => {
  const c = chan();
  const lb = await proxy(gwA);
  try {
    const sender = await connect(gwA, user().token);
    await join(sender, c);
    const v = await connect(lb, user().token, {
      reconnection: true, reconnectionDelay: 5000, reconnectionDelayMax: 5000, randomizationFactor: 0,
    });
    await join(v, c);
    await say(sender, c, 'm0');
    const m0 = await nextEvent(v, 'chat:new');
    // The network drops; the load balancer will send the reconnection to replica B.
    lb.switchTo(gwB);
    const dropped = Date.now();
    lb.drop();
    await waitDisconnect(v);
    const back = reconnected(v, 20_000);
    for (let i = 1; i <= 8; i++) {
      await say(sender, c, `m${i}`);
      await sleep(250);
    }
    await back;
    assert.ok(Date.now() - dropped >= 4900, 'the drop lasted 5 s');
    assert.equal(v.recovered, true);
    for (let i = 1; i <= 8; i++) {
      const m = await nextEvent(v, 'chat:new', CROSS_MS);
      assert.equal(m.message, `m${i}`);
      assert.equal(m.offset, m0.offset + i);
      assert.equal(m.epoch, m0.epoch);
    }
    // Live traffic from replica A now reaches the viewer on B, after the replay, once.
    await say(sender, c, 'm9');
    const m9 = await nextEvent(v, 'chat:new', CROSS_MS);
    assert.equal(m9.offset, m0.offset + 9);
    await expectNoEvent(v, 'chat:new', 300);
  } finally {
    await lb.close();
  }
});

test('join {since} on one replica recovers what was published on the other', { skip }, async () => {
  const c = chan();
  const sender = await connect(gwA, user().token);
  await join(sender, c);
  await say(sender, c, 'seen');
  const seen = await nextEvent(sender, 'chat:new');
  for (let i = 1; i <= 4; i++) await say(sender, c, `missed ${i}`);
  const r = await bridge(gwA, 'POST', `/v1/channels/${c}/gift`, { from: 'sponsor', giftId: 'star', qty: 1 }, service());
  assert.equal(r.status, 202);
  const v = await connect(gwB, user().token);
  const ack = await emitAck(v, 'join', { channelName: c, since: { offset: seen.offset, epoch: seen.epoch } });
  assert.equal(ack.recovered, true);
  assert.deepEqual(ack.items.map((i) => i.data.message ?? i.data.giftId),
    ['missed 1', 'missed 2', 'missed 3', 'missed 4', 'star']);
  assert.deepEqual(ack.items.map((i) => i.data.offset), [1, 2, 3, 4, 5].map((k) => seen.offset + k));
  // What Redis replays is byte for byte what replica A delivered live.
  for (let i = 1; i <= 4; i++) {
    const live = await nextEvent(sender, 'chat:new');
    assert.deepEqual(ack.items[i - 1].data, live);
  }
  const late = await emitAck(await connect(gwB, user().token), 'join', { channelName: c, history: 2 });
  assert.deepEqual(late.items.map((i) => i.event), ['chat:new', 'gift:new']);
});

test('two replicas publishing into one channel at once get distinct, strictly increasing offsets', { skip }, async () => {
  const c = chan();
  const onA = await connect(gwA, user().token);
  const onB = await connect(gwB, user().token);
  await join(onA, c);
  await join(onB, c);
  await sleep(300);
  const n = 40;
  const send = async (s, tag) => {
    for (let i = 0; i < n; i++) await say(s, c, `${tag}${i}`);
  };
  const bridged = async (gw, tag) => {
    for (let i = 0; i < 10; i++) {
      const r = await bridge(gw, 'POST', `/v1/channels/${c}/chat`, { userId: 'bot', message: `${tag}${i}` }, service());
      assert.equal(r.status, 202);
    }
  };
  await Promise.all([send(onA, 'a'), send(onB, 'b'), bridged(gwA, 'x'), bridged(gwB, 'y')]);
  const total = 2 * n + 20;
  const collect = async (s) => {
    const got = new Map();
    for (let i = 0; i < total; i++) {
      const m = await nextEvent(s, 'chat:new', CROSS_MS);
      got.set(m.message, m.offset);
    }
    return got;
  };
  const [fromA, fromB] = await Promise.all([collect(onA), collect(onB)]);
  // Both members saw every message with the same offset, and the offsets are 1..total.
  assert.equal(fromA.size, total);
  assert.deepEqual([...fromA.entries()].sort(), [...fromB.entries()].sort());
  const offsets = [...fromA.values()].sort((x, y) => x - y);
  assert.deepEqual(offsets, Array.from({ length: total }, (_, k) => k + 1));
  // Each sender's own messages got increasing offsets, in the order it sent them.
  for (const tag of ['a', 'b', 'x', 'y']) {
    const mine = [...fromA.entries()].filter(([m]) => m[0] === tag)
      .sort(([m1], [m2]) => Number(m1.slice(1)) - Number(m2.slice(1))).map(([, o]) => o);
    assert.deepEqual(mine, [...mine].sort((x, y) => x - y), `${tag} in order`);
  }
  // The history holds them in offset order, whichever replica reads it.
  const ack = await emitAck(await connect(gwB, user().token), 'join', { channelName: c, history: total });
  assert.deepEqual(ack.items.map((i) => i.data.offset), offsets);
});

test('a flushed Redis gives a new epoch, and an old position is not recovered', { skip }, async () => {
  const c = chan();
  const sender = await connect(gwA, user().token);
  await join(sender, c);
  const v = await connect(gwB, user().token, {
    reconnection: true, reconnectionDelay: 500, reconnectionDelayMax: 500, randomizationFactor: 0,
  });
  await join(v, c);
  await say(sender, c, 'before flush');
  const before = await nextEvent(v, 'chat:new', CROSS_MS);
  assert.equal((await nextEvent(sender, 'chat:new')).message, 'before flush');
  v.io.engine.close();
  await waitDisconnect(v);
  const back = reconnected(v, 10_000);
  assert.match(await redisCommand('FLUSHALL'), /^\+OK/);
  await say(sender, c, 'after flush');
  const after = await nextEvent(sender, 'chat:new');
  assert.notEqual(after.epoch, before.epoch);
  assert.equal(after.offset, 1);
  // The stock client is told it was not recovered.
  await back;
  assert.equal(v.recovered, false);
  // join {since} with the old position: not recovered; the ack names the new stream.
  const ack = await emitAck(await connect(gwB, user().token), 'join',
    { channelName: c, since: { offset: before.offset, epoch: before.epoch } });
  assert.equal(ack.recovered, false);
  assert.equal(ack.epoch, after.epoch);
  assert.deepEqual(ack.items, []);
});

test('while Redis does not answer, chat is delivered without offsets and the stream is renewed after', { skip }, async () => {
  const c = chan();
  const sender = await connect(gwA, user().token);
  await join(sender, c);
  await say(sender, c, 'recorded');
  const recorded = await nextEvent(sender, 'chat:new');
  // Every Redis command waits for 2 s: longer than the gateway's 500 ms budget.
  assert.match(await redisCommand('CLIENT', 'PAUSE', '2000', 'ALL'), /^\+OK/);
  await say(sender, c, 'unrecorded');
  const unrecorded = await nextEvent(sender, 'chat:new', CROSS_MS);
  assert.equal(unrecorded.message, 'unrecorded');
  assert.equal(unrecorded.offset, undefined);
  assert.equal(unrecorded.epoch, undefined);
  // Recovery meanwhile answers honestly, and the metric says why.
  const unavailable = { via: 'join', result: 'store_unavailable' };
  const before = metricValue(await metricsText(gwA), 'live_history_recoveries_total', unavailable);
  const during = await emitAck(await connect(gwA, user().token), 'join',
    { channelName: c, since: { offset: recorded.offset, epoch: recorded.epoch } }, 5000);
  assert.equal(during.recovered, false);
  assert.equal(metricValue(await metricsText(gwA), 'live_history_recoveries_total', unavailable) - before, 1);
  await sleep(2200);
  await say(sender, c, 'recorded again');
  const again = await nextEvent(sender, 'chat:new', CROSS_MS);
  assert.notEqual(again.epoch, recorded.epoch, 'a new stream after the unrecorded item');
  assert.equal(again.offset, 1);
  const ack = await emitAck(await connect(gwB, user().token), 'join',
    { channelName: c, since: { offset: recorded.offset, epoch: recorded.epoch } });
  assert.equal(ack.recovered, false);
});
