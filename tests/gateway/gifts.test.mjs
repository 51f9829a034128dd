// gift:announce: delivery, gift validation, membership and the gift rate limit.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, user, chan, emitAck, nextEvent, expectNoEvent,
  join, assertEvent, refusal, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

const INVALID_GIFT = refusal('invalid_gift', 'Invalid gift data');

describe('gifts', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  async function room() {
    const a = user({ role: 'host' });
    const b = user();
    const channelName = chan();
    const sa = await connect(gw, a.token);
    const sb = await connect(gw, b.token);
    await join(sa, channelName, { role: 'host' });
    await join(sb, channelName, { others: [sa] });
    return { channelName, a, b, sa, sb };
  }

  test('a gift reaches every member, sender included, as gift:new with from, fromUsername, giftId, qty', async () => {
    const { channelName, b, sa, sb } = await room();
    const since = Date.now();
    assert.deepEqual(await emitAck(sb, 'gift:announce', { channelName, giftId: 'rose', qty: 3 }), OK);
    for (const s of [sa, sb]) {
      assertEvent(await nextEvent(s, 'gift:new'), { from: b.userId, fromUsername: b.username, giftId: 'rose', qty: 3 }, since);
    }
  });

  test('a gift from a token without username has fromUsername null', async () => {
    const anon = user({ username: undefined });
    const channelName = chan();
    const s = await connect(gw, anon.token);
    await join(s, channelName);
    const since = Date.now();
    assert.deepEqual(await emitAck(s, 'gift:announce', { channelName, giftId: 'star', qty: 1 }), OK);
    assertEvent(await nextEvent(s, 'gift:new'), { from: anon.userId, fromUsername: null, giftId: 'star', qty: 1 }, since);
  });

  test('qty 100 and a 64-character giftId are the accepted maximums', async () => {
    const { channelName, sa, sb } = await room();
    const giftId = 'g'.repeat(64);
    assert.deepEqual(await emitAck(sa, 'gift:announce', { channelName, giftId, qty: 100 }), OK);
    const ev = await nextEvent(sb, 'gift:new');
    assert.equal(ev.giftId, giftId);
    assert.equal(ev.qty, 100);
  });

  const badGifts = {
    'qty 0': { giftId: 'rose', qty: 0 },
    'qty 101': { giftId: 'rose', qty: 101 },
    'qty -1': { giftId: 'rose', qty: -1 },
    'qty 1.5': { giftId: 'rose', qty: 1.5 },
    'qty "3"': { giftId: 'rose', qty: '3' },
    'qty missing': { giftId: 'rose' },
    'qty null': { giftId: 'rose', qty: null },
    'giftId empty': { giftId: '', qty: 1 },
    'giftId of 65 characters': { giftId: 'g'.repeat(65), qty: 1 },
    'giftId a number': { giftId: 7, qty: 1 },
    'giftId missing': { qty: 1 },
  };
  for (const [what, gift] of Object.entries(badGifts)) {
    test(`a gift with ${what} is refused with invalid_gift and not delivered`, async () => {
      const { channelName, sa, sb } = await room();
      assert.deepEqual(await emitAck(sa, 'gift:announce', { channelName, ...gift }), INVALID_GIFT);
      assert.deepEqual(await nextEvent(sa, 'error'), { message: 'Invalid gift data', code: 'invalid_gift' });
      await expectNoEvent(sb, 'gift:new', 150);
    });
  }

  test('a gift to a channel the socket has not joined is refused with not_member', async () => {
    const { channelName, sa } = await room();
    const outsider = await connect(gw, user().token);
    assert.deepEqual(await emitAck(outsider, 'gift:announce', { channelName, giftId: 'rose', qty: 1 }),
      refusal('not_member', 'Not a member of this channel'));
    await expectNoEvent(sa, 'gift:new');
  });

  test('a gift to an invalid channel name is refused with invalid_channel', async () => {
    const s = await connect(gw, user().token);
    assert.deepEqual(await emitAck(s, 'gift:announce', { channelName: '../etc', giftId: 'rose', qty: 1 }),
      refusal('invalid_channel', 'Invalid channel name'));
  });

  test('the 31st gift within a minute is refused with rate_limited for gifts, and chat still works', async () => {
    const { channelName, sa, sb } = await room();
    for (let i = 1; i <= 30; i++) {
      assert.deepEqual(await emitAck(sa, 'gift:announce', { channelName, giftId: `g${i}`, qty: 1 }), OK, `gift ${i}`);
    }
    assert.deepEqual(await emitAck(sa, 'gift:announce', { channelName, giftId: 'over', qty: 1 }),
      refusal('rate_limited', 'Rate limit exceeded for gifts'));
    assert.deepEqual(await nextEvent(sa, 'error'), { message: 'Rate limit exceeded for gifts', code: 'rate_limited' });
    for (let i = 1; i <= 30; i++) assert.equal((await nextEvent(sb, 'gift:new')).giftId, `g${i}`);
    await expectNoEvent(sb, 'gift:new');
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: 'chat is a separate budget' }), OK);
  });

  test('the gift budget is shared by two connections of the same user', async () => {
    const u = user();
    const channelName = chan();
    const s1 = await connect(gw, u.token);
    const s2 = await connect(gw, u.token);
    await join(s1, channelName);
    await join(s2, channelName, { others: [s1] });
    for (let i = 1; i <= 15; i++) {
      assert.deepEqual(await emitAck(s1, 'gift:announce', { channelName, giftId: 'a', qty: 1 }), OK);
      assert.deepEqual(await emitAck(s2, 'gift:announce', { channelName, giftId: 'b', qty: 1 }), OK);
    }
    assert.deepEqual(await emitAck(s2, 'gift:announce', { channelName, giftId: 'c', qty: 1 }),
      refusal('rate_limited', 'Rate limit exceeded for gifts'));
  });
});
