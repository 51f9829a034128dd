// Joining and leaving channels: presence and system events, validation, disconnect cleanup.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, user, chan, emitAck, nextEvent, expectNoEvent,
  clearEvents, join, assertEvent, refusal, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

describe('join and leave', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test('joining sends presence:update and system:event to the room, joiner included, and metrics:ping to the joiner only', async () => {
    const a = user();
    const b = user();
    const channelName = chan();
    const sa = await connect(gw, a.token);
    const sb = await connect(gw, b.token);
    await join(sa, channelName);

    const since = Date.now();
    assert.deepEqual(await emitAck(sb, 'join', { channelName }), OK);
    for (const s of [sa, sb]) {
      assertEvent(await nextEvent(s, 'presence:update'), { channelName, delta: 1, userId: b.userId }, since);
      assertEvent(await nextEvent(s, 'system:event'),
        { type: 'join', userId: b.userId, username: b.username, role: 'viewer' }, since);
    }
    assertEvent(await nextEvent(sb, 'metrics:ping'), { channelName }, since);
    await expectNoEvent(sa, 'metrics:ping');
  });

  test('a join emitted immediately after connecting is always handled (200 connect-then-join rounds)', async () => {
    const lost = [];
    for (let i = 0; i < 200; i++) {
      const s = await connect(gw, user().token);
      const ack = await emitAck(s, 'join', { channelName: chan() }, 1000).catch((e) => e.message);
      if (JSON.stringify(ack) !== JSON.stringify(OK)) lost.push({ round: i, ack });
      s.close();
    }
    assert.deepEqual(lost, [], 'joins sent right after connect that got no ok ack');
  });

  test('joining as host with a host token reports role host in the system event', async () => {
    const a = user({ role: 'host' });
    const channelName = chan();
    const s = await connect(gw, a.token);
    const since = Date.now();
    assert.deepEqual(await emitAck(s, 'join', { channelName, role: 'host' }), OK);
    assertEvent(await nextEvent(s, 'system:event'),
      { type: 'join', userId: a.userId, username: a.username, role: 'host' }, since);
  });

  test('a token without username joins with username null', async () => {
    const a = user({ username: undefined });
    const channelName = chan();
    const s = await connect(gw, a.token);
    const since = Date.now();
    assert.deepEqual(await emitAck(s, 'join', { channelName }), OK);
    assertEvent(await nextEvent(s, 'system:event'),
      { type: 'join', userId: a.userId, username: null, role: 'viewer' }, since);
  });

  test('a 64-character channel name made of letters, digits, _ . - is accepted', async () => {
    const s = await connect(gw, user().token);
    const channelName = `A1_.-${'x'.repeat(59)}`;
    assert.equal(channelName.length, 64);
    assert.deepEqual(await emitAck(s, 'join', { channelName }), OK);
  });

  const badNames = {
    'an empty name': '',
    'a name starting with -': '-abc',
    'a name starting with _': '_abc',
    'a name with a space': 'a b',
    'a name with a slash': 'a/b',
    'a name with a colon': 'channel:x',
    'a 65-character name': `a${'b'.repeat(64)}`,
    'a non-ASCII name': 'kanal-ü',
    'a number': 123,
    'null': null,
  };
  for (const [what, channelName] of Object.entries(badNames)) {
    test(`joining with ${what} is refused with invalid_channel and an error event`, async () => {
      const s = await connect(gw, user().token);
      assert.deepEqual(await emitAck(s, 'join', { channelName }), refusal('invalid_channel', 'Invalid channel name'));
      assert.deepEqual(await nextEvent(s, 'error'), { message: 'Invalid channel name', code: 'invalid_channel' });
    });
  }

  test('joining without channelName is refused with invalid_channel', async () => {
    const s = await connect(gw, user().token);
    assert.deepEqual(await emitAck(s, 'join', {}), refusal('invalid_channel', 'Invalid channel name'));
  });

  for (const role of ['admin', 'HOST', '', 5]) {
    test(`joining with role ${JSON.stringify(role)} is refused with invalid_role and nobody is told`, async () => {
      const channelName = chan();
      const watcher = await connect(gw, user().token);
      await join(watcher, channelName);
      const s = await connect(gw, user().token);
      assert.deepEqual(await emitAck(s, 'join', { channelName, role }), refusal('invalid_role', 'Invalid role'));
      assert.deepEqual(await nextEvent(s, 'error'), { message: 'Invalid role', code: 'invalid_role' });
      await expectNoEvent(watcher, 'presence:update');
    });
  }

  test('joining a channel the socket already joined acks ok and emits nothing', async () => {
    const channelName = chan();
    const s = await connect(gw, user().token);
    const other = await connect(gw, user().token);
    await join(other, channelName);
    await join(s, channelName, { others: [other] });
    assert.deepEqual(await emitAck(s, 'join', { channelName }), OK);
    await expectNoEvent(s, 'presence:update');
    await expectNoEvent(s, 'system:event');
    await expectNoEvent(s, 'metrics:ping', 0);
    await expectNoEvent(other, 'presence:update', 0);
    await expectNoEvent(other, 'system:event', 0);
  });

  test('leaving tells the remaining members but not the leaver', async () => {
    const a = user();
    const b = user();
    const channelName = chan();
    const sa = await connect(gw, a.token);
    const sb = await connect(gw, b.token);
    await join(sa, channelName);
    await join(sb, channelName, { others: [sa] });

    const since = Date.now();
    assert.deepEqual(await emitAck(sb, 'leave', { channelName }), OK);
    assertEvent(await nextEvent(sa, 'presence:update'), { channelName, delta: -1, userId: b.userId }, since);
    assertEvent(await nextEvent(sa, 'system:event'), { type: 'leave', userId: b.userId, username: b.username }, since);
    await expectNoEvent(sb, 'presence:update');
    await expectNoEvent(sb, 'system:event', 0);
  });

  test('after leaving, the socket no longer receives room chat', async () => {
    const channelName = chan();
    const sa = await connect(gw, user().token);
    const sb = await connect(gw, user().token);
    await join(sa, channelName);
    await join(sb, channelName, { others: [sa] });
    assert.deepEqual(await emitAck(sb, 'leave', { channelName }), OK);
    clearEvents(sa, sb);
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: 'still here?' }), OK);
    await nextEvent(sa, 'chat:new');
    await expectNoEvent(sb, 'chat:new');
  });

  test('leaving a channel the socket is not in is refused with not_member and an error event', async () => {
    const s = await connect(gw, user().token);
    assert.deepEqual(await emitAck(s, 'leave', { channelName: chan() }),
      refusal('not_member', 'Not a member of this channel'));
    assert.deepEqual(await nextEvent(s, 'error'), { message: 'Not a member of this channel', code: 'not_member' });
  });

  test('leaving with an invalid channel name is refused with invalid_channel', async () => {
    const s = await connect(gw, user().token);
    assert.deepEqual(await emitAck(s, 'leave', { channelName: 'no spaces' }),
      refusal('invalid_channel', 'Invalid channel name'));
  });

  test('disconnecting sends leave presence and system events to every channel the socket was in', async () => {
    const leaver = user();
    const c1 = chan();
    const c2 = chan();
    const w1 = await connect(gw, user().token);
    const w2 = await connect(gw, user().token);
    const sl = await connect(gw, leaver.token);
    await join(w1, c1);
    await join(w2, c2);
    await join(sl, c1, { others: [w1] });
    await join(sl, c2, { others: [w2] });

    const since = Date.now();
    sl.close();
    for (const [w, channelName] of [[w1, c1], [w2, c2]]) {
      assertEvent(await nextEvent(w, 'presence:update'), { channelName, delta: -1, userId: leaver.userId }, since);
      assertEvent(await nextEvent(w, 'system:event'),
        { type: 'leave', userId: leaver.userId, username: leaver.username }, since);
    }
  });

  test('a socket can leave and join the same channel again', async () => {
    const a = user();
    const channelName = chan();
    const s = await connect(gw, a.token);
    await join(s, channelName);
    assert.deepEqual(await emitAck(s, 'leave', { channelName }), OK);
    // A leave and a join within presence.batchIntervalMs cancel out: no announcement, but the
    // joiner is a member again (see presence-churn.test.mjs).
    assert.deepEqual(await emitAck(s, 'join', { channelName }), OK);
    await nextEvent(s, 'metrics:ping');
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'back' }), OK);
    assert.equal((await nextEvent(s, 'chat:new')).message, 'back');
  });
});
