// Harness for the live-gateway end-to-end tests: starts a real gateway process
// on loopback ports, mints JWTs with node:crypto, and wraps socket.io-client so
// every wait has a timeout and every socket a test opens is closed afterwards.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { io } from 'socket.io-client';
import WebSocket from 'ws';

export { sleep };

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
export const gatewayBin =
  process.env.LIVE_GATEWAY_BIN ?? path.join(repoRoot, 'target', 'debug', 'live-gateway');

/** The HS256 secret every gateway in this suite is started with unless a test says otherwise
 * (at least 32 bytes: the gateway refuses shorter HS256 secrets outside --dev). */
export const SECRET = 'e2e-secret-4f1c2b7a9d0e-6b8e0f3a5c7d9e1f';

/** The audience a service token (role `service`) needs to call the bridge (JWT_SERVICE_AUDIENCE). */
export const SERVICE_AUDIENCE = 'live-bridge';

const READY_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 8_000;

// ---------------------------------------------------------------------------
// Process

/** A free loopback TCP port: bind to :0, read the port, close. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Only what a gateway needs from our environment, so a JWT_SECRET or CORS_ALLOW in the
 * developer's shell cannot leak into a test that expects it absent. */
function baseEnv() {
  const env = {};
  for (const k of ['PATH', 'HOME', 'RUST_BACKTRACE', 'RUST_LOG', 'TMPDIR']) {
    if (process.env[k] !== undefined) env[k] = process.env[k];
  }
  return env;
}

/**
 * A running gateway process.
 * Fields: url, adminUrl, port, adminPort, child, stdout(), stderr(), exited (promise of {code, signal}).
 */
export class Gateway {
  constructor({ child, port, adminPort }) {
    this.child = child;
    this.port = port;
    this.adminPort = adminPort;
    this.url = `http://127.0.0.1:${port}`;
    this.adminUrl = `http://127.0.0.1:${adminPort}`;
    this._stdout = '';
    this._stderr = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d) => { this._stdout += d; });
    child.stderr.on('data', (d) => { this._stderr += d; });
    this.exitInfo = null;
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
      child.on('error', (err) => {
        this.exitInfo = { code: null, signal: null, error: err };
        resolve(this.exitInfo);
      });
    });
  }

  stdout() { return this._stdout; }
  stderr() { return this._stderr; }
  get running() { return this.exitInfo === null; }

  signal(sig) { if (this.running) this.child.kill(sig); }

  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. Resolves with {code, signal}. */
  async stop(graceMs = STOP_GRACE_MS) {
    if (!this.running) return this.exitInfo;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => { if (this.running) this.child.kill('SIGKILL'); }, graceMs);
    const info = await this.exited;
    clearTimeout(timer);
    return info;
  }

  /** Waits for the process to exit, at most `ms`; resolves null on timeout. */
  async waitExit(ms) {
    let timer;
    const t = new Promise((r) => { timer = setTimeout(() => r(null), ms); });
    const info = await Promise.race([this.exited, t]);
    clearTimeout(timer);
    return info;
  }
}

const FLAG_NAMES = {
  listen: '--listen',
  adminListen: '--admin-listen',
  drainSeconds: '--drain-seconds',
  shutdownTimeoutSeconds: '--shutdown-timeout-seconds',
  config: '--config',
};
const ENV_NAMES = {
  listen: 'LIVE_LISTEN',
  adminListen: 'LIVE_ADMIN_LISTEN',
  drainSeconds: 'LIVE_DRAIN_SECONDS',
  shutdownTimeoutSeconds: 'LIVE_SHUTDOWN_TIMEOUT_SECONDS',
  config: 'LIVE_CONFIG',
};

/**
 * Spawns the gateway and waits until /readyz answers 200.
 * opts.env: extra environment (JWT_SECRET defaults to SECRET unless `secret: null` or `dev: true`).
 * opts.config: path for --config. opts.dev: pass --dev. opts.args: more CLI args.
 * opts.drainSeconds / opts.shutdownTimeoutSeconds default to 1 / 4 so teardown is quick.
 * opts.waitReady: false to return right after spawning (for startup-failure tests).
 * opts.viaEnv: pass listen addresses, drain, timeout and config as LIVE_* variables instead of flags.
 */
