// Key rotation: several verification keys chosen by `kid`, from JWT_KEYS_DIR (reloaded on change,
// including the Kubernetes `..data` symlink swap), from a JWKS file, and from a JWKS URL over
// HTTPS (a local server with its own CA; caching, refetch on unknown kid, failures). Connections
// whose key is retired are told and ended unless they refresh.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, connect, connectError, closeAllSockets, token, uid, emitAck, nextEvent,
  expectNoEvent, waitDisconnect, metricsText, metricValue, poll, freePort,
} from './harness.mjs';

afterEach(closeAllSockets);

const now = () => Math.floor(Date.now() / 1000);
const SECRET_1 = 'k1-secret-0123456789abcdef0123456789abcdef';
const hs = (kid, secret, claims = {}) => token({ userId: uid(), ...claims }, { kid, secret });
const ec = () => crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const rsa = () => crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const pem = (publicKey) => publicKey.export({ type: 'spki', format: 'pem' });
const jwk = (publicKey, kid, extra = {}) => ({ ...publicKey.export({ format: 'jwk' }), kid, ...extra });

/** Whether a connection with `tok` is accepted now. */
async function accepted(gw, tok) {
  try {
    (await connect(gw, tok)).close();
    return true;
  } catch {
    return false;
  }
}

/** Polls until `tok` is accepted (or refused, with `want` false); fails after 10 s. */
async function until(gw, tok, want = true) {
  const ok = await poll(async () => (await accepted(gw, tok)) === want, { timeoutMs: 10_000, intervalMs: 200 });
  assert.ok(ok, `token not ${want ? 'accepted' : 'refused'} within 10 s`);
}

/** Refused, and counted under `reason`. */
async function refused(gw, tok, reason) {
  const count = async () => metricValue(await metricsText(gw), 'ws_auth_failures_total', { reason });
  const before = await count();
  assert.equal((await connectError(gw, tok)).message, 'unauthorized');
  assert.equal(await count(), before + 1, `counted as ${reason}`);
}

/** Writes `files` ({name: content}) into `dir` the way the kubelet updates a mounted Secret: a
 * new timestamped directory, an atomic swap of the `..data` symlink, then the user-visible
 * symlinks (`name -> ..data/name`) added or removed. */
let generation = 0;
function secretUpdate(dir, files) {
  generation += 1;
  const ts = `..2026_01_01_00_00_${String(generation).padStart(2, '0')}.${process.pid}`;
  fs.mkdirSync(path.join(dir, ts));
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, ts, name), content);
  const data = path.join(dir, '..data');
  const old = fs.existsSync(data) ? fs.readlinkSync(data) : null;
  fs.symlinkSync(ts, path.join(dir, '..data_tmp'));
  fs.renameSync(path.join(dir, '..data_tmp'), data);
  for (const name of Object.keys(files)) {
    if (!fs.existsSync(path.join(dir, name))) fs.symlinkSync(path.join('..data', name), path.join(dir, name));
  }
  for (const name of fs.readdirSync(dir)) {
    if (!name.startsWith('.') && !(name in files)) fs.unlinkSync(path.join(dir, name));
  }
  if (old) fs.rmSync(path.join(dir, old), { recursive: true, force: true });
}

const tmp = (prefix) => fs.mkdtempSync(path.join(os.tmpdir(), prefix));

