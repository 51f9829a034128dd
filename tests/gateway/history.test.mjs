// Channel history on one gateway (in memory): offsets and epochs on every history item, a
// `join` with `since` that recovers a gap exactly, a late joiner's `history: N`, a gap older
// than the history, history switched off, and Socket.IO Connection State Recovery with the
// stock socket.io-client (a viewer who drops for 5 s gets every missed message, in order).

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, connect, closeAllSockets, user, chan, token, emitAck, nextEvent, expectNoEvent,
  join, bridge, sleep, waitDisconnect, assertPosition, refusal, OK, metricsText, metricValue,
} from './harness.mjs';

afterEach(closeAllSockets);

const service = () => token({ userId: 'backend', role: 'service' });
/** Stock-client options for a viewer that reconnects by itself `delayMs` after a drop. */
const reconnecting = (delayMs) => ({
  reconnection: true, reconnectionDelay: delayMs, reconnectionDelayMax: delayMs, randomizationFactor: 0,
});

/** Resolves on the socket's next `connect` (rejects after `ms`). */
function reconnected(socket, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no reconnect within ${ms} ms`)), ms);
    socket.once('connect', () => { clearTimeout(timer); resolve(); });
  });
}

async function say(socket, channelName, message) {
  assert.deepEqual(await emitAck(socket, 'chat:send', { channelName, message }), OK);
}

function writeConfig(text) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'live-history-'));
  const file = path.join(dir, 'gateway.yaml');
  fs.writeFileSync(file, text);
  return { dir, file };
}

describe('history (default bounds)', () => {
  let gw;
  let cfg;
  before(async () => {
    cfg = writeConfig('rateLimits: {messagesPerMinute: 1000, giftsPerMinute: 1000, eventsPerSecond: 1000, eventBurst: 1000}\n');
    gw = await startGateway({ config: cfg.file });
  });
  after(async () => {
    await gw?.stop();
    fs.rmSync(cfg.dir, { recursive: true, force: true });
  });

  /** A sender in a fresh channel and the first message's position, seen by `viewer` too. */
  async function channelWithSender() {
    const channelName = chan();
    const sender = await connect(gw, user().token);
    await join(sender, channelName);
    return { channelName, sender };
  }

  test('every history item carries an offset that increases by one, per channel, and an epoch', async () => {
    const { channelName, sender } = await channelWithSender();
    const other = chan();
    await join(sender, other);
    await say(sender, channelName, 'a');
    await say(sender, other, 'x');
    await say(sender, channelName, 'b');
    const a = await nextEvent(sender, 'chat:new');
    const x = await nextEvent(sender, 'chat:new');
    const b = await nextEvent(sender, 'chat:new');
    for (const p of [a, x, b]) assertPosition(p);
    assert.equal(a.message, 'a');
    assert.equal(b.offset, a.offset + 1);
    assert.equal(b.epoch, a.epoch);
    assert.equal(x.offset, 1);
    assert.notEqual(x.epoch, a.epoch);
  });

  test('presence, join/leave notices and stream metrics are live only: no offset', async () => {
    const { channelName, sender } = await channelWithSender();
    const v = await connect(gw, user().token);
    await emitAck(v, 'join', { channelName });
    const presence = await nextEvent(sender, 'presence:update');
    const system = await nextEvent(sender, 'system:event');
    assert.equal(presence.offset, undefined);
    assert.equal(system.offset, undefined);
    const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/metrics`, { metrics: { viewers: 3 } }, service());
    assert.equal(r.status, 202);
    assert.equal((await nextEvent(sender, 'metrics:update')).offset, undefined);
    const ack = await emitAck(v, 'join', { channelName, history: 50 });
    assert.deepEqual(ack.items, []);
  });

  test('a viewer who drops for 5 s recovers every message in order through join {since}', async () => {
    const { channelName, sender } = await channelWithSender();
    const first = user();
    const v = await connect(gw, first.token);
    await join(v, channelName, { others: [sender] });
    await say(sender, channelName, 'before');
    const last = await nextEvent(v, 'chat:new');
    v.close();
    // Five seconds of chat, a gift, a backend notice and a moderation warning while away.
    const expected = [];
    for (let i = 1; i <= 5; i++) {
      await say(sender, channelName, `missed ${i}`);
      expected.push(['chat:new', `missed ${i}`]);
      await sleep(500);
    }
    assert.deepEqual(await emitAck(sender, 'gift:announce', { channelName, giftId: 'rose', qty: 2 }), OK);
    expected.push(['gift:new', 'rose']);
    let r = await bridge(gw, 'POST', `/v1/channels/${channelName}/system`, { type: 'poll', question: 'ok?' }, service());
    assert.equal(r.status, 202);
    expected.push(['system:event', 'poll']);
    const mod = await connect(gw, user({ role: 'admin' }).token);
    assert.deepEqual(await emitAck(mod, 'mod:decision', { channelName, action: 'warn', reason: 'be nice' }), OK);
    expected.push(['mod:event', 'warn']);
    await sleep(5000 - 5 * 500);

    const back = await connect(gw, first.token);
    const ack = await emitAck(back, 'join', { channelName, since: { offset: last.offset, epoch: last.epoch } });
    assert.equal(ack.ok, true);
    assert.equal(ack.recovered, true);
    assert.equal(ack.epoch, last.epoch);
    assert.equal(ack.offset, last.offset + expected.length);
    assert.deepEqual(
      ack.items.map((i) => [i.event, i.data.message ?? i.data.giftId ?? i.data.type ?? i.data.action]),
      expected,
    );
    assert.deepEqual(ack.items.map((i) => i.data.offset), expected.map((_, k) => last.offset + 1 + k));
    assert.ok(ack.items.every((i) => i.data.epoch === last.epoch));
    assert.ok(metricValue(await metricsText(gw), 'live_history_recoveries_total', { via: 'join', result: 'recovered' }) >= 1);
    // Live items continue right after the acknowledged offset, none repeated.
    await say(sender, channelName, 'after');
    const live = await nextEvent(back, 'chat:new');
    assert.equal(live.message, 'after');
    assert.equal(live.offset, ack.offset + 1);
    await expectNoEvent(back, 'chat:new', 200);
    r = await bridge(gw, 'POST', `/v1/channels/${channelName}/chat`, { userId: 'bot', message: 'hi' }, service());
    assert.equal((await nextEvent(back, 'chat:new')).offset, ack.offset + 2);
  });

  test('items recorded while a join reads history are delivered once, after the acknowledgement', async () => {
    const { channelName, sender } = await channelWithSender();
    await say(sender, channelName, 'one');
    const one = await nextEvent(sender, 'chat:new');
    // Five senders fire 40 messages each without waiting while eight viewers join with since:
    // every item must reach every viewer exactly once, in the acknowledgement or live after it,
    // and no live item may overtake the acknowledgement.
    const senders = [];
    for (let i = 0; i < 5; i++) {
      const s = await connect(gw, user().token);
      await join(s, channelName);
      senders.push(s);
    }
    // Three rounds: each round's joins race a new burst.
    let from = one.offset;
    for (let round = 0; round < 3; round++) from = await joinsDuringBurst(channelName, senders, from);
  });

  async function joinsDuringBurst(channelName, senders, from) {
    const one = { offset: from, epoch: (await channelHead(channelName)).epoch };
    const viewers = [];
    for (let i = 0; i < 8; i++) viewers.push(await connect(gw, user().token));
    const total = 200;
    const seen = viewers.map(() => []);
    viewers.forEach((v, k) => v.onAny((event, payload) => {
      if (event === 'chat:new') seen[k].push(['live', payload.offset]);
    }));
    const acks = viewers.map((v, k) => new Promise((resolve, reject) => {
      v.timeout(10_000).emit('join', { channelName, since: { offset: one.offset, epoch: one.epoch } }, (err, a) => {
        if (err) return reject(err);
        seen[k].push(['ack', a.items.map((i) => i.data.offset)]);
        return resolve(a);
      });
    }));
    for (let n = 0; n < total / senders.length; n++) {
      for (const s of senders) s.emit('chat:send', { channelName, message: `burst ${n}` });
      if (n % 10 === 0) await sleep(1);
    }
    for (const a of await Promise.all(acks)) assert.equal(a.recovered, true);
    const expected = Array.from({ length: total }, (_, k) => from + 1 + k);
    const deadline = Date.now() + 10_000;
    while (seen.some((events) => events.flatMap(([kind, o]) => (kind === 'ack' ? o : [o])).length < total)
      && Date.now() < deadline) await sleep(50);
    await sleep(200);
    seen.forEach((events, k) => {
      assert.equal(events[0][0], 'ack', `viewer ${k}: nothing before the acknowledgement`);
      const all = events.flatMap(([kind, o]) => (kind === 'ack' ? o : [o]));
      assert.deepEqual([...all].sort((x, y) => x - y), expected, `viewer ${k}: each item exactly once`);
    });
    for (const v of viewers) v.close();
    return from + total;
  }

  /** The channel's head, from a throwaway join with history: 0. */
  async function channelHead(channelName) {
    const s = await connect(gw, user().token);
    const ack = await emitAck(s, 'join', { channelName, history: 0 });
    s.close();
    return { offset: ack.offset, epoch: ack.epoch };
  }

  test('a late joiner gets the newest items with history: N, oldest first', async () => {
    const { channelName, sender } = await channelWithSender();
    for (let i = 1; i <= 6; i++) await say(sender, channelName, `m${i}`);
    const late = await connect(gw, user().token);
    const ack = await emitAck(late, 'join', { channelName, history: 3 });
    assert.equal(ack.ok, true);
    assert.equal(ack.recovered, undefined);
    assert.deepEqual(ack.items.map((i) => i.data.message), ['m4', 'm5', 'm6']);
    assert.ok(ack.items.every((i) => i.event === 'chat:new'));
    assert.equal(ack.offset, ack.items[2].data.offset);
    const none = await emitAck(await connect(gw, user().token), 'join', { channelName: chan(), history: 10 });
    assert.deepEqual(none, { ok: true, items: [] });
  });

  test('a position from another epoch, or ahead of the stream, is not recovered', async () => {
    const { channelName, sender } = await channelWithSender();
    await say(sender, channelName, 'm');
    const m = await nextEvent(sender, 'chat:new');
    let ack = await emitAck(await connect(gw, user().token), 'join',
      { channelName, since: { offset: m.offset, epoch: 'ffffffffffff' } });
    assert.equal(ack.recovered, false);
    assert.deepEqual(ack.items, []);
    assert.equal(ack.epoch, m.epoch);
    ack = await emitAck(await connect(gw, user().token), 'join',
      { channelName, since: { offset: m.offset + 10, epoch: m.epoch } });
    assert.equal(ack.recovered, false);
    // An unrecoverable since with history: N still gives the recent items to reload from.
    ack = await emitAck(await connect(gw, user().token), 'join',
      { channelName, since: { offset: 0, epoch: 'ffffffffffff' }, history: 1 });
    assert.equal(ack.recovered, false);
    assert.deepEqual(ack.items.map((i) => i.data.message), ['m']);
  });

  test('a malformed since or history is refused with invalid_history and the socket does not join', async () => {
    const { channelName } = await channelWithSender();
    const s = await connect(gw, user().token);
    const bad = refusal('invalid_history', 'Invalid history request');
    for (const extra of [{ since: 5 }, { since: { offset: -1, epoch: 'ab' } }, { since: { offset: 1, epoch: 'a b' } },
      { history: -1 }, { history: 'all' }]) {
      assert.deepEqual(await emitAck(s, 'join', { channelName, ...extra }), bad, JSON.stringify(extra));
    }
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'x' }),
      refusal('not_member', 'Not a member of this channel'));
  });

  test('a viewer who drops for 5 s is recovered by the stock client, every message in order', async () => {
    const { channelName, sender } = await channelWithSender();
    const v = await connect(gw, user().token, reconnecting(5000));
    await join(v, channelName, { others: [sender] });
    await say(sender, channelName, 'm0');
    const m0 = await nextEvent(v, 'chat:new');
    const dropped = Date.now();
    // The transport drops (as on a network change); the client reconnects by itself after 5 s.
    v.io.engine.close();
    await waitDisconnect(v);
    const back = reconnected(v, 15_000);
    for (let i = 1; i <= 8; i++) {
      await say(sender, channelName, `m${i}`);
      await sleep(250);
    }
    await back;
    assert.ok(Date.now() - dropped >= 4900, 'the drop lasted 5 s');
    assert.equal(v.recovered, true);
    for (let i = 1; i <= 8; i++) {
      const m = await nextEvent(v, 'chat:new');
      assert.equal(m.message, `m${i}`);
      assert.equal(m.offset, m0.offset + i);
      assert.equal(m.epoch, m0.epoch);
    }
    // Still a member, live traffic continues after the replay, nothing twice.
    await say(sender, channelName, 'm9');
    const m9 = await nextEvent(v, 'chat:new');
    assert.equal(m9.offset, m0.offset + 9);
    await expectNoEvent(v, 'chat:new', 300);
    assert.deepEqual(await emitAck(v, 'chat:send', { channelName, message: 'I am back' }), OK);
    const text = await metricsText(gw);
    assert.ok(metricValue(text, 'live_history_recoveries_total', { via: 'connection_state', result: 'recovered' }) >= 1);
    assert.ok(metricValue(text, 'live_history_replayed_items_total') >= 8);
  });

  test('a stock client that received nothing before dropping still gets what it missed', async () => {
    const { channelName, sender } = await channelWithSender();
    await say(sender, channelName, 'before the viewer came');
    const v = await connect(gw, user().token, reconnecting(300));
    await join(v, channelName, { others: [sender] });
    v.io.engine.close();
    await waitDisconnect(v);
    const back = reconnected(v, 10_000);
    await say(sender, channelName, 'while away');
    await back;
    assert.equal(v.recovered, true);
    assert.equal((await nextEvent(v, 'chat:new')).message, 'while away');
  });

  test('a stock client that received nothing in a channel whose stream began after it joined is not recovered', async () => {
    // Conservative on purpose: the new stream may follow items the client never saw.
    const { channelName, sender } = await channelWithSender();
    const v = await connect(gw, user().token, reconnecting(300));
    await join(v, channelName, { others: [sender] });
    v.io.engine.close();
    await waitDisconnect(v);
    const back = reconnected(v, 10_000);
    await say(sender, channelName, 'first ever');
    await back;
    assert.equal(v.recovered, false);
  });

  test('a recovery session is only resumed by its own user, and not after leaving on purpose', async () => {
    const { channelName, sender } = await channelWithSender();
    const alice = user();
    const v = await connect(gw, alice.token, reconnecting(60_000));
    await join(v, channelName, { others: [sender] });
    await say(sender, channelName, 'x');
    await nextEvent(v, 'chat:new');
    const { _pid: pid, _lastOffset: offset } = v;
    assert.match(pid, /^[0-9a-f]{32}$/);
    assert.equal(typeof offset, 'string');
    v.io.engine.close();
    await waitDisconnect(v);
    v.io.reconnection(false);
    // Someone else presenting Alice's pid gets a fresh session, not her channels.
    const mallory = await connect(gw, user().token, { auth: { token: user().token, pid, offset } });
    assert.notEqual(mallory._pid, pid);
    assert.deepEqual(await emitAck(mallory, 'chat:send', { channelName, message: 'hi' }),
      refusal('not_member', 'Not a member of this channel'));
    // Alice herself gets it back (a new client object, so the server's reply is what counts:
    // the same pid, and she is in the channel again without joining).
    const again = await connect(gw, alice.token, { auth: { token: alice.token, pid, offset } });
    assert.equal(again._pid, pid);
    assert.deepEqual(await emitAck(again, 'chat:send', { channelName, message: 'back' }), OK);
    // Leaving on purpose ends the session.
    again.disconnect();
    await sleep(200);
    const third = await connect(gw, alice.token, { auth: { token: alice.token, pid, offset } });
    assert.notEqual(third._pid, pid);
    assert.deepEqual(await emitAck(third, 'chat:send', { channelName, message: 'x' }),
      refusal('not_member', 'Not a member of this channel'));
  });
});

