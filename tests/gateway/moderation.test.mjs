// mod:decision: privileges, validation, and the effects of warn, mute and end.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, user, chan, emitAck, nextEvent, expectNoEvent,
  clearEvents, join, assertEvent, refusal, OK, sleep,
} from './harness.mjs';

afterEach(closeAllSockets);

const FORBIDDEN = refusal('forbidden', 'Insufficient privileges for moderation');
const MUTED = refusal('muted', 'You are muted in this channel');

describe('moderation', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  /** A channel with a viewer member and a connected (non-member) admin. */
  async function setup(modClaims = { role: 'admin' }) {
    const channelName = chan();
    const viewer = user();
    const mod = user(modClaims);
    const sv = await connect(gw, viewer.token);
    const sm = await connect(gw, mod.token);
    await join(sv, channelName);
    return { channelName, viewer, mod, sv, sm };
  }

  test('an admin who is not a member can warn, and the room gets mod:event with reason and target null when absent', async () => {
    const { channelName, mod, sv, sm } = await setup();
    const since = Date.now();
    assert.deepEqual(await emitAck(sm, 'mod:decision', { channelName, action: 'warn' }), OK);
    assertEvent(await nextEvent(sv, 'mod:event'),
      { action: 'warn', by: mod.userId, byUsername: mod.username, reason: null, targetUserId: null }, since);
    await expectNoEvent(sm, 'mod:event', 100);
  });

  test('a warn with reason and targetUserId carries both in mod:event', async () => {
    const { channelName, viewer, mod, sv, sm } = await setup();
    const since = Date.now();
    assert.deepEqual(await emitAck(sm, 'mod:decision',
      { channelName, action: 'warn', reason: 'be nice', targetUserId: viewer.userId }), OK);
    assertEvent(await nextEvent(sv, 'mod:event'),
      { action: 'warn', by: mod.userId, byUsername: mod.username, reason: 'be nice', targetUserId: viewer.userId }, since);
  });

  test('a user with ogLevel 5 may moderate a channel it is in', async () => {
    const { channelName, sv, sm } = await setup({ ogLevel: 5 });
    await join(sm, channelName, { others: [sv] });
    assert.deepEqual(await emitAck(sm, 'mod:decision', { channelName, action: 'warn' }), OK);
    assert.equal((await nextEvent(sv, 'mod:event')).action, 'warn');
  });

  for (const [what, claims] of Object.entries({
    'a plain viewer': {},
    'a user with ogLevel 4': { ogLevel: 4 },
    'a user with role moderator': { role: 'moderator' },
    'a user with role service': { role: 'service' },
  })) {
    test(`${what} is refused with forbidden and the room hears nothing`, async () => {
      const { channelName, sv, sm } = await setup(claims);
      assert.deepEqual(await emitAck(sm, 'mod:decision', { channelName, action: 'warn' }), FORBIDDEN);
      assert.deepEqual(await nextEvent(sm, 'error'),
        { message: 'Insufficient privileges for moderation', code: 'forbidden' });
      await expectNoEvent(sv, 'mod:event');
    });
  }

  test('privilege is checked before the action: a viewer sending an unknown action gets forbidden', async () => {
    const { channelName, sm } = await setup({});
    assert.deepEqual(await emitAck(sm, 'mod:decision', { channelName, action: 'ban' }), FORBIDDEN);
  });

  test('an invalid channel name is refused with invalid_channel even for an admin', async () => {
    const { sm } = await setup();
    assert.deepEqual(await emitAck(sm, 'mod:decision', { channelName: 'a b', action: 'warn' }),
      refusal('invalid_channel', 'Invalid channel name'));
  });

  for (const action of ['ban', 'WARN', '', 7, undefined]) {
    test(`action ${JSON.stringify(action)} is refused with invalid_action`, async () => {
      const { channelName, sm } = await setup();
      assert.deepEqual(await emitAck(sm, 'mod:decision', { channelName, action }),
        refusal('invalid_action', 'Invalid moderation action'));
    });
  }

  for (const [what, extra] of Object.entries({ 'no targetUserId': {}, 'a numeric targetUserId': { targetUserId: 42 } })) {
    test(`a mute with ${what} is refused with invalid_target`, async () => {
      const { channelName, sm } = await setup();
      assert.deepEqual(await emitAck(sm, 'mod:decision', { channelName, action: 'mute', ...extra }),
        refusal('invalid_target', 'Mute requires targetUserId'));
    });
  }

  for (const durationSeconds of [0, -5, 1.5, 2592001, '10']) {
    test(`a mute with durationSeconds ${JSON.stringify(durationSeconds)} is refused with invalid_payload`, async () => {
      const { channelName, viewer, sm, sv } = await setup();
      assert.deepEqual(await emitAck(sm, 'mod:decision',
        { channelName, action: 'mute', targetUserId: viewer.userId, durationSeconds }),
      refusal('invalid_payload', 'Invalid payload'));
      await expectNoEvent(sv, 'mod:event', 100);
    });
  }

  test('a mute with durationSeconds 2592000 (30 days) is accepted and echoed', async () => {
    const { channelName, viewer, sv, sm } = await setup();
    assert.deepEqual(await emitAck(sm, 'mod:decision',
      { channelName, action: 'mute', targetUserId: viewer.userId, durationSeconds: 2592000 }), OK);
    assert.equal((await nextEvent(sv, 'mod:event')).durationSeconds, 2592000);
  });

  test('a mute without durationSeconds reports the default 300 seconds', async () => {
    const { channelName, viewer, mod, sv, sm } = await setup();
    const since = Date.now();
    assert.deepEqual(await emitAck(sm, 'mod:decision',
      { channelName, action: 'mute', targetUserId: viewer.userId, reason: 'spam' }), OK);
    assertEvent(await nextEvent(sv, 'mod:event'), {
      action: 'mute', by: mod.userId, byUsername: mod.username, reason: 'spam',
      targetUserId: viewer.userId, durationSeconds: 300,
    }, since);
  });

  test('a muted user cannot chat or gift in that channel until the mute expires, and other channels are unaffected', async () => {
    const { channelName, viewer, sv, sm } = await setup();
    const other = chan();
    await join(sv, other);
    const since = Date.now();
    assert.deepEqual(await emitAck(sm, 'mod:decision',
      { channelName, action: 'mute', targetUserId: viewer.userId, durationSeconds: 1 }), OK);
    assert.equal((await nextEvent(sv, 'mod:event')).durationSeconds, 1);

    assert.deepEqual(await emitAck(sv, 'chat:send', { channelName, message: 'can I talk?' }), MUTED);
    assert.deepEqual(await nextEvent(sv, 'error'), { message: 'You are muted in this channel', code: 'muted' });
    assert.deepEqual(await emitAck(sv, 'gift:announce', { channelName, giftId: 'rose', qty: 1 }), MUTED);
    await expectNoEvent(sv, 'chat:new', 50);
    assert.deepEqual(await emitAck(sv, 'chat:send', { channelName: other, message: 'elsewhere' }), OK);
    assert.equal((await nextEvent(sv, 'chat:new')).message, 'elsewhere');

    await sleep(Math.max(0, since + 1600 - Date.now()));
    assert.deepEqual(await emitAck(sv, 'chat:send', { channelName, message: 'free again' }), OK);
    assert.equal((await nextEvent(sv, 'chat:new')).message, 'free again');
    assert.deepEqual(await emitAck(sv, 'gift:announce', { channelName, giftId: 'rose', qty: 1 }), OK);
  });

  test('a muted user gets invalid_gift for a bad gift (validation before mute), and muted refusals do not use the budget', async () => {
    const { channelName, viewer, sv, sm } = await setup();
    const since = Date.now();
    assert.deepEqual(await emitAck(sm, 'mod:decision',
      { channelName, action: 'mute', targetUserId: viewer.userId, durationSeconds: 1 }), OK);
    await nextEvent(sv, 'mod:event');
    assert.deepEqual(await emitAck(sv, 'gift:announce', { channelName, giftId: 'rose', qty: 0 }),
      refusal('invalid_gift', 'Invalid gift data'));
    assert.deepEqual(await emitAck(sv, 'chat:send', { channelName, message: '' }),
      refusal('invalid_message_length', 'Invalid message length'));
    for (let i = 0; i < 31; i++) assert.deepEqual(await emitAck(sv, 'chat:send', { channelName, message: `m${i}` }), MUTED);
    await sleep(Math.max(0, since + 1600 - Date.now()));
    for (let i = 1; i <= 30; i++) {
      assert.deepEqual(await emitAck(sv, 'chat:send', { channelName, message: `after ${i}` }), OK, `message ${i} after the mute`);
    }
  });

  test('a mute applies to every connection of the muted user', async () => {
    const { channelName, viewer, sv, sm } = await setup();
    const second = await connect(gw, viewer.token);
    await join(second, channelName, { others: [sv] });
    assert.deepEqual(await emitAck(sm, 'mod:decision',
      { channelName, action: 'mute', targetUserId: viewer.userId, durationSeconds: 2 }), OK);
    await nextEvent(second, 'mod:event');
    assert.deepEqual(await emitAck(second, 'chat:send', { channelName, message: 'other tab' }), MUTED);
  });

  test('a mute does not affect other users in the channel', async () => {
    const { channelName, viewer, sv, sm } = await setup();
    const bystander = await connect(gw, user().token);
    await join(bystander, channelName, { others: [sv] });
    assert.deepEqual(await emitAck(sm, 'mod:decision',
      { channelName, action: 'mute', targetUserId: viewer.userId, durationSeconds: 2 }), OK);
    await nextEvent(bystander, 'mod:event');
    assert.deepEqual(await emitAck(bystander, 'chat:send', { channelName, message: 'not me' }), OK);
  });

  test('end sends mod:event, then removes every member: no more room traffic, chat gets not_member, rejoin works', async () => {
    const { channelName, mod, sv, sm } = await setup();
    const host = user({ role: 'host' });
    const sh = await connect(gw, host.token);
    await join(sh, channelName, { role: 'host', others: [sv] });
    const since = Date.now();
    assert.deepEqual(await emitAck(sm, 'mod:decision', { channelName, action: 'end', reason: 'stream over' }), OK);
    for (const s of [sv, sh]) {
      assertEvent(await nextEvent(s, 'mod:event'),
        { action: 'end', by: mod.userId, byUsername: mod.username, reason: 'stream over', targetUserId: null }, since);
    }
    // Give the removal a moment, then check nobody is still in the room.
    await sleep(100);
    clearEvents(sv, sh);
    assert.deepEqual(await emitAck(sv, 'chat:send', { channelName, message: 'hello?' }),
      refusal('not_member', 'Not a member of this channel'));
    assert.deepEqual(await emitAck(sh, 'gift:announce', { channelName, giftId: 'rose', qty: 1 }),
      refusal('not_member', 'Not a member of this channel'));
    // A later mod:event to the room reaches nobody who was removed.
    assert.deepEqual(await emitAck(sm, 'mod:decision', { channelName, action: 'warn' }), OK);
    await expectNoEvent(sv, 'mod:event');
    await expectNoEvent(sh, 'mod:event', 0);
    // They can join again, and then hear the room.
    await join(sv, channelName);
    await join(sh, channelName, { others: [sv] });
    assert.deepEqual(await emitAck(sh, 'chat:send', { channelName, message: 'we are back' }), OK);
    assert.equal((await nextEvent(sv, 'chat:new')).message, 'we are back');
  });
});
