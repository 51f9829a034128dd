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

describe('sampled logs', () => {
  let gw;
  before(async () => {
    // A 16-packet outgoing queue fills fast behind a member that stops reading.
    gw = await startGateway({ args: ['--socket-buffer-packets', '16'] });
  });
  after(async () => { await gw?.stop(); });

  test('200 refused handshakes are all counted but log only a few lines', async () => {
    const before = metricValue(await metricsText(gw), 'ws_auth_failures_total');
    for (let i = 0; i < 200; i++) await connectError(gw, 'not-a-jwt');
    await sleep(200);
    const after = metricValue(await metricsText(gw), 'ws_auth_failures_total');
    assert.equal(after - before, 200);
    const logged = lines(gw.stderr(), 'handshake refused');
    assert.ok(logged >= 1 && logged <= 10, `${logged} log lines for 200 refusals`);
    assert.ok(metricValue(await metricsText(gw), 'live_log_lines_suppressed_total', { event: 'handshake_refused' }) >= 190);
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
    for (let i = 0; i < 600; i++) {
      const r = await bridge(gw, 'POST', `/v1/channels/${channelName}/metrics`, big, service);
      assert.equal(r.status, 202);
    }
    const failures = metricValue(await metricsText(gw), 'live_emit_failures_total') - before;
    assert.ok(failures >= 100, `only ${failures} broadcasts failed: the member's queue did not fill`);
    const logged = lines(gw.stderr(), 'room broadcast failed');
    assert.ok(logged <= 10, `${logged} warnings for ${failures} failed broadcasts`);
    assert.equal(reader.connected, true, 'the reading member is unaffected');
  });
});