describe('JWT_KEYS_DIR', () => {
  let gw;
  let dir;
  let confDir;
  const LEAD = 2;
  const k2 = ec();
  before(async () => {
    dir = tmp('gw-keys-');
    confDir = tmp('gw-keys-conf-');
    fs.writeFileSync(path.join(confDir, 'gateway.yaml'), `auth: {expiringNoticeSeconds: ${LEAD}}\n`);
    secretUpdate(dir, { k1: `${SECRET_1}\n` });
    gw = await startGateway({ secret: null, config: path.join(confDir, 'gateway.yaml'), env: { JWT_KEYS_DIR: dir } });
  });
  after(async () => {
    await gw?.stop();
    for (const d of [dir, confDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  test('a token is verified by the key its kid names', async () => {
    assert.ok(await accepted(gw, hs('k1', SECRET_1)));
    await refused(gw, hs('k1', 'another-secret-0123456789abcdef01234'), 'bad_signature');
  });

  test('a token without kid is tried against the keys of its algorithm', async () => {
    assert.ok(await accepted(gw, hs(undefined, SECRET_1)));
    await refused(gw, token({ userId: uid() }, { alg: 'ES256', key: k2.privateKey }), 'wrong_algorithm');
  });

  test('a kid that matches no key is refused (unknown_kid)', async () => {
    await refused(gw, hs('k9', SECRET_1), 'unknown_kid');
  });

  test('rotation: a second key is added without restart, both verify; the first removed, its tokens are refused and its connections end unless refreshed', async () => {
    const t2 = () => token({ userId: uid() }, { alg: 'ES256', key: k2.privateKey, kid: 'k2' });
    const held = await connect(gw, hs('k1', SECRET_1));
    const refresher = await connect(gw, hs('k1', SECRET_1, { userId: 'refresher' }));

    secretUpdate(dir, { k1: `${SECRET_1}\n`, k2: pem(k2.publicKey) });
    await until(gw, t2());
    assert.ok(await accepted(gw, hs('k1', SECRET_1)), 'both keys verify during the overlap');
    assert.equal(metricValue(await metricsText(gw), 'live_jwt_keys', { source: 'dir' }), 2);
    await expectNoEvent(held, 'auth:expiring', 0);

    const retiredBefore = metricValue(await metricsText(gw), 'ws_disconnects_total', { reason: 'key_retired' });
    secretUpdate(dir, { k2: pem(k2.publicKey) });
    await until(gw, hs('k1', SECRET_1), false);
    await refused(gw, hs('k1', SECRET_1), 'unknown_kid');
    assert.ok(await accepted(gw, t2()));

    // Live connections verified by k1 are told at once, and have the notice lead to refresh.
    for (const s of [held, refresher]) {
      const notice = await nextEvent(s, 'auth:expiring', 3000);
      assert.equal(notice.reason, 'key_retired');
      assert.ok(notice.expiresAt <= Date.now() + (LEAD + 1) * 1000, `expiresAt ${notice.expiresAt}`);
    }
    const fresh = token({ userId: 'refresher' }, { alg: 'ES256', key: k2.privateKey, kid: 'k2' });
    assert.equal((await emitAck(refresher, 'auth:refresh', { token: fresh })).ok, true);
    const expired = await nextEvent(held, 'auth:expired', 5000);
    assert.equal(expired.code, 'key_retired');
    assert.equal((await waitDisconnect(held)).reason, 'io server disconnect');
    await expectNoEvent(refresher, 'auth:expired', 1500);
    assert.equal(refresher.connected, true);
    const retiredAfter = metricValue(await metricsText(gw), 'ws_disconnects_total', { reason: 'key_retired' });
    assert.equal(retiredAfter, retiredBefore + 1);
  });

  test('a bad key file keeps the last good keys and counts a failed reload', async () => {
    const failed = async () => metricValue(await metricsText(gw), 'live_jwt_key_reloads_total', { source: 'dir', result: 'failure' });
    const before = await failed();
    const current = fs.readFileSync(path.join(dir, 'k2'));
    secretUpdate(dir, { k2: current, weak: 'too-short\n' });
    assert.ok(await poll(async () => (await failed()) > before, { timeoutMs: 10_000 }), 'failure counted');
    assert.ok(await accepted(gw, token({ userId: uid() }, { alg: 'ES256', key: k2.privateKey, kid: 'k2' })));
    await refused(gw, hs('weak', 'too-short'), 'unknown_kid');
    secretUpdate(dir, { k2: current });
  });
});

describe('JWT_KEYS_DIR at startup', () => {
  const cases = {
    'an HS256 key file shorter than 32 bytes': [{ weak: 'short-secret\n' }, /"weak".*31 bytes|"weak".*at least 32/],
    'a private key PEM': [{ priv: ec().privateKey.export({ type: 'pkcs8', format: 'pem' }) }, /"priv".*private key/],
    'an empty directory': [{}, /no key files/],
  };
  for (const [what, [files, message]] of Object.entries(cases)) {
    test(`${what} stops the gateway with a message naming it`, async () => {
      const dir = tmp('gw-keys-bad-');
      for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
      const gw = await startGateway({ secret: null, env: { JWT_KEYS_DIR: dir }, waitReady: false });
      try {
        const info = await gw.waitExit(10_000);
        assert.notEqual(info, null, 'process should exit on its own');
        assert.notEqual(info.code, 0);
        assert.match(gw.stderr(), /JWT_KEYS_DIR/);
        assert.match(gw.stderr(), message);
      } finally {
        await gw.stop(1000);
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});

describe('JWT_JWKS_FILE', () => {
  let gw;
  let dir;
  let file;
  const r1 = rsa();
  const e2 = ec();
  const rs = (kid, key = r1.privateKey) => token({ userId: uid() }, { alg: 'RS256', key, kid });
  before(async () => {
    dir = tmp('gw-jwks-file-');
    file = path.join(dir, 'jwks.json');
    fs.writeFileSync(file, JSON.stringify({ keys: [jwk(r1.publicKey, 'r1', { use: 'sig', alg: 'RS256' })] }));
    gw = await startGateway({ secret: null, env: { JWT_JWKS_FILE: file } });
  });
  after(async () => {
    await gw?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('an RS256 token whose kid is in the document is accepted', async () => {
    assert.ok(await accepted(gw, rs('r1')));
    await refused(gw, rs('r2'), 'unknown_kid');
    await refused(gw, rs('r1', rsa().privateKey), 'bad_signature');
  });

  test('a rewritten document adds and removes keys without restart', async () => {
    const t2 = () => token({ userId: uid() }, { alg: 'ES256', key: e2.privateKey, kid: 'e2' });
    fs.writeFileSync(file, JSON.stringify({ keys: [jwk(r1.publicKey, 'r1'), jwk(e2.publicKey, 'e2')] }));
    await until(gw, t2());
    assert.ok(await accepted(gw, rs('r1')));
    fs.writeFileSync(file, JSON.stringify({ keys: [jwk(e2.publicKey, 'e2')] }));
    await until(gw, rs('r1'), false);
    assert.ok(await accepted(gw, t2()));
  });

  test('a weak oct key at startup stops the gateway', async () => {
    const bad = path.join(dir, 'weak.json');
    fs.writeFileSync(bad, JSON.stringify({ keys: [{ kty: 'oct', k: Buffer.from('sixteen-bytes-xx').toString('base64url'), kid: 'o1' }] }));
    const g = await startGateway({ secret: null, env: { JWT_JWKS_FILE: bad }, waitReady: false });
    try {
      const info = await g.waitExit(10_000);
      assert.notEqual(info, null);
      assert.notEqual(info.code, 0);
      assert.match(g.stderr(), /JWT_JWKS_FILE.*"o1".*16 bytes/);
    } finally {
      await g.stop(1000);
    }
  });
});

// ---------------------------------------------------------------------------
// JWKS over HTTPS, from a local server with its own CA (openssl makes the certificates).

const haveOpenssl = spawnSync('openssl', ['version']).status === 0;

/** A CA and a server certificate for 127.0.0.1 signed by it, in `dir`. */
function makeCerts(dir) {
  const run = (...args) => {
    const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key',
    '-out', 'ca.pem', '-days', '2', '-subj', '/CN=live-e2e-ca',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'server.key',
    '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  fs.writeFileSync(path.join(dir, 'ext.cnf'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf');
  return {
    ca: path.join(dir, 'ca.pem'),
    key: fs.readFileSync(path.join(dir, 'server.key')),
    cert: fs.readFileSync(path.join(dir, 'server.pem')),
  };
}

describe('JWT_JWKS_URL over HTTPS', { skip: haveOpenssl ? false : 'openssl not found (scripts/test.sh installs it)' }, () => {
  let gw;
  let server;
  let dir;
  let certs;
  let url;
  const requests = [];
  const idp = { doc: null, status: 200, cacheControl: 'max-age=3600', etag: null };
  const a = ec();
  const b = ec();
  const signed = (pair, kid) => token({ userId: uid() }, { alg: 'ES256', key: pair.privateKey, kid });

  before(async () => {
    dir = tmp('gw-jwks-url-');
    certs = makeCerts(dir);
    idp.doc = { keys: [jwk(a.publicKey, 'a')] };
    server = https.createServer({ key: certs.key, cert: certs.cert }, (req, res) => {
      requests.push({ at: Date.now(), ifNoneMatch: req.headers['if-none-match'] });
      if (idp.status !== 200) { res.writeHead(idp.status); res.end('down'); return; }
      if (idp.etag && req.headers['if-none-match'] === idp.etag) {
        res.writeHead(304, { 'Cache-Control': idp.cacheControl, ETag: idp.etag });
        res.end();
        return;
      }
      const headers = { 'Content-Type': 'application/json', 'Cache-Control': idp.cacheControl };
      if (idp.etag) headers.ETag = idp.etag;
      res.writeHead(200, headers);
      res.end(JSON.stringify(idp.doc));
    });
    const port = await freePort();
    await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
    url = `https://127.0.0.1:${port}/.well-known/jwks.json`;
    gw = await startGateway({
      secret: null,
      env: {
        JWT_JWKS_URL: url,
        JWT_JWKS_CA_FILE: certs.ca,
        JWT_JWKS_MIN_REFRESH_SECONDS: '1',
        JWT_JWKS_MAX_REFRESH_SECONDS: '3600',
      },
    });
  });
  after(async () => {
    await gw?.stop();
    await new Promise((resolve) => (server ? server.close(resolve) : resolve()));
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('the document is fetched at startup through the private CA', async () => {
    assert.ok(requests.length >= 1);
    assert.ok(await accepted(gw, signed(a, 'a')));
    assert.equal(metricValue(await metricsText(gw), 'live_jwt_keys', { source: 'jwks' }), 1);
  });

  test('a token with a newly published kid makes the gateway refetch at once, and connects', async () => {
    await new Promise((r) => setTimeout(r, 1100)); // past the minimum refresh interval
    idp.doc = { keys: [jwk(a.publicKey, 'a'), jwk(b.publicKey, 'b')] };
    const before = requests.length;
    const s = await connect(gw, signed(b, 'b'));
    assert.equal(s.connected, true);
    assert.equal(requests.length, before + 1, 'exactly one refetch');
  });

  test('a flood of unknown kids costs at most one fetch per minimum refresh interval', async () => {
    await new Promise((r) => setTimeout(r, 1100));
    const before = requests.length;
    const started = Date.now();
    const errors = await Promise.all(Array.from({ length: 20 }, (_, i) => connectError(gw, signed(a, `made-up-${i}`))));
    for (const e of errors) assert.equal(e.message, 'unauthorized');
    const seconds = (Date.now() - started) / 1000;
    const fetches = requests.length - before;
    assert.ok(fetches >= 1 && fetches <= Math.ceil(seconds) + 1, `${fetches} fetches in ${seconds} s`);
  });

  test('Cache-Control max-age schedules the next fetch, with If-None-Match and a 304', async () => {
    idp.etag = '"v2"';
    idp.cacheControl = 'max-age=1';
    await new Promise((r) => setTimeout(r, 1100));
    await connectError(gw, signed(a, 'unknown-to-pick-up-the-new-schedule'));
    const before = requests.length;
    assert.ok(await poll(() => requests.length >= before + 2, { timeoutMs: 6000 }), 'refetched on its own');
    assert.ok(requests.slice(before).some((r) => r.ifNoneMatch === '"v2"'), 'revalidated with the ETag');
    assert.ok(await accepted(gw, signed(b, 'b')), 'a 304 keeps the keys');
    idp.cacheControl = 'max-age=3600';
    idp.etag = null;
  });

  test('a failing URL keeps the last good keys and counts the failure', async () => {
    const failed = async () => metricValue(await metricsText(gw), 'live_jwt_key_reloads_total', { source: 'jwks_url', result: 'failure' });
    const before = await failed();
    idp.status = 503;
    try {
      await new Promise((r) => setTimeout(r, 1100));
      await connectError(gw, signed(a, 'unknown-during-outage'));
      assert.ok(await poll(async () => (await failed()) > before, { timeoutMs: 6000 }));
      assert.ok(await accepted(gw, signed(a, 'a')));
      assert.ok(await accepted(gw, signed(b, 'b')));
    } finally {
      idp.status = 200;
    }
  });

  test('without the CA file the server is not trusted and no key is loaded', async () => {
    const g = await startGateway({ secret: null, env: { JWT_JWKS_URL: url } });
    try {
      await refused(g, signed(a, 'a'), 'unknown_kid');
      assert.ok(metricValue(await metricsText(g), 'live_jwt_key_reloads_total', { source: 'jwks_url', result: 'failure' }) >= 1);
      assert.match(g.stderr(), /JWT_JWKS_URL fetch failed/);
    } finally {
      closeAllSockets();
      await g.stop();
    }
  });
});
