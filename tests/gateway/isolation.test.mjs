// Rooms are isolated: members of one channel never see another channel's traffic.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, user, chan, emitAck, nextEvent, expectNoEvent,
  join, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

describe('isolation', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test('two users in different channels never see each other\'s presence, chat or gifts', async () => {
    const chA = chan('alpha');
    const chB = chan('beta');
    const sa = await connect(gw, user().token);
    const sb = await connect(gw, user().token);

    assert.deepEqual(await emitAck(sa, 'join', { channelName: chA }), OK);
    assert.deepEqual(await emitAck(sb, 'join', { channelName: chB }), OK);
    // Each sees only its own join.
    assert.equal((await nextEvent(sa, 'presence:update')).channelName, chA);
    assert.equal((await nextEvent(sb, 'presence:update')).channelName, chB);
    await nextEvent(sa, 'system:event');
    await nextEvent(sb, 'system:event');

    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName: chA, message: 'alpha only' }), OK);
    assert.deepEqual(await emitAck(sb, 'chat:send', { channelName: chB, message: 'beta only' }), OK);
    assert.deepEqual(await emitAck(sa, 'gift:announce', { channelName: chA, giftId: 'alpha-gift', qty: 1 }), OK);
    assert.deepEqual(await emitAck(sb, 'gift:announce', { channelName: chB, giftId: 'beta-gift', qty: 1 }), OK);
    assert.equal((await nextEvent(sa, 'chat:new')).message, 'alpha only');
    assert.equal((await nextEvent(sb, 'chat:new')).message, 'beta only');
    assert.equal((await nextEvent(sa, 'gift:new')).giftId, 'alpha-gift');
    assert.equal((await nextEvent(sb, 'gift:new')).giftId, 'beta-gift');

    assert.deepEqual(await emitAck(sb, 'leave', { channelName: chB }), OK);
    for (const [s, name] of [[sa, 'a'], [sb, 'b']]) {
      for (const ev of ['chat:new', 'gift:new', 'presence:update', 'system:event']) {
        await expectNoEvent(s, ev, name === 'a' && ev === 'chat:new' ? 300 : 0);
      }
    }
  });

  test('channel names are matched exactly: "Room" and "room" are different rooms', async () => {
    const base = chan('case');
    const upper = `R${base}`;
    const lower = `r${base}`;
    const su = await connect(gw, user().token);
    const sl = await connect(gw, user().token);
    await join(su, upper);
    await join(sl, lower);
    assert.deepEqual(await emitAck(su, 'chat:send', { channelName: upper, message: 'upper' }), OK);
    await nextEvent(su, 'chat:new');
    await expectNoEvent(sl, 'chat:new');
  });

  test('a socket in two channels gets each channel\'s chat once, tagged by sender', async () => {
    const c1 = chan();
    const c2 = chan();
    const hub = await connect(gw, user().token);
    const u1 = user();
    const u2 = user();
    const s1 = await connect(gw, u1.token);
    const s2 = await connect(gw, u2.token);
    await join(hub, c1);
    await join(hub, c2);
    await join(s1, c1, { others: [hub] });
    await join(s2, c2, { others: [hub] });
    assert.deepEqual(await emitAck(s1, 'chat:send', { channelName: c1, message: 'one' }), OK);
    assert.deepEqual(await emitAck(s2, 'chat:send', { channelName: c2, message: 'two' }), OK);
    const got = [await nextEvent(hub, 'chat:new'), await nextEvent(hub, 'chat:new')]
      .map((e) => `${e.userId}:${e.message}`).sort();
    assert.deepEqual(got, [`${u1.userId}:one`, `${u2.userId}:two`].sort());
    await expectNoEvent(hub, 'chat:new');
    assert.equal((await nextEvent(s1, 'chat:new')).message, 'one');
    assert.equal((await nextEvent(s2, 'chat:new')).message, 'two');
    await expectNoEvent(s1, 'chat:new', 0);
    await expectNoEvent(s2, 'chat:new', 0);
  });
});
