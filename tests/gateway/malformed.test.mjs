// Malformed input: wrong payload types, unknown events and oversized frames never crash the
// gateway, never disconnect a well-behaved socket, and never affect other clients.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, user, chan, emitAck, nextEvent, expectNoEvent,
  join, refusal, waitDisconnect, OK, NO_PAYLOAD,
} from './harness.mjs';

afterEach(closeAllSockets);

const INVALID_PAYLOAD = refusal('invalid_payload', 'Invalid payload');
const EVENTS = ['join', 'leave', 'chat:send', 'gift:announce', 'mod:decision', 'heartbeat'];
const PAYLOADS = { 'a number': 42, 'a string': 'channel-1', 'an array': [{ channelName: 'x' }], 'null': null, 'nothing': NO_PAYLOAD };

describe('malformed input', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  /** Proves a socket still works: join a fresh channel and chat. */
  async function stillWorks(s) {
    const channelName = chan();
    await join(s, channelName);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'still alive' }), OK);
    assert.equal((await nextEvent(s, 'chat:new')).message, 'still alive');
  }

  for (const event of EVENTS) {
    test(`${event} with a non-object payload is refused with invalid_payload each time and the socket keeps working`, async () => {
      const s = await connect(gw, user({ role: 'admin' }).token);
      for (const [what, payload] of Object.entries(PAYLOADS)) {
        assert.deepEqual(await emitAck(s, event, payload), INVALID_PAYLOAD, `${event} with ${what}`);
        assert.deepEqual(await nextEvent(s, 'error'), { message: 'Invalid payload', code: 'invalid_payload' }, `${event} with ${what}`);
      }
      assert.equal(s.connected, true);
      await stillWorks(s);
    });
  }

  test('unknown event names are ignored and the socket keeps working', async () => {
    const s = await connect(gw, user().token);
    s.emit('does:not:exist', { channelName: chan() });
    s.emit('__proto__', {});
    s.emit('constructor', 1);
    await expectNoEvent(s, 'error', 200);
    assert.equal(s.connected, true);
    await stillWorks(s);
  });

  test('extra unknown fields in a payload are ignored', async () => {
    const s = await connect(gw, user().token);
    const channelName = chan();
    assert.deepEqual(await emitAck(s, 'join', { channelName, role: 'viewer', foo: { bar: [1, 2] } }), OK);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'hi', extra: true }), OK);
  });

  test('a frame just under 64 KiB is handled normally: refused by length, socket still connected', async () => {
    const s = await connect(gw, user().token);
    const channelName = chan();
    await join(s, channelName);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'x'.repeat(60 * 1024) }),
      refusal('invalid_message_length', 'Invalid message length'));
    assert.equal(s.connected, true);
    await stillWorks(s);
  });

  test('a message over 64 KiB closes only the sending socket; others keep chatting and new clients connect', async () => {
    const channelName = chan();
    const bystander = await connect(gw, user().token);
    const big = await connect(gw, user().token);
    await join(bystander, channelName);
    await join(big, channelName, { others: [bystander] });

    big.emit('chat:send', { channelName, message: 'x'.repeat(70 * 1024) });
    const { reason } = await waitDisconnect(big, 5000);
    assert.match(reason, /^transport (close|error)$/);
    await expectNoEvent(bystander, 'chat:new', 100);

    assert.equal(bystander.connected, true);
    assert.deepEqual(await emitAck(bystander, 'chat:send', { channelName, message: 'unaffected' }), OK);
    assert.equal((await nextEvent(bystander, 'chat:new')).message, 'unaffected');

    const fresh = await connect(gw, user().token);
    await stillWorks(fresh);
  });

  test('after a burst of malformed input from one client, a different client can connect and chat', async () => {
    const bad = await connect(gw, user().token);
    for (const event of EVENTS) {
      for (const payload of [NaN, -1, '', [], { channelName: {} }, { channelName: 'ok', message: { $gt: '' } }]) {
        bad.emit(event, payload);
      }
    }
    bad.emit('chat:send', { channelName: 'x'.repeat(10_000), message: 'y' });
    const good = await connect(gw, user().token);
    await stillWorks(good);
    await stillWorks(bad);
  });
});
