// chat:send: delivery, sanitizing, validation order, length limits and the per-user rate limit.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, user, chan, emitAck, nextEvent, expectNoEvent,
  join, assertEvent, refusal, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

const RATE_LIMITED = refusal('rate_limited', 'Rate limit exceeded for messages');

describe('chat', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  /** Two members of a fresh channel: {channelName, a, b, sa, sb}. */
  async function room() {
    const a = user();
    const b = user();
    const channelName = chan();
    const sa = await connect(gw, a.token);
    const sb = await connect(gw, b.token);
    await join(sa, channelName);
    await join(sb, channelName, { others: [sa] });
    return { channelName, a, b, sa, sb };
  }

  test('a user\'s messages reach the room in the order sent, also right after a join that was not awaited', async () => {
    // Repeated: before each socket's events were handled in order, 17 rounds in 20 came out
    // shuffled or refused as not_member.
    for (let round = 0; round < 5; round++) {
      const channelName = chan();
      const sa = await connect(gw, user().token);
      const sb = await connect(gw, user().token);
      await join(sb, channelName);
      sa.emit('join', { channelName });
      const sent = ['m0', 'm1', 'm2', 'm3', 'm4'];
      const acks = await Promise.all(sent.map((message) => emitAck(sa, 'chat:send', { channelName, message })));
      assert.deepEqual(acks, sent.map(() => OK), `round ${round}`);
      const got = [];
      for (let i = 0; i < sent.length; i++) got.push((await nextEvent(sb, 'chat:new')).message);
      assert.deepEqual(got, sent, `round ${round}`);
      sa.close();
      sb.close();
    }
  });

  test('a chat message reaches every member, sender included, with userId, username and timestamp', async () => {
    const { channelName, a, sa, sb } = await room();
    const since = Date.now();
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: 'hello room' }), OK);
    for (const s of [sa, sb]) {
      assertEvent(await nextEvent(s, 'chat:new'),
        { userId: a.userId, username: a.username, message: 'hello room' }, since);
    }
  });

  const sanitized = {
    '<script>alert("xss")</script>Hello': 'Hello',
    '<b>hi</b> & <i>you</i>': 'hi &amp; you',
    '<a href="javascript:alert(1)" onclick="x()">link</a> text': 'link text',
    '<style>body{display:none}</style>visible': 'visible',
    '<img src=x onerror=alert(1)>pic': 'pic',
    '  padded  ': 'padded',
    '1 < 2 > 0': '1 &lt; 2 &gt; 0',
    'plain text stays': 'plain text stays',
  };
  for (const [input, output] of Object.entries(sanitized)) {
    test(`the message ${JSON.stringify(input)} is delivered as ${JSON.stringify(output)}`, async () => {
      const { channelName, sa, sb } = await room();
      assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: input }), OK);
      assert.equal((await nextEvent(sb, 'chat:new')).message, output);
    });
  }

  test('a message of exactly 500 characters is accepted', async () => {
    const { channelName, sa, sb } = await room();
    const message = 'x'.repeat(500);
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message }), OK);
    assert.equal((await nextEvent(sb, 'chat:new')).message, message);
  });

  test('a message of 501 characters is refused with invalid_message_length and not delivered', async () => {
    const { channelName, sa, sb } = await room();
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: 'x'.repeat(501) }),
      refusal('invalid_message_length', 'Invalid message length'));
    assert.deepEqual(await nextEvent(sa, 'error'),
      { message: 'Invalid message length', code: 'invalid_message_length' });
    await expectNoEvent(sb, 'chat:new');
  });

  test('length is counted before sanitizing: 495 chars wrapped in <b></b> are refused', async () => {
    const { channelName, sa } = await room();
    const message = `<b>${'y'.repeat(495)}</b>`;
    assert.equal(message.length, 502);
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message }),
      refusal('invalid_message_length', 'Invalid message length'));
  });

  test('length is counted in characters, not bytes: 500 accented letters (1000 bytes) are accepted', async () => {
    const { channelName, sa, sb } = await room();
    const message = 'é'.repeat(500);
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message }), OK);
    assert.equal((await nextEvent(sb, 'chat:new')).message, message);
  });

  test('an empty message is refused with invalid_message_length', async () => {
    const { channelName, sa } = await room();
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: '' }),
      refusal('invalid_message_length', 'Invalid message length'));
  });

  test('a message that is empty after sanitizing is refused with empty_message and not delivered', async () => {
    const { channelName, sa, sb } = await room();
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: '<script>x()</script>   ' }),
      refusal('empty_message', 'Message cannot be empty'));
    assert.deepEqual(await nextEvent(sa, 'error'), { message: 'Message cannot be empty', code: 'empty_message' });
    await expectNoEvent(sb, 'chat:new');
  });

  for (const message of [42, null, { text: 'hi' }, ['hi'], true]) {
    test(`a message that is ${JSON.stringify(message)} instead of a string is refused with invalid_payload`, async () => {
      const { channelName, sa } = await room();
      assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message }),
        refusal('invalid_payload', 'Invalid payload'));
    });
  }

  test('a missing message is refused with invalid_payload', async () => {
    const { channelName, sa } = await room();
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName }), refusal('invalid_payload', 'Invalid payload'));
  });

  test('chat to an invalid channel name is refused with invalid_channel before membership is checked', async () => {
    const s = await connect(gw, user().token);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName: 'bad name', message: 'hi' }),
      refusal('invalid_channel', 'Invalid channel name'));
  });

  test('chat to a channel the socket has not joined is refused with not_member and the room hears nothing', async () => {
    const { channelName, sa } = await room();
    const outsider = await connect(gw, user().token);
    assert.deepEqual(await emitAck(outsider, 'chat:send', { channelName, message: 'let me in' }),
      refusal('not_member', 'Not a member of this channel'));
    await expectNoEvent(sa, 'chat:new');
  });

  test('membership is checked before the message type: a non-member sending a number gets not_member', async () => {
    const s = await connect(gw, user().token);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName: chan(), message: 42 }),
      refusal('not_member', 'Not a member of this channel'));
  });

  test('a refusal emits the error event to the sender only', async () => {
    const { channelName, sa, sb } = await room();
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: '' }),
      refusal('invalid_message_length', 'Invalid message length'));
    await nextEvent(sa, 'error');
    await expectNoEvent(sb, 'error');
  });

  test('a refused chat without an ack callback still emits the error event', async () => {
    const s = await connect(gw, user().token);
    s.emit('chat:send', { channelName: chan(), message: 'hi' });
    assert.deepEqual(await nextEvent(s, 'error'), { message: 'Not a member of this channel', code: 'not_member' });
  });

  test('a chat:send without an ack callback is still delivered', async () => {
    const { channelName, a, sa, sb } = await room();
    sa.emit('chat:send', { channelName, message: 'no ack' });
    const ev = await nextEvent(sb, 'chat:new');
    assert.equal(ev.userId, a.userId);
    assert.equal(ev.message, 'no ack');
  });

  test('the 31st message within a minute is refused with rate_limited and not delivered', async () => {
    const { channelName, sa, sb } = await room();
    for (let i = 1; i <= 30; i++) {
      assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: `m${i}` }), OK, `message ${i}`);
    }
    for (let i = 1; i <= 30; i++) assert.equal((await nextEvent(sb, 'chat:new')).message, `m${i}`);
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: 'one too many' }), RATE_LIMITED);
    assert.deepEqual(await nextEvent(sa, 'error'),
      { message: 'Rate limit exceeded for messages', code: 'rate_limited' });
    await expectNoEvent(sb, 'chat:new');
    // The other member has their own budget.
    assert.deepEqual(await emitAck(sb, 'chat:send', { channelName, message: 'mine' }), OK);
  });

  test('the message budget is shared by two connections of the same user', async () => {
    const u = user();
    const channelName = chan();
    const s1 = await connect(gw, u.token);
    const s2 = await connect(gw, u.token);
    await join(s1, channelName);
    await join(s2, channelName, { others: [s1] });
    for (let i = 1; i <= 15; i++) {
      assert.deepEqual(await emitAck(s1, 'chat:send', { channelName, message: `a${i}` }), OK);
      assert.deepEqual(await emitAck(s2, 'chat:send', { channelName, message: `b${i}` }), OK);
    }
    assert.deepEqual(await emitAck(s1, 'chat:send', { channelName, message: 'over' }), RATE_LIMITED);
    assert.deepEqual(await emitAck(s2, 'chat:send', { channelName, message: 'over' }), RATE_LIMITED);
  });

  test('the message budget is per user across channels', async () => {
    const u = user();
    const c1 = chan();
    const c2 = chan();
    const s = await connect(gw, u.token);
    await join(s, c1);
    await join(s, c2);
    for (let i = 1; i <= 30; i++) {
      assert.deepEqual(await emitAck(s, 'chat:send', { channelName: i % 2 ? c1 : c2, message: `m${i}` }), OK);
    }
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName: c1, message: 'over' }), RATE_LIMITED);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName: c2, message: 'over' }), RATE_LIMITED);
  });

  test('a message that is empty after sanitizing still consumes the message budget', async () => {
    const { channelName, sa } = await room();
    for (let i = 1; i <= 30; i++) {
      assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: '<i></i>' }),
        refusal('empty_message', 'Message cannot be empty'));
    }
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: 'real text' }), RATE_LIMITED);
  });

  test('messages refused for their length do not consume the message budget', async () => {
    const { channelName, sa } = await room();
    for (let i = 0; i < 35; i++) {
      assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: 'x'.repeat(501) }),
        refusal('invalid_message_length', 'Invalid message length'));
    }
    for (let i = 1; i <= 30; i++) {
      assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: `m${i}` }), OK, `message ${i}`);
    }
  });

  test('messages and gifts have separate budgets: gifts still work after the message limit is hit', async () => {
    const { channelName, sa, sb } = await room();
    for (let i = 1; i <= 30; i++) await emitAck(sa, 'chat:send', { channelName, message: `m${i}` });
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: 'over' }), RATE_LIMITED);
    assert.deepEqual(await emitAck(sa, 'gift:announce', { channelName, giftId: 'rose', qty: 1 }), OK);
    assert.equal((await nextEvent(sb, 'gift:new')).giftId, 'rose');
  });
});
