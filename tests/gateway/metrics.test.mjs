// Prometheus metrics on the admin listener: names, exact gauges, counters that move, bounded labels.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, connectError, closeAllSockets, user, uid, chan, token, emitAck, nextEvent,
  join, bridge, http, metricsText, metricValue, parseMetrics, poll, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

describe('metrics', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  const active = async () => metricValue(await metricsText(gw), 'ws_active_connections');
  /** Sockets closed by the previous test disconnect asynchronously; wait until none is left so
   * gauges can be asserted exactly. */
  const quiet = async () => {
    assert.equal(await poll(async () => (await active()) === 0, { timeoutMs: 3000 }), true,
      `ws_active_connections did not return to 0, got ${await active()}`);
  };

  test('GET /metrics on the admin listener is Prometheus text', async () => {
    const r = await http(`${gw.adminUrl}/metrics`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /^text\/plain/);
    assert.match(r.text, /^# (HELP|TYPE) /m);
  });

  test('ws_active_connections is exactly the number of connected sockets after 5 connects and 3 disconnects', async () => {
    await quiet();
    const base = 0;
    const sockets = [];
    for (let i = 0; i < 5; i++) sockets.push(await connect(gw, user().token, { transports: i % 2 ? ['polling'] : ['websocket'] }));
    assert.equal(await poll(async () => (await active()) === base + 5, { timeoutMs: 2000 }), true,
      `expected ${base + 5}, got ${await active()}`);
    for (const s of sockets.slice(0, 3)) s.close();
    assert.equal(await poll(async () => (await active()) === base + 2, { timeoutMs: 3000 }), true,
      `expected ${base + 2}, got ${await active()}`);
    for (const s of sockets.slice(3)) s.close();
    assert.equal(await poll(async () => (await active()) === base, { timeoutMs: 3000 }), true,
      `expected ${base}, got ${await active()}`);
  });

  test('a refused handshake is not counted as an active connection', async () => {
    await quiet();
    const base = 0;
    await connectError(gw, 'garbage');
    await connectError(gw, null, { transports: ['polling'] });
    assert.equal(await active(), base);
  });

  test('accepted and rejected connections, auth failures and error codes are counted', async () => {
    const before = await metricsText(gw);
    await connectError(gw, 'garbage');
    const s = await connect(gw, user().token);
    assert.deepEqual(await emitAck(s, 'leave', { channelName: chan() }),
      { ok: false, error: { code: 'not_member', message: 'Not a member of this channel' } });
    const after = await metricsText(gw);
    const d = (name, labels) => metricValue(after, name, labels) - metricValue(before, name, labels);
    assert.equal(d('ws_connections_total', { status: 'accepted' }), 1);
    assert.equal(d('ws_connections_total', { status: 'rejected' }), 1);
    assert.equal(d('ws_auth_failures_total'), 1);
    assert.equal(d('ws_errors_total', { code: 'not_member' }), 1);
    assert.ok(d('ws_errors_total', { code: 'unauthorized' }) >= 1, 'unauthorized handshake counted in ws_errors_total');
  });

  test('every documented metric name is present after some traffic, with the documented labels', async () => {
    const channelName = chan();
    const a = user();
    const sa = await connect(gw, a.token);
    const sb = await connect(gw, user().token);
    await join(sa, channelName);
    await join(sb, channelName, { others: [sa] });
    assert.deepEqual(await emitAck(sa, 'chat:send', { channelName, message: 'hi' }), OK);
    assert.deepEqual(await emitAck(sa, 'gift:announce', { channelName, giftId: 'rose', qty: 1 }), OK);
    for (let i = 0; i < 31; i++) await emitAck(sb, 'gift:announce', { channelName, giftId: 'g', qty: 1 });
    await emitAck(sb, 'leave', { channelName });
    sb.close();
    await connectError(gw, 'garbage');
    await bridge(gw, 'GET', `/v1/channels/${channelName}/viewers`, undefined, token({ userId: uid(), role: 'service' }));
    await poll(async () => (await metricsText(gw)).includes('ws_disconnects_total'), { timeoutMs: 2000 });

    const text = await metricsText(gw);
    const samples = parseMetrics(text);
    const names = new Set(samples.map((s) => s.name));
    for (const n of [
      'ws_connections_total', 'ws_disconnects_total', 'ws_active_connections', 'ws_messages_total',
      'ws_message_duration_seconds_bucket', 'ws_message_duration_seconds_sum', 'ws_message_duration_seconds_count',
      'ws_presence_delta_total', 'ws_rate_limit_hits_total', 'ws_errors_total', 'ws_rooms_active',
      'ws_room_size_bucket', 'ws_room_size_count', 'live_bridge_requests_total', 'live_build_info', 'ws_auth_failures_total',
    ]) assert.ok(names.has(n), `metric ${n} missing`);
    assert.match(text, /^# TYPE ws_message_duration_seconds histogram$/m);
    assert.match(text, /^# TYPE ws_room_size histogram$/m);
    assert.match(text, /^# TYPE ws_active_connections gauge$/m);
    assert.match(text, /^# TYPE ws_rooms_active gauge$/m);
    assert.match(text, /^# TYPE ws_connections_total counter$/m);

    const labelsOf = (n) => samples.filter((s) => s.name === n).map((s) => s.labels);
    assert.ok(labelsOf('ws_presence_delta_total').some((l) => l.delta === 'join'));
    assert.ok(labelsOf('ws_presence_delta_total').some((l) => l.delta === 'leave'));
    assert.ok(labelsOf('ws_presence_delta_total').every((l) => ['join', 'leave'].includes(l.delta)));
    assert.ok(labelsOf('ws_rate_limit_hits_total').some((l) => l.kind === 'gifts'));
    assert.ok(labelsOf('ws_rate_limit_hits_total').every((l) => ['messages', 'gifts'].includes(l.kind)));
    assert.ok(labelsOf('ws_connections_total').every((l) => ['accepted', 'rejected'].includes(l.status)));
    assert.ok(labelsOf('ws_messages_total').every((l) => 'type' in l && 'direction' in l));
    assert.ok(labelsOf('ws_message_duration_seconds_count').every((l) => 'type' in l));
    assert.ok(labelsOf('ws_disconnects_total').every((l) => 'reason' in l));
    assert.ok(labelsOf('live_build_info').every((l) => typeof l.version === 'string' && l.version.length > 0));
    assert.ok(labelsOf('live_bridge_requests_total').every((l) => 'route' in l && 'status' in l));
    const codes = new Set([
      'invalid_payload', 'invalid_channel', 'invalid_role', 'not_member', 'invalid_message_length', 'muted',
      'rate_limited', 'empty_message', 'invalid_gift', 'forbidden', 'invalid_action', 'invalid_target', 'unauthorized',
    ]);
    for (const l of labelsOf('ws_errors_total')) assert.ok(codes.has(l.code), `unexpected ws_errors_total code ${l.code}`);
  });

  test('the rate limit hit counter moves by one per refused message', async () => {
    const channelName = chan();
    const s = await connect(gw, user().token);
    await join(s, channelName);
    for (let i = 0; i < 30; i++) await emitAck(s, 'chat:send', { channelName, message: `m${i}` });
    const before = metricValue(await metricsText(gw), 'ws_rate_limit_hits_total', { kind: 'messages' });
    await emitAck(s, 'chat:send', { channelName, message: 'over 1' });
    await emitAck(s, 'chat:send', { channelName, message: 'over 2' });
    const after = metricValue(await metricsText(gw), 'ws_rate_limit_hits_total', { kind: 'messages' });
    assert.equal(after - before, 2);
  });

  test('ws_rooms_active counts a new room while it has members and drops it when it empties', async () => {
    const channelName = chan();
    const rooms = async () => metricValue(await metricsText(gw), 'ws_rooms_active');
    await quiet();
    const base = 0;
    assert.equal(await rooms(), 0, 'no rooms while nobody is connected');
    const s = await connect(gw, user().token);
    await join(s, channelName);
    assert.equal(await poll(async () => (await rooms()) === base + 1, { timeoutMs: 2000 }), true);
    assert.deepEqual(await emitAck(s, 'leave', { channelName }), OK);
    assert.equal(await poll(async () => (await rooms()) === base, { timeoutMs: 2000 }), true);
  });

  test('no label value ever contains a channel name, user id, gift id or message text used by a client', async () => {
    const channelName = chan('secretchannelzq');
    const userId = uid('secretuserzq');
    const giftId = 'secretgiftzq';
    const message = 'secretmessagezq';
    const s = await connect(gw, user({ userId, username: 'secretnamezq' }).token);
    await join(s, channelName);
    await emitAck(s, 'chat:send', { channelName, message });
    await emitAck(s, 'gift:announce', { channelName, giftId, qty: 1 });
    await emitAck(s, 'gift:announce', { channelName, giftId, qty: 1000 });
    await emitAck(s, 'chat:send', { channelName: `${channelName}-notjoined`, message });
    s.emit(`secreteventzq:${userId}`, {});
    await emitAck(s, 'heartbeat', { channelName });
    const svc = token({ userId: uid('secretsvczq'), role: 'service' });
    await bridge(gw, 'GET', `/v1/channels/${channelName}/viewers`, undefined, svc);
    await bridge(gw, 'GET', `/v1/channels/${channelName}/users/${userId}`, undefined, svc);
    await bridge(gw, 'POST', `/v1/channels/${channelName}/system`, { type: 'secrettypezq' }, svc);
    await bridge(gw, 'POST', `/v1/channels/${channelName}/nothing-secretroutezq`, {}, svc);
    const text = await metricsText(gw);
    assert.doesNotMatch(text, /secret[a-z]*zq/, 'an id or name leaked into a metric label');
  });
});
