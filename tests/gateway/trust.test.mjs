// Client-chosen trust (issue 11, point 5): the host role only from a host token or a host the
// backend asserted through the bridge; giftId a catalogue id; reason capped and sanitized like
// chat; every outgoing string escaped for HTML text and attributes; moderation rate-limited,
// ogLevel moderators limited to their channels; mutes capped per channel, oldest evicted.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, user, token, chan, uid, emitAck, nextEvent,
  expectNoEvent, join, bridge, refusal, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

const HOST_NOT_ALLOWED = refusal('host_not_allowed', 'Not allowed to join as host');
const service = () => token({ userId: 'backend', role: 'service' });

describe('trust', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test('a viewer asking to join as host is refused and the room is not told', async () => {
    const channelName = chan();
    const member = await connect(gw, user().token);
    await join(member, channelName);
    const viewer = await connect(gw, user().token);
    assert.deepEqual(await emitAck(viewer, 'join', { channelName, role: 'host' }), HOST_NOT_ALLOWED);
    await expectNoEvent(member, 'system:event', 300);
    assert.deepEqual(await emitAck(viewer, 'join', { channelName }), OK, 'as a viewer it may join');
  });

  test('a host asserted through the bridge may join as host in that channel only, until withdrawn', async () => {
    const channelName = chan();
    const u = user();
    const route = `/v1/channels/${channelName}/hosts/${encodeURIComponent(u.userId)}`;
    let r = await bridge(gw, 'PUT', route, { ttlSeconds: 60 }, service());
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { ok: true, channelName, userId: u.userId, ttlSeconds: 60 });
    const s = await connect(gw, u.token);
    assert.deepEqual(await emitAck(s, 'join', { channelName: chan(), role: 'host' }), HOST_NOT_ALLOWED);
    assert.deepEqual(await emitAck(s, 'join', { channelName, role: 'host' }), OK);
    assert.equal((await nextEvent(s, 'system:event')).role, 'host');
    r = await bridge(gw, 'DELETE', route, undefined, service());
    assert.equal(r.status, 200);
    const again = await connect(gw, u.token);
    // A new socket of the same user, after the withdrawal.
    assert.deepEqual(await emitAck(again, 'join', { channelName, role: 'host' }), HOST_NOT_ALLOWED);
    r = await bridge(gw, 'PUT', route, { ttlSeconds: 0 }, service());
    assert.equal(r.status, 422);
    r = await bridge(gw, 'PUT', route, {}, token({ userId: uid() }));
    assert.equal(r.status, 403);
  });

  test('a giftId that is not a catalogue id is refused', async () => {
    const channelName = chan();
    const s = await connect(gw, user().token);
    await join(s, channelName);
    for (const giftId of ['<img src=x onerror=alert(1)>', 'rose"', ' rose', 'ro se', '🌹']) {
      assert.deepEqual(await emitAck(s, 'gift:announce', { channelName, giftId, qty: 1 }),
        refusal('invalid_gift', 'Invalid gift data'), giftId);
    }
    assert.deepEqual(await emitAck(s, 'gift:announce', { channelName, giftId: 'super-car_2.gold', qty: 1 }), OK);
  });

  test('a moderation reason is capped at 200 characters and sanitized like chat', async () => {
    const channelName = chan();
    const viewer = await connect(gw, user().token);
    await join(viewer, channelName);
    const mod = await connect(gw, user({ role: 'admin' }).token);
    assert.deepEqual(await emitAck(mod, 'mod:decision', { channelName, action: 'warn', reason: 'x'.repeat(201) }),
      refusal('invalid_reason', 'Invalid moderation reason'));
    await expectNoEvent(viewer, 'mod:event', 200);
    assert.deepEqual(await emitAck(mod, 'mod:decision',
      { channelName, action: 'warn', reason: '<script>steal()</script><b>spam</b> "again"' }), OK);
    assert.equal((await nextEvent(viewer, 'mod:event')).reason, 'spam &quot;again&quot;');
  });

  test('every outgoing string is escaped for HTML attributes too: quotes in chat, markup in usernames and ids', async () => {
    const channelName = chan();
    const evil = user({ userId: `u"${uid()}`, username: `<img src=x onerror=alert(1)> "Bob's"` });
    const s = await connect(gw, evil.token);
    const other = await connect(gw, user().token);
    await join(other, channelName);
    assert.deepEqual(await emitAck(s, 'join', { channelName }), OK);
    const joined = await nextEvent(other, 'system:event');
    assert.equal(joined.username, '&lt;img src=x onerror=alert(1)&gt; &quot;Bob&#39;s&quot;');
    assert.equal(joined.userId, evil.userId.replace('"', '&quot;'));
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'x" onmouseover="alert(1)' }), OK);
    const msg = await nextEvent(other, 'chat:new');
    assert.equal(msg.message, 'x&quot; onmouseover=&quot;alert(1)');
    assert.ok(!/["'<>]/.test(msg.message + msg.username + msg.userId), JSON.stringify(msg));
  });

  test('moderation decisions are rate-limited per user: the 31st within a minute is refused', async () => {
    const channelName = chan();
    const mod = await connect(gw, user({ role: 'admin' }).token);
    for (let i = 1; i <= 30; i++) {
      assert.deepEqual(await emitAck(mod, 'mod:decision', { channelName, action: 'warn' }), OK, `decision ${i}`);
    }
    assert.deepEqual(await emitAck(mod, 'mod:decision', { channelName, action: 'warn' }),
      refusal('rate_limited', 'Rate limit exceeded for moderation'));
  });

  test('an ogLevel moderator may act only in a channel it is in', async () => {
    const channelName = chan();
    const viewer = await connect(gw, user().token);
    await join(viewer, channelName);
    const og = await connect(gw, user({ ogLevel: 9 }).token);
    assert.deepEqual(await emitAck(og, 'mod:decision', { channelName, action: 'mute', targetUserId: 'x' }),
      refusal('not_member', 'Not a member of this channel'));
    await expectNoEvent(viewer, 'mod:event', 200);
    await join(og, channelName, { others: [viewer] });
    assert.deepEqual(await emitAck(og, 'mod:decision', { channelName, action: 'warn' }), OK);
  });

  test('a channel keeps at most 1000 mutes: the 1001st evicts the oldest', async () => {
    const channelName = chan();
    const first = user();
    const s = await connect(gw, first.token);
    await join(s, channelName);
    const mute = (target) => bridge(gw, 'POST', `/v1/channels/${channelName}/moderation`,
      { action: 'mute', by: 'ts', targetUserId: target, durationSeconds: 3600 }, service());
    assert.equal((await mute(first.userId)).status, 202);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'muted?' }),
      refusal('muted', 'You are muted in this channel'));
    for (let i = 0; i < 1000; i++) assert.equal((await mute(`spam-${i}`)).status, 202);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'free again' }), OK,
      'the oldest mute was evicted');
  });
});
