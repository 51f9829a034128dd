// The core flows work the same over the websocket and the long-polling transports,
// including between a websocket client and a polling client in the same room.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, connectError, closeAllSockets, user, chan, emitAck, nextEvent, expectNoEvent,
  join, assertEvent, refusal, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

describe('transports', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  for (const transports of [['websocket'], ['polling']]) {
    const t = transports[0];

    test(`over ${t}: an invalid token is refused with unauthorized`, async () => {
      const err = await connectError(gw, 'garbage', { transports });
      assert.equal(err.message, 'unauthorized');
    });

    test(`over ${t}: join, chat, gift, heartbeat, a refusal and leave all behave as specified`, async () => {
      const a = user({ role: 'host' });
      const b = user();
      const channelName = chan();
      const sa = await connect(gw, a.token, { transports });
      const sb = await connect(gw, b.token, { transports });
      assert.equal(sa.io.engine.transport.name, t);

      let since = Date.now();
      assert.deepEqual(await emitAck(sa, 'join', { channelName, role: 'host' }), OK);
      assertEvent(await nextEvent(sa, 'presence:update'), { channelName, delta: 1, userId: a.userId }, since);
      assertEvent(await nextEvent(sa, 'system:event'), { type: 'join', userId: a.userId, username: a.username, role: 'host' }, since);
      assertEvent(await nextEvent(sa, 'metrics:ping'), { channelName }, since);
      await join(sb, channelName, { others: [sa] });

      since = Date.now();
      assert.deepEqual(await emitAck(sb, 'chat:send', { channelName, message: '<b>hi</b> there' }), OK);
      for (const s of [sa, sb]) {
        assertEvent(await nextEvent(s, 'chat:new'), { userId: b.userId, username: b.username, message: 'hi there' }, since);
      }

      since = Date.now();
      assert.deepEqual(await emitAck(sb, 'gift:announce', { channelName, giftId: 'rose', qty: 2 }), OK);
      for (const s of [sa, sb]) {
        assertEvent(await nextEvent(s, 'gift:new'), { from: b.userId, fromUsername: b.username, giftId: 'rose', qty: 2 }, since);
      }

      since = Date.now();
      assert.deepEqual(await emitAck(sb, 'heartbeat', { channelName }), OK);
      assertEvent(await nextEvent(sb, 'heartbeat:ack'), { userId: b.userId }, since);

      assert.deepEqual(await emitAck(sb, 'chat:send', { channelName, message: '' }),
        refusal('invalid_message_length', 'Invalid message length'));
      assert.deepEqual(await nextEvent(sb, 'error'), { message: 'Invalid message length', code: 'invalid_message_length' });

      since = Date.now();
      assert.deepEqual(await emitAck(sb, 'leave', { channelName }), OK);
      assertEvent(await nextEvent(sa, 'presence:update'), { channelName, delta: -1, userId: b.userId }, since);
      assertEvent(await nextEvent(sa, 'system:event'), { type: 'leave', userId: b.userId, username: b.username }, since);
      await expectNoEvent(sb, 'presence:update', 200);
      await expectNoEvent(sa, 'heartbeat:ack', 0);
    });

    test(`over ${t}: disconnecting tells the room`, async () => {
      const a = user();
      const channelName = chan();
      const watcher = await connect(gw, user().token, { transports });
      const sa = await connect(gw, a.token, { transports });
      await join(watcher, channelName);
      await join(sa, channelName, { others: [watcher] });
      const since = Date.now();
      sa.close();
      assertEvent(await nextEvent(watcher, 'presence:update', 5000), { channelName, delta: -1, userId: a.userId }, since);
    });
  }

  test('a websocket client and a polling client in the same room hear each other', async () => {
    const channelName = chan();
    const ws = await connect(gw, user().token, { transports: ['websocket'] });
    const lp = await connect(gw, user().token, { transports: ['polling'] });
    await join(ws, channelName);
    await join(lp, channelName, { others: [ws] });
    assert.deepEqual(await emitAck(ws, 'chat:send', { channelName, message: 'from ws' }), OK);
    assert.equal((await nextEvent(lp, 'chat:new')).message, 'from ws');
    assert.equal((await nextEvent(ws, 'chat:new')).message, 'from ws');
    assert.deepEqual(await emitAck(lp, 'chat:send', { channelName, message: 'from polling' }), OK);
    assert.equal((await nextEvent(ws, 'chat:new')).message, 'from polling');
    assert.equal((await nextEvent(lp, 'chat:new')).message, 'from polling');
  });

  test('a client starting on polling upgrades to websocket and keeps its room membership', async () => {
    const channelName = chan();
    const s = await connect(gw, user().token, { transports: ['polling', 'websocket'] });
    await join(s, channelName);
    const deadline = Date.now() + 5000;
    while (s.io.engine.transport.name !== 'websocket' && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(s.io.engine.transport.name, 'websocket');
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'upgraded' }), OK);
    assert.equal((await nextEvent(s, 'chat:new')).message, 'upgraded');
  });
});
