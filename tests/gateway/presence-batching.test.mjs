// Presence coalescing: from `presence.batchThreshold` local members on, joins and leaves are
// announced as one batched presence:update per `presence.batchIntervalMs`, not one per socket.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, user, chan, connect, join, emitAck, nextEvent, expectNoEvent, closeAllSockets,
  OK, assertTimestamp,
} from './harness.mjs';

let gw;
let dir;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-presence-'));
  const config = path.join(dir, 'gateway.yaml');
  fs.writeFileSync(config, 'presence: {batchThreshold: 2, batchIntervalMs: 300}\n');
  gw = await startGateway({ config });
});

after(async () => {
  closeAllSockets();
  await gw?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(() => closeAllSockets());

test('joins below the threshold are announced one by one, then batched with exact counts', async () => {
  const c = chan();
  const first = await connect(gw, user().token);
  const second = await connect(gw, user().token);
  await join(first, c);
  await join(second, c, { others: [first] }); // one member before: announced at once

  const newcomers = [user(), user(), user()];
  const sockets = [];
  const since = Date.now();
  for (const u of newcomers) {
    const s = await connect(gw, u.token);
    assert.deepEqual(await emitAck(s, 'join', { channelName: c }), OK);
    // The joiner still gets its own metrics:ping, but no per-socket presence.
    await nextEvent(s, 'metrics:ping');
    sockets.push(s);
  }
  await expectNoEvent(first, 'system:event', 50);
  const batch = await nextEvent(first, 'presence:update', 2000);
  const { timestamp, ...rest } = batch;
  assertTimestamp(timestamp, since);
  assert.deepEqual(rest, {
    channelName: c,
    delta: 3,
    joins: 3,
    leaves: 0,
    joinedUserIds: newcomers.map((u) => u.userId),
    leftUserIds: [],
    batched: true,
  });
  // Exactly one batch for the three joins.
  await expectNoEvent(first, 'presence:update', 500);

  sockets[0].close();
  const leaveBatch = await nextEvent(first, 'presence:update', 2000);
  assert.equal(leaveBatch.batched, true);
  assert.equal(leaveBatch.leaves, 1);
  assert.equal(leaveBatch.delta, -1);
  assert.deepEqual(leaveBatch.leftUserIds, [newcomers[0].userId]);
  await expectNoEvent(first, 'system:event', 100);
});

test('a small room keeps per-socket presence', async () => {
  const c = chan();
  const a = await connect(gw, user().token);
  await join(a, c);
  const bob = user();
  const b = await connect(gw, bob.token);
  assert.deepEqual(await emitAck(b, 'join', { channelName: c }), OK);
  const p = await nextEvent(a, 'presence:update');
  assert.equal(p.userId, bob.userId);
  assert.equal(p.delta, 1);
  assert.equal(p.batched, undefined);
  assert.equal((await nextEvent(a, 'system:event')).type, 'join');
});
