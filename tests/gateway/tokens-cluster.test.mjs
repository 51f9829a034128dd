// Disconnecting a user everywhere: two real gateway processes sharing a real redis-server. A
// bridge call on one replica reaches the user's sockets on both, through the Socket.IO adapter.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  startGateway, user, chan, connect, join, nextEvent, expectNoEvent, waitDisconnect,
  closeAllSockets, bridge, freePort, sleep, token, uid, OK,
} from './harness.mjs';

const redisBin = process.env.REDIS_SERVER_BIN ?? 'redis-server';
const haveRedis = spawnSync(redisBin, ['--version']).status === 0;
const skip = haveRedis ? false : `${redisBin} not found (scripts/test.sh installs it)`;
/** Cross-replica waits assert delivery, not latency: generous for a loaded 2-core machine. */
const CROSS_MS = 5000;

let redis;
let gw1;
let gw2;

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

before(async () => {
  if (skip) return;
  const port = await freePort();
  redis = await startRedis(port);
  const env = { REDIS_URL: `redis://127.0.0.1:${port}`, LIVE_REDIS_PREFIX: uid('tok').replace(/-/g, '_') };
  gw1 = await startGateway({ env: { ...env, POD_NAME: 'replica-1' } });
  gw2 = await startGateway({ env: { ...env, POD_NAME: 'replica-2' } });
});

after(async () => {
  closeAllSockets();
  await Promise.all([gw1?.stop(), gw2?.stop()]);
  if (redis) {
    const exited = new Promise((r) => redis.once('exit', r));
    redis.kill('SIGKILL');
    await exited;
  }
});

afterEach(() => closeAllSockets());

test('a bridge call on one replica disconnects the user on every replica, and only that user', { skip }, async () => {
  const c = chan();
  const target = user();
  const bystander = user();
  const onOne = await connect(gw1, target.token);
  const onTwo = await connect(gw2, target.token);
  const onTwoPolling = await connect(gw2, target.token, { transports: ['polling'] });
  const other = await connect(gw2, bystander.token);
  await join(other, c);
  await join(onOne, c);
  await nextEvent(other, 'presence:update', CROSS_MS);
  await nextEvent(other, 'system:event', CROSS_MS);

  const svc = token({ userId: 'backend', role: 'service' });
  const r = await bridge(gw1, 'POST', `/v1/users/${encodeURIComponent(target.userId)}/disconnect`, undefined, svc);
  assert.equal(r.status, 202, r.text);
  assert.deepEqual(r.json, OK);

  for (const s of [onOne, onTwo, onTwoPolling]) {
    const revoked = await nextEvent(s, 'auth:revoked', CROSS_MS);
    assert.equal(revoked.code, 'revoked');
    assert.equal((await waitDisconnect(s, CROSS_MS)).reason, 'io server disconnect');
  }
  // The bystander on replica 2 sees the target's socket on replica 1 leave, and stays.
  const left = await nextEvent(other, 'presence:update', CROSS_MS);
  assert.equal(left.userId, target.userId);
  assert.equal(left.delta, -1);
  await expectNoEvent(other, 'auth:revoked', 300);
  assert.equal(other.connected, true);
});
