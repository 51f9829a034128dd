// Redis over TLS: a real redis-server listening only on --tls-port (and a TLS Redis Cluster),
// with a CA and server certificate generated here by openssl. rediss:// works with the CA from
// REDIS_TLS_CA_FILE and the password from REDIS_PASSWORD (which wins over the URL's); and
// `live_redis_up`/readiness never claim Redis is up when the client is not really connected:
// plaintext to a TLS port, an untrusted certificate, a wrong password.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, user, chan, connect, join, emitAck, nextEvent, closeAllSockets, http, sleep, OK,
  uid,
} from './harness.mjs';
import {
  missing, startRedis, startCluster, makeCerts, tempDir, stopAll, eventually, redisUp, redisBin, cliBin,
} from './redis-harness.mjs';

const skip = missing(redisBin, cliBin, 'openssl');
const prefix = uid('tls').replace(/-/g, '_');
const PASSWORD = 'tls-test-password';

let certs;
let redis;

const metric = async (gw) => (await http(`${gw.adminUrl}/metrics`)).text;

function start(env) {
  return startGateway({ env: { LIVE_REDIS_PREFIX: prefix, ...env } });
}

before(async () => {
  if (skip) return;
  certs = makeCerts(tempDir('tls'));
  redis = await startRedis({ tls: certs, args: ['--requirepass', PASSWORD] });
});

after(async () => {
  closeAllSockets();
  await stopAll();
});

afterEach(() => closeAllSockets());

test('rediss:// with the CA from REDIS_TLS_CA_FILE and REDIS_PASSWORD over the URL password carries cross-replica traffic', { skip }, async () => {
  const env = {
    // The URL's password is wrong on purpose: REDIS_PASSWORD must win.
    REDIS_URL: `rediss://:not-the-password@127.0.0.1:${redis.port}`,
    REDIS_PASSWORD: PASSWORD,
    REDIS_TLS_CA_FILE: certs.ca,
  };
  const [gw1, gw2] = await Promise.all([start({ ...env, POD_NAME: 't1' }), start({ ...env, POD_NAME: 't2' })]);
  try {
    await redisUp(gw1);
    await redisUp(gw2);
    assert.equal((await http(`${gw1.adminUrl}/readyz`)).text, 'ready');
    const c = chan();
    const a = await connect(gw1, user().token);
    const b = await connect(gw2, user().token);
    await join(b, c);
    await join(a, c, { others: [b] });
    assert.deepEqual(await emitAck(a, 'chat:send', { channelName: c, message: 'over tls' }), OK);
    assert.equal((await nextEvent(b, 'chat:new', 5000)).message, 'over tls');
  } finally {
    await Promise.all([gw1.stop(2000), gw2.stop(2000)]);
  }
});

test('Redis is never reported up when the client is not really connected', { skip }, async () => {
  const cases = [
    ['plaintext to the TLS port', { REDIS_URL: `redis://127.0.0.1:${redis.port}`, REDIS_PASSWORD: PASSWORD }],
    ['a certificate from another CA', { REDIS_URL: `rediss://127.0.0.1:${redis.port}`, REDIS_PASSWORD: PASSWORD, REDIS_TLS_CA_FILE: certs.otherCa }],
    ['a wrong password', { REDIS_URL: `rediss://:wrong@127.0.0.1:${redis.port}`, REDIS_TLS_CA_FILE: certs.ca }],
  ];
  const gws = await Promise.all(cases.map(([, env]) => start(env)));
  try {
    // Longer than the connect timeout and several health checks.
    await sleep(4000);
    for (const [i, [what]] of cases.entries()) {
      const text = await metric(gws[i]);
      assert.match(text, /^live_redis_up 0$/m, what);
      const ready = await http(`${gws[i].adminUrl}/readyz`);
      assert.equal(ready.status, 200, `${what}: local clients are still served`);
      assert.match(ready.text, /redis unreachable/, what);
    }
  } finally {
    await Promise.all(gws.map((g) => g.stop(2000)));
  }
});

test('a CA file with a plaintext redis:// URL is refused at startup', { skip }, async () => {
  const gw = await startGateway({
    env: { REDIS_URL: `redis://127.0.0.1:${redis.port}`, REDIS_TLS_CA_FILE: certs.ca, LIVE_REDIS_PREFIX: prefix },
    waitReady: false,
  });
  const exit = await gw.waitExit(10_000);
  assert.ok(exit && exit.code !== 0, `exited with ${JSON.stringify(exit)}`);
  assert.match(gw.stderr(), /REDIS_TLS_CA_FILE.*plaintext/);
});

test('rediss-cluster:// reaches a TLS Redis Cluster with the CA from REDIS_TLS_CA_FILE', { skip }, async () => {
  const cluster = await startCluster({ masters: 3, tls: certs });
  const env = { REDIS_URL: cluster.url, REDIS_TLS_CA_FILE: certs.ca };
  const [gw1, gw2] = await Promise.all([start({ ...env, POD_NAME: 'tc1' }), start({ ...env, POD_NAME: 'tc2' })]);
  try {
    await redisUp(gw1, 15_000);
    await redisUp(gw2, 15_000);
    const c = chan();
    const a = await connect(gw1, user().token);
    const b = await connect(gw2, user().token);
    await join(b, c);
    await join(a, c, { others: [b] });
    assert.deepEqual(await emitAck(a, 'chat:send', { channelName: c, message: 'tls cluster' }), OK);
    assert.equal((await nextEvent(b, 'chat:new', 5000)).message, 'tls cluster');
  } finally {
    await Promise.all([gw1.stop(2000), gw2.stop(2000)]);
    await cluster.stop();
  }
});
