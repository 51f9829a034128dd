// Presence churn (issue 11, point 3): a socket's join and leave of a channel within
// presence.batchIntervalMs coalesce, so a socket toggling its membership cannot make every
// member receive two events per toggle. 200 join+leave toggles used to deliver 40,000 events to
// 50 bystanders.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, connect, closeAllSockets, user, chan, emitAck, join, clearEvents, nextEvent, sleep, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

const BYSTANDERS = 50;
const TOGGLES = 200;

/** Presence and system events each bystander received. */
function presenceEvents(sockets) {
  return sockets.map((s) => s._events_log.filter((e) => e.name === 'presence:update' || e.name === 'system:event'));
}

async function roomWithBystanders(gw, channelName) {
  const bystanders = [];
  for (let i = 0; i < BYSTANDERS; i++) {
    const s = await connect(gw, user().token);
    assert.deepEqual(await emitAck(s, 'join', { channelName }), OK);
    bystanders.push(s);
  }
  await sleep(1500); // let the joins' own announcements land, then count from zero
  clearEvents(...bystanders);
  return bystanders;
}

/** Joins and leaves `TOGGLES` times; returns the acks. Stops if the gateway disconnects the
 * socket (its event budget may). */
async function toggle(s, channelName) {
  const acks = [];
  for (let i = 0; i < TOGGLES && s.connected; i++) {
    for (const event of ['join', 'leave']) {
      acks.push(await emitAck(s, event, { channelName }, 5000).catch((e) => ({ lost: e.message })));
    }
  }
  return acks;
}

describe('presence churn, default settings', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test(`${TOGGLES} join+leave toggles do not deliver ${4 * TOGGLES} events to each of ${BYSTANDERS} bystanders`, async () => {
    const channelName = chan();
    const bystanders = await roomWithBystanders(gw, channelName);
    const toggler = await connect(gw, user().token);
    const started = Date.now();
    await toggle(toggler, channelName);
    const seconds = (Date.now() - started) / 1000;
    await sleep(2500);
    const total = presenceEvents(bystanders).reduce((n, evs) => n + evs.length, 0);
    // At most a join and a leave at once, then one change (two events) per 1 s flush.
    const bound = BYSTANDERS * (4 + 2 * Math.ceil(seconds + 2));
    assert.ok(total <= bound,
      `${total} presence events reached the bystanders in ${seconds.toFixed(1)} s (bound ${bound}; was ${BYSTANDERS * 4 * TOGGLES})`);
  });
});

describe('presence churn, with an event budget large enough for every toggle', () => {
  let gw;
  let dir;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-churn-'));
    const config = path.join(dir, 'gateway.yaml');
    fs.writeFileSync(config, 'rateLimits: {eventsPerSecond: 10000, eventBurst: 10000}\n');
    gw = await startGateway({ config, args: ['--max-packets-per-second', '10000'] });
  });
  after(async () => {
    await gw?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('every toggle is accepted, bystanders see at most one announcement per interval, and the last one is the real state', async () => {
    const channelName = chan();
    const bystanders = await roomWithBystanders(gw, channelName);
    const toggler = user();
    const s = await connect(gw, toggler.token);
    const started = Date.now();
    const acks = await toggle(s, channelName);
    const seconds = (Date.now() - started) / 1000;
    assert.equal(acks.filter((a) => a.ok).length, 2 * TOGGLES, 'every toggle was accepted');
    await sleep(2500); // two flush intervals: whatever was held is announced
    for (const evs of presenceEvents(bystanders)) {
      const mine = evs.filter((e) => e.args[0].userId === toggler.userId);
      // A join and a leave announced at once, then at most a presence:update and a
      // system:event per 1 s flush while the toggling lasts.
      assert.ok(mine.length <= 4 + 2 * Math.ceil(seconds + 1), `${mine.length} events in ${seconds.toFixed(1)} s`);
      const last = mine.filter((e) => e.name === 'system:event').at(-1);
      assert.equal(last?.args[0].type, 'leave', 'members end up knowing the socket left');
    }
  });

  test('a single join and leave are still announced at once', async () => {
    const channelName = chan();
    const a = await connect(gw, user().token);
    await join(a, channelName);
    const b = user();
    const sb = await connect(gw, b.token);
    await join(sb, channelName, { others: [a] });
    await sleep(1100);
    clearEvents(a);
    assert.deepEqual(await emitAck(sb, 'leave', { channelName }), OK);
    // Held changes wait for the 1 s flush; this one must come well before it.
    const ev = await nextEvent(a, 'system:event', 700);
    assert.equal(ev.type, 'leave');
    assert.equal(ev.userId, b.userId);
  });
});
