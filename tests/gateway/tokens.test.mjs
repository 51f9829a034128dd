// Token rules and the token lifecycle on live connections: exp required and bounded, the 128-byte
// userId cap, the 32-byte HS256 minimum, service tokens for the bridge (admin tokens only when
// allowed), auth:expiring / auth:refresh / auth:expired, and the bridge's disconnect-everywhere on
// one gateway (tokens-cluster.test.mjs covers two replicas on Redis).

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, connect, connectError, closeAllSockets, token, user, uid, chan, emitAck, nextEvent,
  expectNoEvent, waitDisconnect, join, bridge, metricsText, metricValue, poll, refusal, OK, SECRET,
  SERVICE_AUDIENCE,
} from './harness.mjs';

afterEach(closeAllSockets);
const now = () => Math.floor(Date.now() / 1000);
const failures = async (gw, reason) =>
  metricValue(await metricsText(gw), 'ws_auth_failures_total', { reason });

/** Connects, expecting a refusal counted under `reason`. */
async function refused(gw, tok, reason) {
  const before = await failures(gw, reason);
  const err = await connectError(gw, tok);
  assert.equal(err.message, 'unauthorized');
  assert.equal(await failures(gw, reason), before + 1, `counted as ${reason}`);
}

describe('token rules (defaults)', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test('a token without exp is refused (missing_exp)', async () => {
    await refused(gw, token({ userId: uid(), exp: undefined }), 'missing_exp');
  });

  test('a token whose exp is more than 24 h away is refused (lifetime_too_long)', async () => {
    await refused(gw, token({ userId: uid(), exp: now() + 25 * 3600 }), 'lifetime_too_long');
  });

  test('a token whose exp is 23 h away is accepted', async () => {
    const s = await connect(gw, token({ userId: uid(), exp: now() + 23 * 3600 }));
    assert.equal(s.connected, true);
  });

  test('a userId of 129 bytes is refused and one of 128 bytes accepted', async () => {
    await refused(gw, token({ userId: 'é'.repeat(64) + 'x' }), 'invalid_claims');
    const s = await connect(gw, token({ userId: 'é'.repeat(64) }));
    assert.equal(s.connected, true);
  });

  test('a kid that matches no key is refused (unknown_kid)', async () => {
    await refused(gw, token({ userId: uid() }, { kid: 'no-such-key' }), 'unknown_kid');
  });
});

describe('token rules (JWT_REQUIRE_EXP=false, JWT_MAX_LIFETIME_SECONDS=600)', () => {
  let gw;
  before(async () => {
    gw = await startGateway({ env: { JWT_REQUIRE_EXP: 'false', JWT_MAX_LIFETIME_SECONDS: '600' } });
  });
  after(async () => { await gw?.stop(); });

  test('a token without exp is accepted', async () => {
    const s = await connect(gw, token({ userId: uid(), exp: undefined }));
    assert.equal(s.connected, true);
  });

  test('a token whose exp is an hour away is refused', async () => {
    await refused(gw, token({ userId: uid(), exp: now() + 3600 }), 'lifetime_too_long');
  });
});

describe('HS256 secrets', () => {
  test('a JWT_SECRET shorter than 32 bytes stops the gateway at startup', async () => {
    const gw = await startGateway({ secret: 'x'.repeat(31), waitReady: false });
    const info = await gw.waitExit(10_000);
    if (info === null) await gw.stop(1000);
    assert.notEqual(info, null, 'process should exit on its own');
    assert.notEqual(info.code, 0);
    assert.match(gw.stderr(), /JWT_SECRET is 31 bytes.*at least 32/);
  });

  test('--dev accepts a short JWT_SECRET', async () => {
    const secret = 'short-dev-secret';
    const gw = await startGateway({ dev: true, env: { JWT_SECRET: secret } });
    try {
      const s = await connect(gw, token({ userId: uid() }, { secret }));
      assert.equal(s.connected, true);
    } finally {
      closeAllSockets();
      await gw.stop();
    }
  });
});

