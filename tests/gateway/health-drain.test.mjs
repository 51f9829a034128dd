// Health endpoints and graceful drain on SIGTERM.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, connectError, closeAllSockets, user, chan, join, http, waitDisconnect,
} from './harness.mjs';

afterEach(closeAllSockets);

describe('health', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test('GET /healthz and /readyz on the admin listener answer 200 while running', async () => {
    assert.equal((await http(`${gw.adminUrl}/healthz`)).status, 200);
    assert.equal((await http(`${gw.adminUrl}/readyz`)).status, 200);
  });
});

describe('drain on SIGTERM', () => {
  const DRAIN = 2;
  const CLIENTS = 20;
  let gw;
  before(async () => { gw = await startGateway({ drainSeconds: DRAIN, shutdownTimeoutSeconds: DRAIN + 10 }); });
  after(async () => { await gw?.stop(1000); });

  test('readyz turns 503, new connections are refused, clients are disconnected at transport level spread over the window, and the process exits 0', async () => {
    const channelName = chan();
    const sockets = [];
    for (let i = 0; i < CLIENTS; i++) {
      const s = await connect(gw, user().token, { transports: i % 4 === 3 ? ['polling'] : ['websocket'] });
      sockets.push(s);
    }
    await join(sockets[0], channelName);
    const disconnects = sockets.map((s) => waitDisconnect(s, (DRAIN + 5) * 1000));

    const signalled = Date.now();
    gw.signal('SIGTERM');

    // readyz flips at once (allow a short poll for signal delivery).
    let ready;
    for (let i = 0; i < 10; i++) {
      ready = await http(`${gw.adminUrl}/readyz`).catch((e) => ({ status: `error ${e.message}` }));
      if (ready.status === 503) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(ready.status, 503, 'readyz while draining');
    assert.ok(Date.now() - signalled < 1500, 'readyz turned 503 within 1.5 s of SIGTERM');
    assert.equal((await http(`${gw.adminUrl}/healthz`)).status, 200, 'healthz stays 200 while draining');

    await connectError(gw, user().token);

    const results = await Promise.all(disconnects);
    const reasons = new Set(results.map((r) => r.reason));
    for (const r of reasons) assert.match(r, /^transport (close|error)$/, `disconnect reason ${r}`);
    const times = results.map((r) => r.at);
    const spread = Math.max(...times) - Math.min(...times);
    assert.ok(spread > 500, `disconnects spread over ${spread} ms, expected > 500 ms`);
    assert.ok(Math.max(...times) - signalled <= (DRAIN + 1.5) * 1000,
      `last disconnect ${Math.max(...times) - signalled} ms after SIGTERM, drain window ${DRAIN} s`);

    const info = await gw.waitExit((DRAIN + 4) * 1000);
    assert.notEqual(info, null, `process still running ${DRAIN + 4} s after SIGTERM`);
    assert.equal(info.code, 0, `exit ${JSON.stringify(info)}; stderr:\n${gw.stderr().slice(-2000)}`);
  });
});

describe('shutdown with no clients', () => {
  test('SIGTERM with no connected clients exits 0 within the drain window plus a little', async () => {
    const gw = await startGateway({ drainSeconds: 2, shutdownTimeoutSeconds: 12 });
    const t0 = Date.now();
    gw.signal('SIGTERM');
    const info = await gw.waitExit(6000);
    if (info === null) await gw.stop(1000);
    assert.notEqual(info, null, 'process did not exit within 6 s');
    assert.equal(info.code, 0);
    assert.ok(Date.now() - t0 < 6000);
  });
});