export async function startGateway(opts = {}) {
  const {
    env = {},
    config,
    dev = false,
    args = [],
    secret = dev ? null : SECRET,
    drainSeconds = 1,
    shutdownTimeoutSeconds = 4,
    waitReady = true,
    viaEnv = false,
  } = opts;
  const port = await freePort();
  let adminPort = await freePort();
  while (adminPort === port) adminPort = await freePort();
  const settings = {
    listen: `127.0.0.1:${port}`,
    adminListen: `127.0.0.1:${adminPort}`,
    drainSeconds: drainSeconds === null ? undefined : String(drainSeconds),
    shutdownTimeoutSeconds: shutdownTimeoutSeconds === null ? undefined : String(shutdownTimeoutSeconds),
    config,
  };
  const argv = [];
  const settingsEnv = {};
  for (const [key, value] of Object.entries(settings)) {
    if (value === undefined) continue;
    if (viaEnv) settingsEnv[ENV_NAMES[key]] = value;
    else argv.push(FLAG_NAMES[key], value);
  }
  if (dev) argv.push('--dev');
  argv.push(...args);
  const fullEnv = { ...baseEnv(), ...(secret ? { JWT_SECRET: secret } : {}), ...settingsEnv, ...env };
  const child = spawn(gatewayBin, argv, { env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  const gw = new Gateway({ child, port, adminPort });
  if (!waitReady) return gw;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (!gw.running) {
      throw new Error(`gateway exited before ready (${JSON.stringify(gw.exitInfo)}); stderr:\n${gw.stderr()}`);
    }
    try {
      const res = await fetch(`${gw.adminUrl}/readyz`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return gw;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      await gw.stop(1000);
      throw new Error(`gateway not ready within ${READY_TIMEOUT_MS} ms; stderr:\n${gw.stderr()}`);
    }
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------
// JWTs

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/**
 * Signs a JWT. Claims default to {iat: now, exp: now + 1h}, plus `aud: SERVICE_AUDIENCE` for
 * role `service` (a valid service token, as the bridge requires); pass `exp: undefined` /
 * `aud: undefined` to omit one.
 * opts.alg: 'HS256' (default, key = opts.secret ?? SECRET), 'RS256'/'ES256' (opts.key: a private
 * KeyObject), or 'none' (no signature). opts.kid sets the JOSE `kid`; opts.header merges into
 * the JOSE header.
 */
export function token(claims = {}, opts = {}) {
  const { alg = 'HS256', secret = SECRET, key, kid, header = {} } = opts;
  const now = Math.floor(Date.now() / 1000);
  const service = claims.role === 'service' ? { aud: SERVICE_AUDIENCE } : {};
  const body = { iat: now, exp: now + 3600, ...service, ...claims };
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  const head = { alg, typ: 'JWT', ...(kid === undefined ? {} : { kid }), ...header };
  const input = `${b64url(JSON.stringify(head))}.${b64url(JSON.stringify(body))}`;
  let sig;
  if (alg === 'HS256') sig = crypto.createHmac('sha256', secret).update(input).digest();
  else if (alg === 'RS256') sig = crypto.sign('sha256', Buffer.from(input), key);
  else if (alg === 'ES256') sig = crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  else if (alg === 'none') sig = Buffer.alloc(0);
  else throw new Error(`unsupported alg ${alg}`);
  return `${input}.${b64url(sig)}`;
}

/** Decodes a JWT's claims without verifying it. */
export function decodeClaims(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));
}

let counter = 0;
/** A distinctive id, unique within this run: `prefix-<n>-<random>`. */
export function uid(prefix = 'u') {
  counter += 1;
  return `${prefix}-${counter}-${crypto.randomBytes(4).toString('hex')}`;
}
/** A distinctive valid channel name. */
export const chan = (prefix = 'ch') => uid(prefix);

/** A user: {userId, username, token}. `claims` override/extend the defaults. */
export function user(claims = {}, opts = {}) {
  const userId = claims.userId ?? uid('user');
  const username = 'username' in claims ? claims.username : `name-${userId}`;
  const tok = token({ userId, username, ...claims }, opts);
  return { userId, username, token: tok };
}

// ---------------------------------------------------------------------------
// Sockets

const openSockets = new Set();

/** Every incoming event is buffered per socket so a test can never miss one that
 * arrived before it started waiting. nextEvent consumes the oldest unconsumed one. */
function attachRecorder(socket) {
  socket._events_log = [];
  socket._waiters = [];
  socket._disconnectInfo = null;
  socket.on('disconnect', (reason) => { socket._disconnectInfo = { reason, at: Date.now() }; });
  socket.onAny((name, ...args) => {
    const entry = { name, args, at: Date.now() };
    const i = socket._waiters.findIndex((w) => w.name === name);
    if (i >= 0) {
      const [w] = socket._waiters.splice(i, 1);
      w.resolve(entry.args[0]);
    } else {
      socket._events_log.push(entry);
    }
  });
}

function makeSocket(gw, tok, opts = {}) {
  const {
    transports = ['websocket'],
    extraHeaders,
    auth,
    origin,
    namespace = '/live',
    ...rest
  } = opts;
  const headers = { ...(extraHeaders ?? {}) };
  if (origin) headers.Origin = origin;
  const socket = io(gw.url + namespace, {
    path: '/ws',
    transports,
    auth: auth ?? (tok === undefined || tok === null ? {} : { token: tok }),
    extraHeaders: Object.keys(headers).length ? headers : undefined,
    reconnection: false,
    forceNew: true,
    timeout: 5000,
    autoConnect: false,
    ...rest,
  });
  attachRecorder(socket);
  openSockets.add(socket);
  return socket;
}

/** Connects and resolves with the connected socket; rejects with the connect_error. */
export function connect(gw, tok, opts = {}) {
  const socket = makeSocket(gw, tok, opts);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error('connect timed out after 5000 ms'));
    }, 5000);
    socket.once('connect', () => { clearTimeout(timer); resolve(socket); });
    socket.once('connect_error', (err) => { clearTimeout(timer); socket.close(); reject(err); });
    socket.connect();
  });
}

