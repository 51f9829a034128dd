// CORS_ALLOW: browser origins are checked on the polling handshake and the websocket upgrade.
// Without a list the gateway fails closed: browser origins are refused unless CORS_ALLOW is `*`
// (then without credentials) or the gateway runs with --dev.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, connectError, closeAllSockets, user, chan, emitAck, join, nextEvent, http, OK,
  SECRET,
} from './harness.mjs';

afterEach(closeAllSockets);

const ALLOWED = 'http://allowed.test';
const EVIL = 'http://evil.test';
const TRANSPORTS = [['websocket'], ['polling']];

describe('a gateway with CORS_ALLOW', () => {
  let gw;
  before(async () => { gw = await startGateway({ env: { CORS_ALLOW: `${ALLOWED},http://second.test` } }); });
  after(async () => { await gw?.stop(); });

  for (const transports of TRANSPORTS) {
    test(`refuses a ${transports[0]} connection from a disallowed Origin`, async () => {
      const err = await connectError(gw, user().token, { transports, origin: EVIL });
      assert.ok(err instanceof Error);
    });

    test(`accepts a ${transports[0]} connection from an allowed Origin and it works`, async () => {
      const s = await connect(gw, user().token, { transports, origin: ALLOWED });
      const channelName = chan();
      await join(s, channelName);
      assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'from allowed' }), OK);
      assert.equal((await nextEvent(s, 'chat:new')).message, 'from allowed');
    });

    test(`accepts a ${transports[0]} connection from the second listed Origin`, async () => {
      const s = await connect(gw, user().token, { transports, origin: 'http://second.test' });
      assert.equal(s.connected, true);
    });

    test(`accepts a ${transports[0]} connection without an Origin header`, async () => {
      const s = await connect(gw, user().token, { transports });
      assert.equal(s.connected, true);
    });
  }

  test('a polling handshake from the allowed origin carries access-control-allow-origin for that origin, with credentials', async () => {
    const r = await http(`${gw.url}/ws/?EIO=4&transport=polling`, { headers: { Origin: ALLOWED } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('access-control-allow-origin'), ALLOWED);
    assert.equal(r.headers.get('access-control-allow-credentials'), 'true');
  });

  test('a polling handshake from a disallowed origin gets no access-control-allow-origin for it', async () => {
    const r = await http(`${gw.url}/ws/?EIO=4&transport=polling`, { headers: { Origin: EVIL } });
    const acao = r.headers.get('access-control-allow-origin');
    assert.ok(acao !== EVIL && acao !== '*', `got access-control-allow-origin ${acao} (status ${r.status})`);
  });
});

describe('a gateway without CORS_ALLOW fails closed', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  for (const transports of TRANSPORTS) {
    test(`refuses a ${transports[0]} connection from any browser Origin`, async () => {
      const err = await connectError(gw, user().token, { transports, origin: EVIL });
      assert.ok(err instanceof Error);
    });

    test(`still accepts a ${transports[0]} connection without an Origin header (native clients)`, async () => {
      const s = await connect(gw, user().token, { transports });
      assert.equal(s.connected, true);
    });
  }

  test('a polling handshake with an Origin is refused with 403 and no CORS headers', async () => {
    const r = await http(`${gw.url}/ws/?EIO=4&transport=polling`, { headers: { Origin: EVIL } });
    assert.equal(r.status, 403);
    assert.equal(r.headers.get('access-control-allow-origin'), null);
  });
});

describe('a gateway with CORS_ALLOW=*', () => {
  let gw;
  before(async () => { gw = await startGateway({ env: { CORS_ALLOW: '*' } }); });
  after(async () => { await gw?.stop(); });

  for (const transports of TRANSPORTS) {
    test(`accepts a ${transports[0]} connection from any Origin`, async () => {
      const s = await connect(gw, user().token, { transports, origin: EVIL });
      assert.equal(s.connected, true);
    });
  }

  test('answers any origin without credentials', async () => {
    const r = await http(`${gw.url}/ws/?EIO=4&transport=polling`, { headers: { Origin: EVIL } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('access-control-allow-origin'), EVIL);
    assert.equal(r.headers.get('access-control-allow-credentials'), null);
  });

  test('a list mixing * with origins is refused at startup', async () => {
    const bad = await startGateway({ env: { CORS_ALLOW: `*,${ALLOWED}` }, waitReady: false });
    const exit = await bad.waitExit(10_000);
    assert.notEqual(exit?.code, 0, 'the gateway must refuse to start');
    assert.match(bad.stderr(), /CORS_ALLOW/);
  });
});

describe('a gateway in --dev mode without CORS_ALLOW', () => {
  let gw;
  before(async () => { gw = await startGateway({ dev: true, secret: SECRET }); });
  after(async () => { await gw?.stop(); });

  test('accepts a browser Origin, without credentials', async () => {
    const s = await connect(gw, user().token, { origin: EVIL });
    assert.equal(s.connected, true);
    const r = await http(`${gw.url}/ws/?EIO=4&transport=polling`, { headers: { Origin: EVIL } });
    assert.equal(r.headers.get('access-control-allow-credentials'), null);
  });
});