describe('history with small bounds', () => {
  let gw;
  let cfg;
  before(async () => {
    cfg = writeConfig('rateLimits: {messagesPerMinute: 1000}\nhistory: {maxItems: 5}\n');
    gw = await startGateway({ config: cfg.file });
  });
  after(async () => {
    await gw?.stop();
    fs.rmSync(cfg.dir, { recursive: true, force: true });
  });

  test('a gap older than the history is not recovered; history: N is capped at maxItems', async () => {
    const channelName = chan();
    const sender = await connect(gw, user().token);
    await join(sender, channelName);
    await say(sender, channelName, 'm0');
    const m0 = await nextEvent(sender, 'chat:new');
    for (let i = 1; i <= 8; i++) await say(sender, channelName, `m${i}`);
    const since = { offset: m0.offset, epoch: m0.epoch };
    let ack = await emitAck(await connect(gw, user().token), 'join', { channelName, since });
    assert.equal(ack.recovered, false);
    assert.deepEqual(ack.items, []);
    assert.equal(ack.offset, m0.offset + 8);
    ack = await emitAck(await connect(gw, user().token), 'join', { channelName, since, history: 3 });
    assert.equal(ack.recovered, false);
    assert.deepEqual(ack.items.map((i) => i.data.message), ['m6', 'm7', 'm8']);
    ack = await emitAck(await connect(gw, user().token), 'join', { channelName, history: 1000 });
    assert.deepEqual(ack.items.map((i) => i.data.message), ['m4', 'm5', 'm6', 'm7', 'm8']);
    // The newest five are still recoverable.
    ack = await emitAck(await connect(gw, user().token), 'join', { channelName, since: { ...since, offset: m0.offset + 3 } });
    assert.equal(ack.recovered, true);
    assert.deepEqual(ack.items.map((i) => i.data.message), ['m4', 'm5', 'm6', 'm7', 'm8']);
  });

  test('the stock client is told it was not recovered when the gap is older than the history', async () => {
    const channelName = chan();
    const sender = await connect(gw, user().token);
    await join(sender, channelName);
    const v = await connect(gw, user().token, reconnecting(500));
    await join(v, channelName, { others: [sender] });
    await say(sender, channelName, 'seen');
    await nextEvent(v, 'chat:new');
    v.io.engine.close();
    await waitDisconnect(v);
    const back = reconnected(v, 10_000);
    for (let i = 1; i <= 8; i++) await say(sender, channelName, `lost ${i}`);
    await back;
    assert.equal(v.recovered, false);
    // A fresh session: not in the channel until the app joins again, and nothing replayed.
    await expectNoEvent(v, 'chat:new', 300);
    assert.deepEqual(await emitAck(v, 'chat:send', { channelName, message: 'x' }),
      refusal('not_member', 'Not a member of this channel'));
  });
});

describe('history switched off (maxItems 0)', () => {
  let gw;
  let cfg;
  before(async () => {
    cfg = writeConfig('history: {maxItems: 0}\n');
    gw = await startGateway({ config: cfg.file });
  });
  after(async () => {
    await gw?.stop();
    fs.rmSync(cfg.dir, { recursive: true, force: true });
  });

  test('payloads carry no position, recovery is refused and the stock client gets no session', async () => {
    const channelName = chan();
    const s = await connect(gw, user().token, reconnecting(200));
    assert.equal(s._pid, undefined);
    await join(s, channelName);
    await say(s, channelName, 'plain');
    const m = await nextEvent(s, 'chat:new');
    assert.equal(m.offset, undefined);
    assert.equal(m.epoch, undefined);
    const ack = await emitAck(s, 'join', { channelName: chan(), since: { offset: 1, epoch: 'ab' }, history: 5 });
    assert.deepEqual(ack, { ok: true, recovered: false, items: [] });
  });
});