/** Attempts a connection that must fail; resolves with the connect_error, rejects if it connects. */
export async function connectError(gw, tok, opts = {}) {
  let socket;
  try {
    socket = await connect(gw, tok, opts);
  } catch (err) {
    return err;
  }
  socket.close();
  throw new assert.AssertionError({ message: 'expected connect_error, but the socket connected' });
}

/** Closes every socket opened through this harness (use in afterEach/after). */
export function closeAllSockets() {
  for (const s of openSockets) s.close();
  openSockets.clear();
}

/** Resolves with the first argument of the next (unconsumed) `name` event; rejects after timeoutMs. */
export function nextEvent(socket, name, timeoutMs = 2000) {
  const i = socket._events_log.findIndex((e) => e.name === name);
  if (i >= 0) {
    const [e] = socket._events_log.splice(i, 1);
    return Promise.resolve(e.args[0]);
  }
  return new Promise((resolve, reject) => {
    const w = {
      name,
      resolve: (v) => { clearTimeout(timer); resolve(v); },
    };
    const timer = setTimeout(() => {
      const k = socket._waiters.indexOf(w);
      if (k >= 0) socket._waiters.splice(k, 1);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for "${name}"`));
    }, timeoutMs);
    socket._waiters.push(w);
  });
}

/** Fails if a `name` event is already buffered or arrives within `ms`. */
export async function expectNoEvent(socket, name, ms = 300) {
  await sleep(ms);
  const got = socket._events_log.filter((e) => e.name === name);
  if (got.length) {
    throw new assert.AssertionError({
      message: `expected no "${name}" event, got ${JSON.stringify(got.map((e) => e.args[0]))}`,
    });
  }
}

/** Drops all buffered events of a socket. */
export function clearEvents(...sockets) {
  for (const s of sockets) s._events_log.length = 0;
}

/** Names of the buffered (unconsumed) events. */
export const bufferedEvents = (socket) => socket._events_log.map((e) => e.name);

/** Emits with an ack and resolves with the ack payload (rejects after timeoutMs).
 * Pass `payload` as the NO_PAYLOAD symbol to emit the event with no argument at all. */
export const NO_PAYLOAD = Symbol('no payload');
export function emitAck(socket, event, payload, timeoutMs = 2000) {
  const s = socket.timeout(timeoutMs);
  const sent = payload === NO_PAYLOAD ? s.emitWithAck(event) : s.emitWithAck(event, payload);
  return sent.catch((err) => {
    throw new Error(`no ack for "${event}" within ${timeoutMs} ms (${err.message}; connected: ${socket.connected})`);
  });
}

/** Resolves when the socket is disconnected, with {reason, at}. */
export function waitDisconnect(socket, timeoutMs = 3000) {
  if (socket._disconnectInfo) return Promise.resolve(socket._disconnectInfo);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no disconnect within ${timeoutMs} ms`)), timeoutMs);
    socket.once('disconnect', (reason) => { clearTimeout(timer); resolve({ reason, at: Date.now() }); });
  });
}

