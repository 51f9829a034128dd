// Listener limits (issue 11, point 4): header-read, idle and body timeouts on both listeners,
// a global and a per-source connection cap, and sessions per client behind trusted proxies
// (X-Forwarded-For is believed only from LIVE_TRUSTED_PROXIES).

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  startGateway, connect, closeAllSockets, closeAllRaw, user, http, metricsText, metricValue, sleep,
  rawSession, closesWithin,
} from './harness.mjs';

afterEach(closeAllSockets);
afterEach(closeAllRaw);

const sockets = new Set();
afterEach(() => { for (const s of sockets) s.destroy(); sockets.clear(); });

/** A raw TCP connection; `ended` resolves with what the server sent when it closes. */
function tcp(port) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    sockets.add(s);
    let data = '';
    s.setEncoding('utf8');
    s.on('data', (d) => { data += d; });
    s.ended = new Promise((r) => s.on('close', () => r(data)));
    s.on('error', () => {});
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Resolves with the server's bytes if the connection closes within `ms`, else null. */
async function closedWithin(s, ms) {
  let timer;
  const t = new Promise((r) => { timer = setTimeout(() => r(null), ms); });
  const r = await Promise.race([s.ended, t]);
  clearTimeout(timer);
  return r;
}

describe('listener timeouts (defaults: 10 s)', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test('an unfinished request head, an idle keep-alive connection and a stalled body are closed on both listeners', async () => {
    // A polling session whose POST body will stall (the public listener reads it).
    const open = await http(`${gw.url}/ws/?EIO=4&transport=polling`);
    const sid = JSON.parse(open.text.slice(1)).sid;
    const stalled = {
      [gw.port]: `POST /ws/?EIO=4&transport=polling&sid=${sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n4`,
      [gw.adminPort]: 'POST /v1/channels/c/system HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{',
    };
    const cases = [];
    for (const port of [gw.port, gw.adminPort]) {
      const slowloris = await tcp(port);
      slowloris.write('GET /ws/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nX-Slow: ');
      const idle = await tcp(port);
      idle.write(`GET ${port === gw.port ? '/nothing-here' : '/healthz'} HTTP/1.1\r\nHost: x\r\n\r\n`);
      const body = await tcp(port);
      body.write(stalled[port]);
      cases.push(['slowloris', port, slowloris], ['idle keep-alive', port, idle], ['stalled body', port, body]);
    }
    const results = await Promise.all(cases.map(([, , s]) => closedWithin(s, 14_000)));
    cases.forEach(([what, port], i) => {
      assert.notEqual(results[i], null, `${what} on port ${port} was still open after 14 s`);
    });
  });
});

describe('connection caps', () => {
  test('a source holds at most LIVE_MAX_CONNECTIONS_PER_IP (256) connections; the next gets 429', async () => {
    const gw = await startGateway();
    try {
      const held = [];
      for (let i = 0; i < 256; i++) held.push(await tcp(gw.port));
      const extra = await tcp(gw.port);
      const answer = await closedWithin(extra, 3000);
      assert.match(answer ?? '', /^HTTP\/1\.1 429/);
      const text = await metricsText(gw);
      assert.equal(metricValue(text, 'live_connections_refused_total', { listener: 'public', reason: 'per_ip_limit' }), 1);
      // The admin listener has no per-source cap: probes and scrapes still work.
      assert.equal((await http(`${gw.adminUrl}/healthz`)).status, 200);
      held[0].destroy();
      await sleep(200);
      const again = await tcp(gw.port);
      assert.equal(await closedWithin(again, 300), null, 'a freed slot is usable again');
    } finally {
      await gw.stop();
    }
  });

  test('the listener holds at most LIVE_MAX_CONNECTIONS; the next gets 503, WebSockets included', async () => {
    const gw = await startGateway({ args: ['--max-connections', '3'] });
    try {
      await connect(gw, user().token);
      await connect(gw, user().token);
      await tcp(gw.port);
      const extra = await tcp(gw.port);
      assert.match((await closedWithin(extra, 3000)) ?? '', /^HTTP\/1\.1 503/);
      const text = await metricsText(gw);
      assert.equal(metricValue(text, 'live_open_connections', { listener: 'public' }), 3);
    } finally {
      await gw.stop();
    }
  });
});

describe('sessions per client behind trusted proxies', () => {
  let gw;
  before(async () => {
    gw = await startGateway({ args: ['--trusted-proxies', '127.0.0.0/8', '--max-connections-per-ip', '3'] });
  });
  after(async () => { await gw?.stop(); });

  const handshake = (xff) => http(`${gw.url}/ws/?EIO=4&transport=polling`, { headers: xff ? { 'X-Forwarded-For': xff } : {} });

  test('each client address named by X-Forwarded-For gets its own cap, whatever it forged on the left', async () => {
    for (let i = 0; i < 3; i++) assert.equal((await handshake(`6.6.6.${i}, 198.51.100.7`)).status, 200);
    const refused = await handshake('198.51.100.7');
    assert.equal(refused.status, 429);
    assert.equal((await handshake('198.51.100.8')).status, 200, 'another client is not affected');
    const text = await metricsText(gw);
    assert.equal(metricValue(text, 'live_connections_refused_total', { listener: 'public', reason: 'per_ip_sessions' }), 1);
  });
});

describe('a session that closes without connecting', () => {
  let gw;
  before(async () => { gw = await startGateway({ args: ['--max-connections-per-ip', '2'] }); });
  after(async () => { await gw?.stop(); });

  test('gives its source slot (and its memory) back at once, not after the connect timeout', async () => {
    for (let i = 0; i < 6; i++) {
      const r = await rawSession(gw); // refused with HTTP 429 if the slots were still held
      if (i % 2) {
        r.send('451-["x",{"_placeholder":true,"num":0}]'); // closed by the server
        assert.equal(await closesWithin(r, 2000), true);
      } else {
        r.close(); // closed by the client
      }
      await sleep(200);
    }
  });
});

describe('X-Forwarded-For from an untrusted peer', () => {
  let gw;
  before(async () => { gw = await startGateway({ args: ['--max-connections-per-ip', '2'] }); });
  after(async () => { await gw?.stop(); });

  test('is ignored: the peer address is the source', async () => {
    const handshake = (xff) => http(`${gw.url}/ws/?EIO=4&transport=polling`, { headers: { 'X-Forwarded-For': xff } });
    assert.equal((await handshake('1.1.1.1')).status, 200);
    assert.equal((await handshake('2.2.2.2')).status, 200);
    assert.equal((await handshake('3.3.3.3')).status, 429);
  });
});
