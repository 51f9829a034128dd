// Parser and handshake limits (issue 11, point 1), with raw Engine.IO frames: no binary
// attachments before or after authentication, a short connect timeout, oversize tokens refused
// before verification, a session closed after a few failed CONNECTs, and a packet budget per
// session that also covers what the event handlers never see (acks).

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, user, token, uid, rawSession, rawConnect, closesWithin, closeAllRaw, metricsText,
  metricValue, poll,
} from './harness.mjs';

afterEach(closeAllRaw);

/** A binary event announcing one attachment that never comes. */
const BINARY_HEADER = (ns) => `451-${ns ? `${ns},` : ''}["chat:send",{"_placeholder":true,"num":0}]`;

describe('parser and handshake limits', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test('a binary attachment closes an authenticated session at once', async () => {
    const raw = await rawSession(gw);
    assert.match(await rawConnect(raw, user().token), /^40\/live,/);
    raw.send(BINARY_HEADER('/live'));
    assert.equal(await closesWithin(raw, 2000), true, 'the session must close, not buffer attachments');
  });

  test('a binary attachment closes an unauthenticated session at once', async () => {
    const raw = await rawSession(gw);
    raw.send(BINARY_HEADER(''));
    assert.equal(await closesWithin(raw, 2000), true, 'the session must close, not buffer attachments');
  });

  test('an Engine.IO session that never connects to /live is closed within the 10 s connect timeout', async () => {
    const raw = await rawSession(gw);
    const opened = Date.now();
    assert.equal(await closesWithin(raw, 13_000), true, 'socketioxide alone keeps it 45 s');
    assert.ok(Date.now() - opened >= 9000, 'not before the timeout');
  });

  test('a token over limits.maxTokenBytes is refused unverified, even when validly signed', async () => {
    const before = await metricsText(gw);
    const big = token({ userId: uid(), padding: 'x'.repeat(5000) });
    assert.ok(big.length > 4096);
    const raw = await rawSession(gw);
    assert.match(await rawConnect(raw, big), /^44\/live,.*unauthorized/);
    const after = await metricsText(gw);
    assert.equal(
      metricValue(after, 'ws_auth_failures_total', { reason: 'token_too_large' })
        - metricValue(before, 'ws_auth_failures_total', { reason: 'token_too_large' }),
      1,
    );
  });

  test('a session is closed after its third failed CONNECT, and the client still gets the refusal', async () => {
    const raw = await rawSession(gw);
    for (let i = 1; i <= 3; i++) {
      assert.match(await rawConnect(raw, 'not-a-jwt'), /^44\/live,/, `CONNECT ${i} is answered`);
    }
    assert.equal(await closesWithin(raw, 2000), true, 'closed after the third failure');
  });

  test('CONNECTs pipelined faster than they are verified cannot exceed the failure cap', async () => {
    const raw = await rawSession(gw);
    for (let i = 0; i < 50; i++) raw.send('40/live,{"token":"x"}');
    assert.equal(await closesWithin(raw, 2000), true);
    const refusals = raw.frames.filter((f) => typeof f === 'string' && f.startsWith('44/live,'));
    assert.ok(refusals.length <= 3, `${refusals.length} CONNECTs were verified`);
  });

  test('a flood of packets the handlers never see (unsolicited acks) closes the session', async () => {
    const raw = await rawSession(gw);
    assert.match(await rawConnect(raw, user().token), /^40\/live,/);
    for (let i = 0; i < 2000; i++) raw.send(`43/live,${i}[]`);
    assert.equal(await closesWithin(raw, 3000), true, 'over LIVE_MAX_PACKETS_PER_SECOND');
  });

  test('a well-behaved session is not affected by any of these limits', async () => {
    const raw = await rawSession(gw);
    assert.match(await rawConnect(raw, user().token), /^40\/live,/);
    raw.send('42/live,0["heartbeat",{}]');
    assert.match(await raw.nextFrame((f) => f.startsWith('43/live,0')), /"ok":true/);
    assert.equal(await closesWithin(raw, 500), false);
    const ok = await poll(async () => metricValue(await metricsText(gw), 'ws_active_connections') >= 1);
    assert.ok(ok);
  });
});