export const OK = Object.freeze({ ok: true });

/** The refusal ack shape. */
export const refusal = (code, message) => ({ ok: false, error: { code, message } });

/** Joins and waits for the joiner's own join events, then drops them from the buffer.
 * `others` are existing members: waits until each saw this join, then clears them too. */
export async function join(socket, channelName, { role, others = [] } = {}) {
  const payload = role === undefined ? { channelName } : { channelName, role };
  const ack = await emitAck(socket, 'join', payload);
  assert.deepEqual(ack, OK, `join ${channelName} refused`);
  await nextEvent(socket, 'system:event');
  await nextEvent(socket, 'presence:update');
  await nextEvent(socket, 'metrics:ping');
  for (const o of others) {
    await nextEvent(o, 'system:event');
    await nextEvent(o, 'presence:update');
  }
  clearEvents(socket, ...others);
}

/** Asserts an event payload: `timestamp` is an integer in ms within [since - 1 s, now + 1 s],
 * a history position (`offset`, `epoch`), when present, is well formed, and everything else
 * deep-equals `expected`. */
export function assertEvent(payload, expected, since) {
  assert.ok(payload && typeof payload === 'object', `expected an object payload, got ${JSON.stringify(payload)}`);
  const { timestamp, offset, epoch, ...rest } = payload;
  assert.deepEqual(rest, expected);
  assertTimestamp(timestamp, since);
  if (offset !== undefined || epoch !== undefined) assertPosition({ offset, epoch });
}

/** Checks a history item's position and returns the payload without it. */
export function withoutPosition(payload) {
  const { offset, epoch, ...rest } = payload;
  assertPosition({ offset, epoch });
  return rest;
}

/** A history position: a positive integer offset and a non-empty epoch string. */
export function assertPosition({ offset, epoch }) {
  assert.ok(Number.isInteger(offset) && offset > 0, `offset must be a positive integer, got ${offset}`);
  assert.ok(typeof epoch === 'string' && epoch.length > 0, `epoch must be a string, got ${epoch}`);
}

export function assertTimestamp(ts, since) {
  assert.ok(Number.isInteger(ts), `timestamp must be integer ms, got ${JSON.stringify(ts)}`);
  assert.ok(ts >= since - 1000 && ts <= Date.now() + 1000, `timestamp ${ts} not near now (since ${since})`);
}

// ---------------------------------------------------------------------------
// HTTP (admin listener: metrics, health, bridge)

