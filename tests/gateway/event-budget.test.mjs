// Per-connection bounds (issue 11, point 2): at most limits.maxChannelsPerSocket channels (32),
// and a budget for every inbound event whatever its name, auth:refresh and unknown events too
// (rateLimits.eventsPerSecond 20, rateLimits.eventBurst 100): over it an event is refused with
// too_many_events, and a socket that keeps sending a whole burst over it is disconnected.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, closeAllSockets, user, chan, emitAck, join, refusal, waitDisconnect,
  metricsText, metricValue, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

const TOO_MANY_EVENTS = refusal('too_many_events', 'Too many events, slow down');
const RATE = 20;
const BURST = 100;

/** The most events a connection may get handled in `ms` milliseconds (a full burst, then the
 * refill), so assertions hold on a slow machine too. */
const allowedWithin = (ms) => BURST + Math.ceil((RATE * ms) / 1000) + 1;

describe('per-connection bounds', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test('a socket may be in 32 channels at once; the 33rd join is refused until it leaves one', async () => {
    const s = await connect(gw, user().token);
    const channels = Array.from({ length: 33 }, () => chan());
    for (const c of channels.slice(0, 32)) assert.deepEqual(await emitAck(s, 'join', { channelName: c }), OK, c);
    assert.deepEqual(await emitAck(s, 'join', { channelName: channels[32] }),
      refusal('too_many_channels', 'Too many channels joined'));
    assert.deepEqual(await emitAck(s, 'leave', { channelName: channels[0] }), OK);
    assert.deepEqual(await emitAck(s, 'join', { channelName: channels[32] }), OK);
  });

  test('heartbeats beyond the burst are refused with too_many_events, and the budget refills', async () => {
    const s = await connect(gw, user().token);
    // Sent at once: the burst (100) is handled, the rest refused; far fewer than a burst of
    // refusals in a row, so the socket stays.
    const started = Date.now();
    const acks = await Promise.all(Array.from({ length: 130 }, () => emitAck(s, 'heartbeat', {}, 10_000)));
    const handled = acks.filter((a) => a.ok).length;
    const refused = acks.filter((a) => a.error?.code === 'too_many_events');
    assert.equal(handled + refused.length, 130);
    assert.ok(handled <= allowedWithin(Date.now() - started), `${handled} of 130 heartbeats handled`);
    assert.ok(refused.length >= 1 && refused.length <= 30, `${refused.length} of 130 heartbeats refused`);
    assert.deepEqual(refused[0], TOO_MANY_EVENTS);
    // The budget is spent in the order the events were sent: the first burst is all handled.
    const firstRefused = acks.findIndex((a) => !a.ok);
    assert.ok(firstRefused === -1 || firstRefused >= BURST, `event ${firstRefused} of the first burst was refused`);
    assert.equal(s.connected, true, 'refusals interleaved with allowed events do not disconnect');
    await new Promise((r) => { setTimeout(r, 600); });
    assert.deepEqual(await emitAck(s, 'heartbeat', {}), OK, 'tokens come back at 20 per second');
  });

  test('unknown events spend the same budget', async () => {
    const s = await connect(gw, user().token);
    const before = metricValue(await metricsText(gw), 'ws_rate_limit_hits_total', { kind: 'events' });
    const started = Date.now();
    for (let i = 0; i < 150; i++) s.emit('no:such:event', { i });
    const ack = await emitAck(s, 'heartbeat', {}, 10_000);
    const elapsed = Date.now() - started;
    // 151 events, of which at most `allowedWithin(elapsed)` could be handled: the unknown ones
    // spent the budget like any event.
    const hits = metricValue(await metricsText(gw), 'ws_rate_limit_hits_total', { kind: 'events' }) - before;
    assert.ok(hits >= 151 - allowedWithin(elapsed), `${hits} events refused in ${elapsed} ms`);
    if (elapsed < 1000) assert.deepEqual(ack, TOO_MANY_EVENTS);
  });

  test('auth:refresh spends the same budget: a flood of refreshes is refused without verifying them', async () => {
    const s = await connect(gw, user().token);
    const before = metricValue(await metricsText(gw), 'ws_rate_limit_hits_total', { kind: 'events' });
    const started = Date.now();
    const acks = await Promise.all(Array.from({ length: 130 }, () => emitAck(s, 'auth:refresh', { token: 'x' }, 10_000)));
    const elapsed = Date.now() - started;
    const refused = acks.filter((a) => a.error?.code === 'too_many_events').length;
    assert.ok(refused >= 130 - allowedWithin(elapsed), `${refused} of 130 refreshes refused in ${elapsed} ms`);
    const hits = metricValue(await metricsText(gw), 'ws_rate_limit_hits_total', { kind: 'events' }) - before;
    assert.equal(hits, refused);
    assert.equal(s.connected, true);
  });

  test('a socket that keeps sending a whole burst over its budget is disconnected, and others are not', async () => {
    const before = await metricsText(gw);
    const bystander = await connect(gw, user().token);
    const flooder = await connect(gw, user().token);
    for (let i = 0; i < 400; i++) flooder.emit('heartbeat', {});
    const { reason } = await waitDisconnect(flooder, 5000);
    assert.equal(reason, 'io server disconnect');
    const after = await metricsText(gw);
    assert.equal(metricValue(after, 'ws_disconnects_total', { reason: 'event_budget' })
      - metricValue(before, 'ws_disconnects_total', { reason: 'event_budget' }), 1);
    assert.ok(metricValue(after, 'ws_rate_limit_hits_total', { kind: 'events' }) > 0);
    const channelName = chan();
    await join(bystander, channelName);
    assert.deepEqual(await emitAck(bystander, 'chat:send', { channelName, message: 'unaffected' }), OK);
  });
});
