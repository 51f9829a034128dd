// The HTTP → room bridge on the admin listener: auth, body validation, and each route's event.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, user, uid, chan, token, emitAck, nextEvent, expectNoEvent,
  join, assertEvent, withoutPosition, bridge, http, refusal, sleep, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

const service = () => token({ userId: uid('svc'), role: 'service' });
const admin = () => token({ userId: uid('adm'), role: 'admin' });
const ACCEPTED = { ok: true };

/** Asserts an error response: exact status and code, message a non-empty string. */
function assertError(r, status, code) {
  assert.equal(r.status, status, `status (body ${r.text})`);
  assert.equal(r.json?.ok, false, `body ${r.text}`);
  if (code) assert.equal(r.json.error.code, code, `body ${r.text}`);
  else assert.equal(typeof r.json.error.code, 'string');
  assert.equal(typeof r.json.error.message, 'string');
  assert.ok(r.json.error.message.length > 0);
}

describe('bridge', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  async function member(channelName, claims = {}) {
    const u = user(claims);
    const s = await connect(gw, u.token);
    await join(s, channelName);
    return { u, s };
  }

  describe('auth', () => {
    const route = () => `/v1/channels/${chan()}/system`;
    const body = { type: 'stream_start' };

    test('a request without a token gets 401 unauthorized with the exact body', async () => {
      const r = await bridge(gw, 'POST', route(), body);
      assert.equal(r.status, 401);
      assert.deepEqual(r.json, refusal('unauthorized', 'unauthorized'));
    });

    for (const [what, make] of Object.entries({
      'a garbage token': () => 'garbage',
      'a token signed with another secret': () => token({ userId: 'x', role: 'service' }, { secret: 'nope' }),
      'an expired service token': () => token({ userId: 'x', role: 'service', exp: Math.floor(Date.now() / 1000) - 60 }),
      'an alg none service token': () => token({ userId: 'x', role: 'service' }, { alg: 'none' }),
    })) {
      test(`${what} gets 401 unauthorized`, async () => {
        const r = await bridge(gw, 'POST', route(), body, make());
        assert.equal(r.status, 401);
        assert.deepEqual(r.json, refusal('unauthorized', 'unauthorized'));
      });
    }

    test('a non-Bearer Authorization header gets 401', async () => {
      const r = await http(gw.adminUrl + route(), {
        method: 'POST', headers: { Authorization: `Basic ${service()}`, 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      assert.equal(r.status, 401);
    });

    for (const [what, claims] of Object.entries({ 'a viewer token': {}, 'a moderator ogLevel 9 token': { ogLevel: 9 }, 'a host role token': { role: 'host' } })) {
      test(`${what} gets 403 forbidden`, async () => {
        const r = await bridge(gw, 'POST', route(), body, token({ userId: uid(), ...claims }));
        assertError(r, 403, 'forbidden');
      });
    }

    test('GET routes require the token too', async () => {
      const r = await bridge(gw, 'GET', `/v1/channels/${chan()}/viewers`);
      assert.equal(r.status, 401);
      const r2 = await bridge(gw, 'GET', `/v1/channels/${chan()}/users/someone`, undefined, token({ userId: uid() }));
      assertError(r2, 403, 'forbidden');
    });

    test('a service token is accepted and an admin token gets 403 (LIVE_BRIDGE_ALLOW_ADMIN is off)', async () => {
      const ok = await bridge(gw, 'POST', route(), body, service());
      assert.equal(ok.status, 202);
      assert.deepEqual(ok.json, ACCEPTED);
      const r = await bridge(gw, 'POST', route(), body, admin());
      assertError(r, 403, 'forbidden');
    });
  });

  describe('body and path validation', () => {
    test('malformed JSON gets 400 invalid_json', async () => {
      const r = await bridge(gw, 'POST', `/v1/channels/${chan()}/gift`, '{"from": "a", ', service());
      assertError(r, 400, 'invalid_json');
    });

    for (const [what, raw] of Object.entries({ 'an array': '[1,2]', 'a string': '"gift"', 'a number': '7', 'null': 'null' })) {
      test(`a JSON body that is ${what} gets 400 invalid_json`, async () => {
        const r = await bridge(gw, 'POST', `/v1/channels/${chan()}/system`, raw, service());
        assertError(r, 400, 'invalid_json');
      });
    }

    for (const bad of ['-leading-dash', 'x'.repeat(65), 'semi;colon', 'sp%20ace']) {
      test(`an invalid channel name ${JSON.stringify(bad.length > 20 ? `${bad.slice(0, 8)}…(${bad.length})` : bad)} in the path gets 422`, async () => {
        const r = await bridge(gw, 'POST', `/v1/channels/${bad}/system`, { type: 'x' }, service());
        assertError(r, 422);
        const v = await bridge(gw, 'GET', `/v1/channels/${bad}/viewers`, undefined, service());
        assertError(v, 422);
      });
    }

    const invalidBodies = {
      gift: [{ giftId: 'rose', qty: 1 }, { from: 'u', giftId: '', qty: 1 }, { from: 'u', giftId: 'rose', qty: 0 },
        { from: 'u', giftId: 'rose', qty: 101 }, { from: 'u', giftId: 'rose', qty: 1.5 }, { from: 'u', giftId: 'rose', qty: '2' }],
      presence: [{ delta: 2, userId: 'u' }, { delta: 0, userId: 'u' }, { delta: 1 }, { delta: '1', userId: 'u' }],
      system: [{}, { type: 5 }],
      chat: [{ userId: 'u', username: 'n' }, { userId: 'u', username: 'n', message: 7 }, { username: 'n', message: 'hi' }],
      moderation: [{ action: 'ban', by: 'm' }, { action: 'mute', by: 'm' }, { action: 'warn' },
        { action: 'mute', by: 'm', targetUserId: 'u', durationSeconds: 0 }],
      metrics: [{}, { metrics: 5 }, { metrics: [1, 2] }],
    };
    for (const [route, bodies] of Object.entries(invalidBodies)) {
      for (const b of bodies) {
        test(`POST ${route} with ${JSON.stringify(b)} gets 422 and the room hears nothing`, async () => {
          const channelName = chan();
          const { s } = await member(channelName);
          const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/${route}`, b, service());
          assertError(r, 422);
          for (const ev of ['gift:new', 'presence:update', 'system:event', 'chat:new', 'mod:event', 'metrics:update']) {
            await expectNoEvent(s, ev, ev === 'gift:new' ? 150 : 0);
          }
        });
      }
    }

    test('POST chat with a 501-character message gets 422 invalid_message_length', async () => {
      const r = await bridge(gw, 'POST', `/v1/channels/${chan()}/chat`, { userId: 'u', username: 'n', message: 'z'.repeat(501) }, service());
      assertError(r, 422, 'invalid_message_length');
    });

    test('POST chat with a message that sanitizes to nothing gets 422 empty_message', async () => {
      const r = await bridge(gw, 'POST', `/v1/channels/${chan()}/chat`, { userId: 'u', username: 'n', message: '<script>x</script>' }, service());
      assertError(r, 422, 'empty_message');
    });

    test('an unknown route on the admin listener gets 404', async () => {
      const r = await bridge(gw, 'POST', `/v1/channels/${chan()}/nonsense`, {}, service());
      assert.equal(r.status, 404);
    });
  });

  describe('routes', () => {
    test('POST gift emits gift:new to the room with fromUsername and the given timestamp', async () => {
      const channelName = chan();
      const { s } = await member(channelName);
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/gift`,
        { from: 'donor-1', fromUsername: 'Donor', giftId: 'castle', qty: 5, timestamp: 1700000000123 }, service());
      assert.equal(r.status, 202);
      assert.deepEqual(r.json, ACCEPTED);
      assert.deepEqual(withoutPosition(await nextEvent(s, 'gift:new')),
        { from: 'donor-1', fromUsername: 'Donor', giftId: 'castle', qty: 5, timestamp: 1700000000123 });
    });

    test('POST gift without fromUsername or timestamp emits fromUsername null and a current timestamp', async () => {
      const channelName = chan();
      const { s } = await member(channelName);
      const since = Date.now();
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/gift`, { from: 'donor-2', giftId: 'rose', qty: 1 }, service());
      assert.equal(r.status, 202);
      assertEvent(await nextEvent(s, 'gift:new'), { from: 'donor-2', fromUsername: null, giftId: 'rose', qty: 1 }, since);
    });

    test('a bridge event reaches only the named channel', async () => {
      const channelName = chan();
      const { s } = await member(channelName);
      const { s: other } = await member(chan());
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/gift`, { from: 'd', giftId: 'rose', qty: 1 }, service());
      assert.equal(r.status, 202);
      await nextEvent(s, 'gift:new');
      await expectNoEvent(other, 'gift:new');
    });

    test('POST presence emits presence:update with delta, userId and username', async () => {
      const channelName = chan();
      const { s } = await member(channelName);
      let since = Date.now();
      let r = await bridge(gw, 'POST', `/v1/channels/${channelName}/presence`, { delta: 1, userId: 'ghost', username: 'Ghost' }, service());
      assert.equal(r.status, 202);
      assertEvent(await nextEvent(s, 'presence:update'), { channelName, delta: 1, userId: 'ghost', username: 'Ghost' }, since);
      since = Date.now();
      r = await bridge(gw, 'POST', `/v1/channels/${channelName}/presence`, { delta: -1, userId: 'ghost' }, service());
      assert.equal(r.status, 202);
      assertEvent(await nextEvent(s, 'presence:update'), { channelName, delta: -1, userId: 'ghost', username: null }, since);
    });

    test('POST system emits system:event with the type and every extra field', async () => {
      const channelName = chan();
      const { s } = await member(channelName);
      const since = Date.now();
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/system`,
        { type: 'stream_start', title: 'Live now', extra: { n: 1, list: [true, null] } }, service());
      assert.equal(r.status, 202);
      assertEvent(await nextEvent(s, 'system:event'),
        { type: 'stream_start', title: 'Live now', extra: { n: 1, list: [true, null] } }, since);
    });

    test('POST chat emits chat:new with the message sanitized', async () => {
      const channelName = chan();
      const { s } = await member(channelName);
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/chat`,
        { userId: 'sys-bot', username: 'Bot', message: '<script>alert(1)</script><b>Welcome</b> & enjoy', timestamp: 1700000000999 }, service());
      assert.equal(r.status, 202);
      assert.deepEqual(withoutPosition(await nextEvent(s, 'chat:new')),
        { userId: 'sys-bot', username: 'Bot', message: 'Welcome &amp; enjoy', timestamp: 1700000000999 });
    });

    test('POST metrics emits metrics:update with the metrics object', async () => {
      const channelName = chan();
      const { s } = await member(channelName);
      const since = Date.now();
      const metrics = { viewers: 12, bitrateKbps: 2500.5, tags: ['hd'] };
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/metrics`, { metrics }, service());
      assert.equal(r.status, 202);
      assertEvent(await nextEvent(s, 'metrics:update'), { channelName, metrics }, since);
    });

    test('POST moderation warn emits mod:event with nulls for absent fields', async () => {
      const channelName = chan();
      const { s } = await member(channelName);
      const since = Date.now();
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/moderation`, { action: 'warn', by: 'trust-safety' }, service());
      assert.equal(r.status, 202);
      assertEvent(await nextEvent(s, 'mod:event'),
        { action: 'warn', by: 'trust-safety', byUsername: null, reason: null, targetUserId: null }, since);
    });

    test('POST moderation mute takes effect on the target user and expires', async () => {
      const channelName = chan();
      const { u, s } = await member(channelName);
      const since = Date.now();
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/moderation`,
        { action: 'mute', by: 'ts', byUsername: 'T&S', reason: 'spam', targetUserId: u.userId, durationSeconds: 1 }, service());
      assert.equal(r.status, 202);
      // Every outgoing string is escaped HTML text: `T&S` goes out as `T&amp;S`.
      assertEvent(await nextEvent(s, 'mod:event'), {
        action: 'mute', by: 'ts', byUsername: 'T&amp;S', reason: 'spam', targetUserId: u.userId, durationSeconds: 1,
      }, since);
      assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'hi' }), refusal('muted', 'You are muted in this channel'));
      await sleep(Math.max(0, since + 1600 - Date.now()));
      assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'hi' }), OK);
    });

    test('POST moderation end removes every member from the room', async () => {
      const channelName = chan();
      const { s } = await member(channelName);
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/moderation`, { action: 'end', by: 'ops' }, service());
      assert.equal(r.status, 202);
      assert.equal((await nextEvent(s, 'mod:event')).action, 'end');
      await sleep(100);
      assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'hi' }), refusal('not_member', 'Not a member of this channel'));
      const v = await bridge(gw, 'GET', `/v1/channels/${channelName}/viewers`, undefined, service());
      assert.deepEqual(v.json, { channelName, viewers: 0 });
    });

    test('GET viewers counts the sockets in the room', async () => {
      const channelName = chan();
      const get = () => bridge(gw, 'GET', `/v1/channels/${channelName}/viewers`, undefined, service());
      let r = await get();
      assert.equal(r.status, 200);
      assert.deepEqual(r.json, { channelName, viewers: 0 });
      const a = await member(channelName);
      const same = await connect(gw, a.u.token);
      await join(same, channelName, { others: [a.s] });
      const b = await member(channelName);
      r = await get();
      assert.deepEqual(r.json, { channelName, viewers: 3 });
      assert.deepEqual(await emitAck(b.s, 'leave', { channelName }), OK);
      r = await get();
      assert.deepEqual(r.json, { channelName, viewers: 2 });
    });

    test('GET users/{userId} tells whether that user is present in the room', async () => {
      const channelName = chan();
      const { u, s } = await member(channelName);
      const get = (id) => bridge(gw, 'GET', `/v1/channels/${channelName}/users/${id}`, undefined, service());
      let r = await get(u.userId);
      assert.equal(r.status, 200);
      assert.deepEqual(r.json, { channelName, userId: u.userId, present: true });
      r = await get('nobody-here');
      assert.deepEqual(r.json, { channelName, userId: 'nobody-here', present: false });
      s.close();
      const deadline = Date.now() + 3000;
      do {
        r = await get(u.userId);
        if (r.json?.present === false) break;
        await sleep(50);
      } while (Date.now() < deadline);
      assert.deepEqual(r.json, { channelName, userId: u.userId, present: false });
    });
  });

  describe('the public port', () => {
    for (const p of ['/metrics', '/v1/channels/abc/viewers', '/v1/channels/abc/users/someone']) {
      test(`does not serve ${p}`, async () => {
        const r = await http(gw.url + p, { headers: { Authorization: `Bearer ${service()}` } });
        assert.equal(r.status, 404);
      });
    }

    test('does not accept bridge POSTs', async () => {
      const r = await http(`${gw.url}/v1/channels/abc/system`, {
        method: 'POST', headers: { Authorization: `Bearer ${service()}`, 'Content-Type': 'application/json' }, body: '{"type":"x"}',
      });
      assert.equal(r.status, 404);
    });
  });
});
