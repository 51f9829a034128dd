// Benchmark-only Node peer: the seed's realtime layer (../shared/seed/realtime-layer-README.md)
// reduced to what `live-bench fanout` drives, on socket.io 4 with the socket.io Redis adapter,
// so the multi-replica scenario can be run against Node the same way as against live-gateway.
// Not a product: no bridge, gifts, moderation or metrics.
//
// What it keeps from the seed: path /ws, namespace /live, WebSocket and polling; the JWT
// (HS256) from `auth.token` or `Authorization: Bearer`, refused handshakes on a bad token; rooms
// `channel:<name>`; `join` → presence:update + system:event to the room, metrics:ping to the
// joiner, ack {ok: true}; `chat:send` (member check, per-user rate limit, 500-character limit,
// HTML tags stripped) → chat:new to the room, ack {ok: true}; `leave`; `heartbeat`.
//
// Environment: PORT (3000), ADMIN_PORT (9091, serves GET /readyz), JWT_SECRET, REDIS_URL
// (redis://127.0.0.1:6379), ADAPTER (`classic`: @socket.io/redis-adapter's createAdapter, every
// server receives every broadcast; `sharded`: createShardedAdapter with
// subscriptionMode "dynamic", a channel per room), MESSAGES_PER_MINUTE (100000, per user and
// process, as the seed's in-memory limiter).

import crypto from 'node:crypto';
import http from 'node:http';
import { Server } from 'socket.io';
import { createAdapter, createShardedAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';

const PORT = Number(process.env.PORT ?? 3000);
const ADMIN_PORT = Number(process.env.ADMIN_PORT ?? 9091);
const SECRET = process.env.JWT_SECRET ?? '';
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const ADAPTER = process.env.ADAPTER ?? 'classic';
const PER_MINUTE = Number(process.env.MESSAGES_PER_MINUTE ?? 100_000);
const CHANNEL = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

if (!SECRET) throw new Error('JWT_SECRET is required');

/** HS256 verification with node:crypto; returns the claims or null. */
function verify(token) {
  if (typeof token !== 'string') return null;
  const [head, body, sig] = token.split('.');
  if (!head || !body || !sig) return null;
  try {
    if (JSON.parse(Buffer.from(head, 'base64url')).alg !== 'HS256') return null;
    const want = crypto.createHmac('sha256', SECRET).update(`${head}.${body}`).digest();
    const got = Buffer.from(sig, 'base64url');
    if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) return null;
    const claims = JSON.parse(Buffer.from(body, 'base64url'));
    if (claims.exp !== undefined && claims.exp * 1000 < Date.now()) return null;
    return typeof claims.userId === 'string' ? claims : null;
  } catch {
    return null;
  }
}

const pub = createClient({ url: REDIS_URL });
const sub = pub.duplicate();
await Promise.all([pub.connect(), sub.connect()]);

const httpServer = http.createServer();
const io = new Server(httpServer, {
  path: '/ws',
  transports: ['websocket', 'polling'],
  cors: { origin: true, credentials: true },
  adapter: ADAPTER === 'sharded'
    ? createShardedAdapter(pub, sub, { subscriptionMode: 'dynamic' })
    : createAdapter(pub, sub),
});

const live = io.of('/live');
live.use((socket, next) => {
  const header = socket.handshake.headers.authorization;
  const token = socket.handshake.auth?.token ?? (header?.startsWith('Bearer ') ? header.slice(7) : undefined);
  const claims = verify(token);
  if (!claims) return next(new Error('unauthorized'));
  socket.data.user = claims;
  return next();
});

const windows = new Map(); // userId -> {start, count}: the seed's fixed one-minute window
function allowed(userId, now) {
  const w = windows.get(userId);
  if (!w || now - w.start >= 60_000) {
    windows.set(userId, { start: now, count: 1 });
    return true;
  }
  if (w.count >= PER_MINUTE) return false;
  w.count += 1;
  return true;
}

const refuse = (ack, code, message) => { if (typeof ack === 'function') ack({ ok: false, error: { code, message } }); };
const ok = (ack) => { if (typeof ack === 'function') ack({ ok: true }); };

live.on('connection', (socket) => {
  const { userId, username } = socket.data.user;
  socket.on('join', (payload, ack) => {
    const name = payload?.channelName;
    if (typeof name !== 'string' || !CHANNEL.test(name)) return refuse(ack, 'invalid_channel', 'Invalid channel name');
    const room = `channel:${name}`;
    socket.join(room);
    const timestamp = Date.now();
    live.to(room).emit('presence:update', { channelName: name, delta: 1, userId, timestamp });
    live.to(room).emit('system:event', { type: 'join', userId, username, role: payload.role ?? 'viewer', timestamp });
    socket.emit('metrics:ping', { channelName: name, timestamp });
    return ok(ack);
  });
  socket.on('leave', (payload, ack) => {
    const name = payload?.channelName;
    socket.leave(`channel:${name}`);
    ok(ack);
  });
  socket.on('chat:send', (payload, ack) => {
    const name = payload?.channelName;
    const room = `channel:${name}`;
    if (!socket.rooms.has(room)) return refuse(ack, 'not_member', 'Not a member of this channel');
    const message = typeof payload.message === 'string' ? payload.message.replace(/<[^>]*>/g, '') : '';
    if (!message || message.length > 500) return refuse(ack, 'invalid_message_length', 'Message must be 1-500 characters');
    const now = Date.now();
    if (!allowed(userId, now)) return refuse(ack, 'rate_limited', 'Rate limit exceeded for messages');
    live.to(room).emit('chat:new', { userId, username, message, timestamp: now });
    return ok(ack);
  });
  socket.on('heartbeat', (_payload, ack) => {
    socket.emit('heartbeat:ack', { timestamp: Date.now(), userId });
    ok(ack);
  });
});

httpServer.listen(PORT, '127.0.0.1');
http.createServer((req, res) => {
  res.writeHead(req.url === '/readyz' ? 200 : 404).end(req.url === '/readyz' ? 'ready' : '');
}).listen(ADMIN_PORT, '127.0.0.1');
console.error(`node peer: /live on :${PORT}, ${ADAPTER} redis adapter on ${REDIS_URL}`);

const stop = async () => {
  io.close();
  await Promise.allSettled([pub.quit(), sub.quit()]);
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
