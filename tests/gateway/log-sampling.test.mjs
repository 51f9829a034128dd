// Logs under abuse (issue 11, point 8): failures a client can repeat at will are counted in
// their metric every time but logged sampled, never one line per packet: refused handshakes,
// and the broadcast failures a slow member causes.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, connectError, closeAllSockets, closeAllRaw, user, token, chan, join,
  rawSession, rawConnect, bridge, metricsText, metricValue, sleep,
} from './harness.mjs';

afterEach(() => { closeAllSockets(); closeAllRaw(); });

const lines = (text, needle) => text.split('\n').filter((l) => l.includes(needle)).length;
/** Lines a sampled kind may log in `ms`: 5 per 10 s window. */
const sampledBound = (ms) => 5 * (Math.ceil(ms / 10_000) + 1);

describe('sampled logs', () => {
  let gw;
  before(async () => {
    // A 16-packet outgoing queue fills fast behind a member that stops reading.
    gw = await startGateway({ args: ['--socket-buffer-packets', '16'] });
  });
  after(async () => { await gw?.stop(); });

  test('200 refused handshakes are all counted but log only a few lines', async () => {
    const before = metricValue(await metricsText(gw), 'ws_auth_failures_total');
    const started = Date.now();
    for (let i = 0; i < 200; i++) await connectError(gw, 'not-a-jwt');
    await sleep(200);
    const elapsed = Date.now() - started;
    const after = metricValue(await metricsText(gw), 'ws_auth_failures_total');
    assert.equal(after - before, 200);
    const logged = lines(gw.stderr(), 'handshake refused');
    assert.ok(logged >= 1 && logged <= sampledBound(elapsed), `${logged} log lines for 200 refusals in ${elapsed} ms`);
    const suppressed = metricValue(await metricsText(gw), 'live_log_lines_suppressed_total', { event: 'handshake_refused' });
    assert.equal(suppressed + logged, 200, 'every refusal is either logged or counted as suppressed');
  });

  test('a member that stops reading does not make every broadcast log a warning', async () => {
    const channelName = chan();
    const reader = await connect(gw, user().token);
    await join(reader, channelName);
    const slow = await rawSession(gw, { answerPings: false });
    assert.match(await rawConnect(slow, user().token), /^40\/live,/);
    slow.send(`42/live,0["join",{"channelName":"${channelName}"}]`);
    await slow.nextFrame((f) => f.startsWith('43/live,0'));
    slow.ws._socket.pause(); // stop reading: the kernel buffers, then its queue, fill up

    const service = token({ userId: 'backend', role: 'service' });
    const big = { metrics: { blob: 'x'.repeat(50_000) } };
    const before = metricValue(await metricsText(gw), 'live_emit_failures_total');
    const started = Date.now();
    // Publish until the stuck member's kernel buffers and queue are full and 100 broadcasts to
    // it have failed (a few hundred 50 KB messages on loopback).
    let failures = 0;
    for (let i = 0; i < 1000 && failures < 100; i++) {
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/metrics`, big, service);
      assert.equal(r.status, 202);
      if (i % 20 === 19) failures = metricValue(await metricsText(gw), 'live_emit_failures_total') - before;
    }
    assert.ok(failures >= 100, `only ${failures} broadcasts failed: the member's queue did not fill`);
    const logged = lines(gw.stderr(), 'room broadcast failed');
    const elapsed = Date.now() - started;
    assert.ok(logged <= sampledBound(elapsed), `${logged} warnings for ${failures} failed broadcasts in ${elapsed} ms`);
    assert.equal(reader.connected, true, 'the reading member is unaffected');
  });
});