/** fetch with a 5 s timeout; resolves {status, headers, text, json}. */
export async function http(url, { method = 'GET', headers = {}, body } = {}) {
  const res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

/** Calls the bridge: body objects are JSON-encoded, strings sent as-is. */
export function bridge(gw, method, route, body, tok) {
  const headers = {};
  if (tok) headers.Authorization = `Bearer ${tok}`;
  let data;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    data = typeof body === 'string' ? body : JSON.stringify(body);
  }
  return http(gw.adminUrl + route, { method, headers, body: data });
}

export async function metricsText(gw) {
  const r = await http(`${gw.adminUrl}/metrics`);
  assert.equal(r.status, 200, 'GET /metrics');
  return r.text;
}

/** Parses Prometheus text into [{name, labels, value}]. */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const lm of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]] = lm[2];
    }
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

/** Sum of the samples named `name` whose labels include `labels` (0 when none). */
export function metricValue(text, name, labels = {}) {
  return parseMetrics(text)
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

/** Polls `fn` until it returns truthy (or until timeoutMs, then returns the last value). */
export async function poll(fn, { timeoutMs = 5000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) return last;
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------
// Raw Engine.IO frames over WebSocket, for what the official client never sends.

/**
 * Opens a raw Engine.IO v4 WebSocket session and waits for its open packet. Answers pings.
 * Returns {ws, send(text), sendBinary(buf), nextFrame(pred, ms), frames, closed, isClosed()}.
 * `closed` resolves with {code, at} when the server (or anyone) closes the connection.
 */
export async function rawSession(gw, { headers = {}, answerPings = true } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/ws/?EIO=4&transport=websocket`, { headers });
  const frames = [];
  const waiters = [];
  let isClosed = false;
  const closed = new Promise((resolve) => {
    ws.on('close', (code) => { isClosed = true; resolve({ code, at: Date.now() }); });
  });
  ws.on('message', (data, isBinary) => {
    const frame = isBinary ? data : data.toString();
    if (answerPings && frame === '2') { ws.send('3'); return; }
    const i = waiters.findIndex((w) => w.pred(frame));
    if (i >= 0) waiters.splice(i, 1)[0].resolve(frame);
    else frames.push(frame);
  });
  ws.on('error', () => {});
  const nextFrame = (pred, ms = 2000) => {
    const i = frames.findIndex((f) => pred(f));
    if (i >= 0) return Promise.resolve(frames.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve: (f) => { clearTimeout(timer); resolve(f); } };
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`no matching frame within ${ms} ms; buffered: ${JSON.stringify(frames.slice(0, 5))}`));
      }, ms);
      waiters.push(w);
    });
  };
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
  const session = {
    ws,
    frames,
    closed,
    isClosed: () => isClosed,
    send: (text) => { if (ws.readyState === WebSocket.OPEN) ws.send(text); },
    sendBinary: (buf) => { if (ws.readyState === WebSocket.OPEN) ws.send(buf, { binary: true }); },
    nextFrame,
    close: () => ws.terminate(),
  };
  openRaw.add(session);
  await nextFrame((f) => typeof f === 'string' && f.startsWith('0'));
  return session;
}

const openRaw = new Set();
/** Closes every raw session opened through this harness. */
export function closeAllRaw() {
  for (const r of openRaw) r.close();
  openRaw.clear();
}

/** Sends a namespace CONNECT with `token` and resolves with the answer frame (`40…` or `44…`). */
export async function rawConnect(session, tok, namespace = '/live') {
  session.send(`40${namespace},${JSON.stringify({ token: tok })}`);
  return session.nextFrame((f) => typeof f === 'string'
    && (f.startsWith(`40${namespace},`) || f.startsWith(`44${namespace},`)));
}

/** Resolves true if the session closes within `ms`, false otherwise. */
export async function closesWithin(session, ms) {
  let timer;
  const t = new Promise((r) => { timer = setTimeout(() => r(false), ms); });
  const r = await Promise.race([session.closed.then(() => true), t]);
  clearTimeout(timer);
  return r;
}