describe('bridge tokens', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });
  const route = () => `/v1/channels/${chan()}/system`;
  const body = { type: 'x' };

  test('a moderator\'s app token (role admin) cannot post chat as another user', async () => {
    const channelName = chan();
    const viewer = user();
    const s = await connect(gw, viewer.token);
    await join(s, channelName);
    const moderator = token({ userId: uid('mod'), role: 'admin', ogLevel: 9 });
    const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/chat`,
      { userId: viewer.userId, username: 'forged', message: 'not me' }, moderator);
    assert.equal(r.status, 403, r.text);
    assert.equal(r.json.error.code, 'forbidden');
    await expectNoEvent(s, 'chat:new');
  });

  const unauthorized = {
    'a service token without the service audience': () =>
      token({ userId: uid('svc'), role: 'service', aud: undefined }),
    'a service token for another audience': () =>
      token({ userId: uid('svc'), role: 'service', aud: 'live' }),
    'a service token valid for 2 h': () =>
      token({ userId: uid('svc'), role: 'service', exp: now() + 7200 }),
    'a service token without exp': () =>
      token({ userId: uid('svc'), role: 'service', exp: undefined }),
  };
  for (const [what, make] of Object.entries(unauthorized)) {
    test(`${what} gets 401`, async () => {
      const r = await bridge(gw, 'POST', route(), body, make());
      assert.equal(r.status, 401, r.text);
      assert.deepEqual(r.json, refusal('unauthorized', 'unauthorized'));
    });
  }

  test('a service token with the service audience and an exp within the hour gets 202', async () => {
    const tok = token({ userId: uid('svc'), role: 'service', aud: [SERVICE_AUDIENCE, 'other'], exp: now() + 3500 });
    const r = await bridge(gw, 'POST', route(), body, tok);
    assert.equal(r.status, 202, r.text);
  });
});

describe('bridge tokens with LIVE_BRIDGE_ALLOW_ADMIN=true', () => {
  let gw;
  before(async () => { gw = await startGateway({ env: { LIVE_BRIDGE_ALLOW_ADMIN: 'true' } }); });
  after(async () => { await gw?.stop(); });

  test('an admin token is accepted and a viewer token still refused', async () => {
    const route = `/v1/channels/${chan()}/system`;
    const admin = await bridge(gw, 'POST', route, { type: 'x' }, token({ userId: uid(), role: 'admin' }));
    assert.equal(admin.status, 202, admin.text);
    const viewer = await bridge(gw, 'POST', route, { type: 'x' }, token({ userId: uid() }));
    assert.equal(viewer.status, 403, viewer.text);
  });
});

describe('token lifecycle on live connections', () => {
  let gw;
  let dir;
  let config;
  const LEAD = 2;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-tokens-'));
    config = path.join(dir, 'gateway.yaml');
    fs.writeFileSync(config, `auth: {expiringNoticeSeconds: ${LEAD}}\n`);
    gw = await startGateway({ config });
  });
  after(async () => {
    await gw?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('a connection is told ahead of its exp, then told why and disconnected at expiry', async () => {
    const exp = now() + 1;
    const u = user({ exp });
    const s = await connect(gw, u.token);
    const before = metricValue(await metricsText(gw), 'ws_disconnects_total', { reason: 'token_expired' });
    const notice = await nextEvent(s, 'auth:expiring', 4000);
    const noticedAt = Date.now();
    assert.equal(notice.reason, 'token_expiring');
    assert.equal(notice.expiresAt, (exp + 5) * 1000, 'exp plus the 5 s leeway, in ms');
    assert.ok(Number.isInteger(notice.timestamp));
    const expired = await nextEvent(s, 'auth:expired', 10_000);
    assert.equal(expired.code, 'token_expired');
    assert.equal(typeof expired.message, 'string');
    const { reason, at } = await waitDisconnect(s, 3000);
    assert.equal(reason, 'io server disconnect');
    assert.ok(at - noticedAt >= 2000, `notice ${at - noticedAt} ms before the disconnect`);
    assert.ok(at >= exp * 1000, 'not before exp');
    const after = metricValue(await metricsText(gw), 'ws_disconnects_total', { reason: 'token_expired' });
    assert.equal(after, before + 1);
  });

  test('a connection that refreshes with a fresh token for the same user lives on', async () => {
    const u = user({ exp: now() }); // ends in about 5 s (exp + leeway) unless refreshed
    const s = await connect(gw, u.token);
    await nextEvent(s, 'auth:expiring', 3000);
    const newExp = now() + 3600;
    const ack = await emitAck(s, 'auth:refresh', { token: token({ userId: u.userId, exp: newExp }) });
    assert.deepEqual(ack, { ok: true, expiresAt: (newExp + 5) * 1000 });
    await expectNoEvent(s, 'auth:expired', 6000);
    assert.equal(s.connected, true);
    assert.equal((await emitAck(s, 'heartbeat', {})).ok, true);
  });

  test('a refresh for another user is refused and does not disconnect; the old token still expires', async () => {
    const u = user({ exp: now() - 1 });
    const s = await connect(gw, u.token);
    const ack = await emitAck(s, 'auth:refresh', { token: token({ userId: uid('other') }) });
    assert.equal(ack.ok, false);
    assert.equal(ack.error.code, 'user_mismatch');
    assert.equal((await nextEvent(s, 'error')).code, 'user_mismatch');
    assert.equal(s.connected, true);
    const expired = await nextEvent(s, 'auth:expired', 8000);
    assert.equal(expired.code, 'token_expired');
    assert.equal((await waitDisconnect(s)).reason, 'io server disconnect');
  });

  test('a refresh with an invalid token or without one is refused and does not disconnect', async () => {
    const s = await connect(gw, user().token);
    for (const [payload, code] of [
      [{ token: 'garbage' }, 'unauthorized'],
      [{ token: token({ userId: uid(), exp: undefined }) }, 'unauthorized'],
      [{ token: 'x'.repeat(9000) }, 'invalid_payload'],
      [{}, 'invalid_payload'],
      ['not an object', 'invalid_payload'],
    ]) {
      const ack = await emitAck(s, 'auth:refresh', payload);
      assert.equal(ack.ok, false);
      assert.equal(ack.error.code, code, JSON.stringify(payload).slice(0, 40));
    }
    assert.equal(s.connected, true);
  });

  test('the refreshed token\'s claims apply: a viewer refreshed as admin may moderate', async () => {
    const channelName = chan();
    const u = user();
    const s = await connect(gw, u.token);
    await join(s, channelName);
    const warn = { channelName, action: 'warn', reason: 'r' };
    assert.equal((await emitAck(s, 'mod:decision', warn)).error.code, 'forbidden');
    const ack = await emitAck(s, 'auth:refresh', { token: token({ userId: u.userId, role: 'admin' }) });
    assert.equal(ack.ok, true);
    assert.deepEqual(await emitAck(s, 'mod:decision', warn), OK);
  });

  test('the notice lead is hot-reloaded', async () => {
    fs.writeFileSync(config, 'auth: {expiringNoticeSeconds: 60}\n');
    try {
      await poll(async () => metricValue(await metricsText(gw), 'live_config_reloads_total', { result: 'success' }) >= 1,
        { timeoutMs: 10_000 });
      const s = await connect(gw, user({ exp: now() + 40 }).token);
      const notice = await nextEvent(s, 'auth:expiring', 3000);
      assert.equal(notice.reason, 'token_expiring');
    } finally {
      fs.writeFileSync(config, `auth: {expiringNoticeSeconds: ${LEAD}}\n`);
    }
  });

  test('POST /v1/users/{userId}/disconnect ends every socket of that user and no other', async () => {
    const channelName = chan();
    const target = user();
    const bystander = user();
    const a1 = await connect(gw, target.token);
    const a2 = await connect(gw, target.token, { transports: ['polling'] });
    const b = await connect(gw, bystander.token);
    await join(b, channelName);
    await join(a1, channelName, { others: [b] });
    const svc = token({ userId: 'backend', role: 'service' });
    const r = await bridge(gw, 'POST', `/v1/users/${encodeURIComponent(target.userId)}/disconnect`, undefined, svc);
    assert.equal(r.status, 202, r.text);
    assert.deepEqual(r.json, OK);
    for (const s of [a1, a2]) {
      const revoked = await nextEvent(s, 'auth:revoked', 3000);
      assert.equal(revoked.code, 'revoked');
      assert.equal((await waitDisconnect(s)).reason, 'io server disconnect');
    }
    // The bystander sees the target leave, and stays.
    assert.equal((await nextEvent(b, 'presence:update')).userId, target.userId);
    await expectNoEvent(b, 'auth:revoked', 200);
    assert.equal(b.connected, true);
  });

  test('the disconnect route needs a service token and a valid userId', async () => {
    const route = `/v1/users/${uid()}/disconnect`;
    assert.equal((await bridge(gw, 'POST', route)).status, 401);
    const viewer = await bridge(gw, 'POST', route, undefined, token({ userId: uid() }));
    assert.equal(viewer.status, 403);
    const long = await bridge(gw, 'POST', `/v1/users/${'x'.repeat(129)}/disconnect`, undefined,
      token({ userId: 'backend', role: 'service' }));
    assert.equal(long.status, 422, long.text);
    assert.equal(long.json.error.code, 'invalid_field');
  });
});

// Keep the suite secret honest: the rule it exists for.
test('the suite secret is at least 32 bytes', () => {
  assert.ok(Buffer.byteLength(SECRET) >= 32);
});
