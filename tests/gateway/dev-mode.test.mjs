// --dev: starts without any key and prints ready-made tokens for a viewer, an admin and a bridge service.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, chan, emitAck, nextEvent, join, bridge, decodeClaims, poll, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

const JWT_RE = /eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+/g;

describe('dev mode', () => {
  let gw;
  let tokens = {};
  before(async () => {
    gw = await startGateway({ dev: true });
    await poll(() => (gw.stdout().match(JWT_RE) ?? []).length >= 3, { timeoutMs: 3000 });
    for (const jwt of gw.stdout().match(JWT_RE) ?? []) {
      const claims = decodeClaims(jwt);
      const kind = claims.role === 'admin' ? 'admin' : claims.role === 'service' ? 'service' : 'viewer';
      tokens[kind] ??= jwt;
    }
  });
  after(async () => { await gw?.stop(); });

  test('prints a viewer, an admin and a service token on stdout', () => {
    assert.deepEqual(Object.keys(tokens).sort(), ['admin', 'service', 'viewer'],
      `tokens found on stdout:\n${gw.stdout()}`);
    const viewer = decodeClaims(tokens.viewer);
    assert.equal(typeof viewer.userId, 'string');
    assert.ok(!['admin', 'service'].includes(viewer.role));
  });

  test('the viewer token connects, joins and chats', async () => {
    const s = await connect(gw, tokens.viewer);
    const channelName = chan();
    await join(s, channelName);
    assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'dev hello' }), OK);
    assert.equal((await nextEvent(s, 'chat:new')).message, 'dev hello');
  });

  test('the admin token may moderate', async () => {
    const channelName = chan();
    const viewer = await connect(gw, tokens.viewer);
    await join(viewer, channelName);
    const adm = await connect(gw, tokens.admin);
    assert.deepEqual(await emitAck(adm, 'mod:decision', { channelName, action: 'warn', reason: 'dev' }), OK);
    assert.equal((await nextEvent(viewer, 'mod:event')).reason, 'dev');
  });

  test('the service token is accepted by the bridge', async () => {
    const channelName = chan();
    const viewer = await connect(gw, tokens.viewer);
    await join(viewer, channelName);
    const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/system`, { type: 'dev_check' }, tokens.service);
    assert.equal(r.status, 202, r.text);
    assert.equal((await nextEvent(viewer, 'system:event')).type, 'dev_check');
  });

  test('a token not printed by this process is still refused', async () => {
    const forged = tokens.viewer.replace(/\.[^.]+$/, '.AAAA');
    await assert.rejects(connect(gw, forged), (err) => err.message === 'unauthorized');
  });
});
