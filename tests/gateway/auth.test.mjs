// Handshake authentication: HS256 / RS256 / ES256 keys, exp/nbf leeway, iss/aud, and refusal shape.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, connect, connectError, closeAllSockets, token, user, uid, chan, emitAck, nextEvent,
  OK, SECRET,
} from './harness.mjs';

afterEach(closeAllSockets);
const now = () => Math.floor(Date.now() / 1000);

describe('an HS256 gateway', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await gw?.stop(); });

  test('accepts a valid token passed in auth.token', async () => {
    const u = user();
    const s = await connect(gw, u.token);
    assert.equal(s.connected, true);
  });

  for (const transports of [['websocket'], ['polling']]) {
    test(`accepts a valid token passed as an Authorization Bearer header over ${transports[0]}`, async () => {
      const u = user();
      const s = await connect(gw, null, { transports, extraHeaders: { Authorization: `Bearer ${u.token}` } });
      const channelName = chan();
      assert.deepEqual(await emitAck(s, 'join', { channelName }), OK);
      const ev = await nextEvent(s, 'system:event');
      assert.equal(ev.userId, u.userId, 'the header token identifies the user');
    });
  }

  const rejected = {
    'no token at all': () => null,
    'a garbage token': () => 'not-a-jwt',
    'a token signed with another secret': () => token({ userId: uid() }, { secret: 'wrong-secret' }),
    'a token that expired a minute ago': () => token({ userId: uid(), exp: now() - 60 }),
    'a token whose nbf is a minute in the future': () => token({ userId: uid(), nbf: now() + 60 }),
    'an alg none token': () => token({ userId: uid() }, { alg: 'none' }),
    'a token without userId': () => token({ username: 'nobody' }),
    'a token whose userId is a number': () => token({ userId: 12345 }),
    'a token with a tampered payload': () => {
      const [h, , s] = token({ userId: uid() }).split('.');
      const p = Buffer.from(JSON.stringify({ userId: 'admin', role: 'admin', exp: now() + 60 })).toString('base64url');
      return `${h}.${p}.${s}`;
    },
  };
  for (const [what, make] of Object.entries(rejected)) {
    test(`refuses ${what} with connect_error "unauthorized"`, async () => {
      const err = await connectError(gw, make());
      assert.equal(err.message, 'unauthorized');
    });
  }

  test('refuses a garbage Bearer header with connect_error "unauthorized"', async () => {
    const err = await connectError(gw, null, { extraHeaders: { Authorization: 'Bearer garbage' } });
    assert.equal(err.message, 'unauthorized');
  });

  test('accepts a token that expired 2 s ago, within the 5 s leeway', async () => {
    const s = await connect(gw, token({ userId: uid(), exp: now() - 2 }));
    assert.equal(s.connected, true);
  });

  test('accepts a token whose nbf is 2 s in the future, within the 5 s leeway', async () => {
    const s = await connect(gw, token({ userId: uid(), nbf: now() + 2 }));
    assert.equal(s.connected, true);
  });

  test('ignores iss and aud claims when JWT_ISSUER and JWT_AUDIENCE are unset', async () => {
    const s = await connect(gw, token({ userId: uid(), iss: 'someone', aud: 'something' }));
    assert.equal(s.connected, true);
  });
});

describe('an RS256 gateway with JWT_PUBLIC_KEY as PEM text', () => {
  let gw;
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = publicKey.export({ type: 'spki', format: 'pem' });
  before(async () => {
    gw = await startGateway({ secret: null, env: { JWT_PUBLIC_KEY: pem, JWT_ALGORITHM: 'RS256' } });
  });
  after(async () => { await gw?.stop(); });

  test('accepts a token signed with the matching private key', async () => {
    const s = await connect(gw, token({ userId: uid() }, { alg: 'RS256', key: privateKey }));
    assert.equal(s.connected, true);
  });

  test('refuses a token signed with another RSA key', async () => {
    const other = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const err = await connectError(gw, token({ userId: uid() }, { alg: 'RS256', key: other }));
    assert.equal(err.message, 'unauthorized');
  });

  test('refuses an HS256 token signed with the public key PEM as the secret (alg confusion)', async () => {
    const err = await connectError(gw, token({ userId: uid() }, { alg: 'HS256', secret: pem }));
    assert.equal(err.message, 'unauthorized');
  });

  test('refuses an HS256 token signed with the suite secret', async () => {
    const err = await connectError(gw, token({ userId: uid() }, { secret: SECRET }));
    assert.equal(err.message, 'unauthorized');
  });

  test('refuses an alg none token', async () => {
    const err = await connectError(gw, token({ userId: uid() }, { alg: 'none' }));
    assert.equal(err.message, 'unauthorized');
  });
});

describe('an ES256 gateway with JWT_PUBLIC_KEY_FILE', () => {
  let gw;
  let dir;
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-es256-'));
    const file = path.join(dir, 'jwt.pub.pem');
    fs.writeFileSync(file, publicKey.export({ type: 'spki', format: 'pem' }));
    gw = await startGateway({ secret: null, env: { JWT_PUBLIC_KEY_FILE: file, JWT_ALGORITHM: 'ES256' } });
  });
  after(async () => {
    await gw?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('accepts a token signed with the matching P-256 key', async () => {
    const s = await connect(gw, token({ userId: uid() }, { alg: 'ES256', key: privateKey }));
    assert.equal(s.connected, true);
  });

  test('refuses a token signed with another P-256 key', async () => {
    const other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const err = await connectError(gw, token({ userId: uid() }, { alg: 'ES256', key: other }));
    assert.equal(err.message, 'unauthorized');
  });

  test('refuses an RS256 token', async () => {
    const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const err = await connectError(gw, token({ userId: uid() }, { alg: 'RS256', key: rsa }));
    assert.equal(err.message, 'unauthorized');
  });
});

describe('a gateway with JWT_ISSUER and JWT_AUDIENCE', () => {
  let gw;
  before(async () => {
    gw = await startGateway({ env: { JWT_ISSUER: 'https://issuer.test', JWT_AUDIENCE: 'live' } });
  });
  after(async () => { await gw?.stop(); });

  test('accepts a token with the configured iss and aud', async () => {
    const s = await connect(gw, token({ userId: uid(), iss: 'https://issuer.test', aud: 'live' }));
    assert.equal(s.connected, true);
  });

  const bad = {
    'a wrong iss': { iss: 'https://evil.test', aud: 'live' },
    'a wrong aud': { iss: 'https://issuer.test', aud: 'other' },
    'no iss': { aud: 'live' },
    'no aud': { iss: 'https://issuer.test' },
  };
  for (const [what, claims] of Object.entries(bad)) {
    test(`refuses a token with ${what}`, async () => {
      const err = await connectError(gw, token({ userId: uid(), ...claims }));
      assert.equal(err.message, 'unauthorized');
    });
  }
});

describe('a gateway without any key', () => {
  test('exits non-zero with a message mentioning JWT_SECRET when neither a key nor --dev is given', async () => {
    const gw = await startGateway({ secret: null, waitReady: false });
    const info = await gw.waitExit(10_000);
    if (info === null) await gw.stop(1000);
    assert.notEqual(info, null, 'process should exit on its own');
    assert.notEqual(info.code, 0);
    assert.match(gw.stderr() + gw.stdout(), /JWT_SECRET/);
  });
});
