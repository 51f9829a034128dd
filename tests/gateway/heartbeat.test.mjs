// heartbeat: acknowledged to the sender only, never to the room.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, user, chan, emitAck, nextEvent, expectNoEvent,
  join, assertEvent, refusal, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

describe('heartbeat', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test('a heartbeat with an empty object is answered with heartbeat:ack carrying timestamp and userId', async () => {
    const u = user();
    const s = await connect(gw, u.token);
    const since = Date.now();
    assert.deepEqual(await emitAck(s, 'heartbeat', {}), OK);
    assertEvent(await nextEvent(s, 'heartbeat:ack'), { userId: u.userId }, since);
  });

  test('a heartbeat naming a channel is answered to the sender only, never to the room', async () => {
    const a = user();
    const channelName = chan();
    const sa = await connect(gw, a.token);
    const sb = await connect(gw, user().token);
    await join(sb, channelName);
    await join(sa, channelName, { others: [sb] });
    const since = Date.now();
    assert.deepEqual(await emitAck(sa, 'heartbeat', { channelName }), OK);
    assertEvent(await nextEvent(sa, 'heartbeat:ack'), { userId: a.userId }, since);
    await expectNoEvent(sb, 'heartbeat:ack');
  });

  test('a heartbeat without an ack callback still gets heartbeat:ack', async () => {
    const u = user();
    const s = await connect(gw, u.token);
    s.emit('heartbeat', {});
    assert.equal((await nextEvent(s, 'heartbeat:ack')).userId, u.userId);
  });

  test('a heartbeat with an invalid channel name is refused with invalid_channel and gets no heartbeat:ack', async () => {
    const s = await connect(gw, user().token);
    assert.deepEqual(await emitAck(s, 'heartbeat', { channelName: 'bad name!' }),
      refusal('invalid_channel', 'Invalid channel name'));
    assert.deepEqual(await nextEvent(s, 'error'), { message: 'Invalid channel name', code: 'invalid_channel' });
    await expectNoEvent(s, 'heartbeat:ack');
  });
});
