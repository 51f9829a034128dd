// Socket.IO checks of the e2e suite, run with the official socket.io-client against gateway
// pods reached through `kubectl port-forward` (or, in the self-test, local gateway processes).
//
//   node e2e/chat-across-pods.mjs chat URL_A URL_B        a chat message crosses from A to B and back
//   node e2e/chat-across-pods.mjs accepts URL N           a fresh user may send N messages
//   node e2e/chat-across-pods.mjs rate-limit URL LIMIT [TIMEOUT_S]
//                                                         until TIMEOUT_S (default 180): a fresh user
//                                                         gets exactly LIMIT messages accepted, then
//                                                         rate_limited (polls: the kubelet refreshes
//                                                         the ConfigMap within about a minute)
//
// Tokens are HS256, signed with E2E_JWT_SECRET (the secret in the tier's JWT Secret).
// socket.io-client comes from tests/node_modules (npm ci --prefix tests).
// Exit code 0 on success, 1 on a failed check (with the reason), 2 on bad usage.

import crypto from 'node:crypto';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'tests', 'package.json'));
const { io } = require('socket.io-client');

const SECRET = process.env.E2E_JWT_SECRET;
const STEP_MS = 10_000;

function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exit(1);
}

/** An HS256 JWT for a fresh user: {userId, username, token}. */
export function user(secret = SECRET) {
  const userId = `e2e-${crypto.randomBytes(5).toString('hex')}`;
  const now = Math.floor(Date.now() / 1000);
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ userId, username: userId, iat: now, exp: now + 600 })}`;
  const sig = crypto.createHmac('sha256', secret).update(input).digest('base64url');
  return { userId, username: userId, token: `${input}.${sig}` };
}

/** Connects to URL/live over WebSocket; resolves with the socket or rejects with the reason. */
function connect(url, token) {
  const socket = io(`${url}/live`, {
    path: '/ws',
    transports: ['websocket'],
    auth: { token },
    reconnection: false,
    forceNew: true,
    timeout: STEP_MS,
  });
  socket.inbox = [];
  socket.onAny((name, payload) => socket.inbox.push({ name, payload }));
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => {
      socket.close();
      reject(new Error(`cannot connect to ${url}: ${err.message}`));
    });
  });
}

const ack = (socket, event, payload) => socket.timeout(STEP_MS).emitWithAck(event, payload);

/** Resolves with the first `name` event whose payload satisfies `pred`, or rejects after STEP_MS. */
async function waitFor(socket, name, pred, what) {
  const deadline = Date.now() + STEP_MS;
  while (Date.now() < deadline) {
    const hit = socket.inbox.find((e) => e.name === name && pred(e.payload));
    if (hit) return hit.payload;
    await sleep(50);
  }
  throw new Error(`no ${what} within ${STEP_MS} ms`);
}

async function join(socket, channelName) {
  const reply = await ack(socket, 'join', { channelName });
  if (!reply?.ok) throw new Error(`join ${channelName} refused: ${JSON.stringify(reply)}`);
}

/** One message each way between a user on A and a user on B, in one channel. */
async function chat(urlA, urlB) {
  const a = user();
  const b = user();
  const channelName = `e2e-${crypto.randomBytes(4).toString('hex')}`;
  const sa = await connect(urlA, a.token);
  const sb = await connect(urlB, b.token);
  try {
    await join(sa, channelName);
    await join(sb, channelName);
    for (const [from, to, fromUser, label] of [[sa, sb, a, 'A to B'], [sb, sa, b, 'B to A']]) {
      const message = `hello ${label} ${crypto.randomBytes(3).toString('hex')}`;
      const reply = await ack(from, 'chat:send', { channelName, message });
      if (!reply?.ok) throw new Error(`chat:send ${label} refused: ${JSON.stringify(reply)}`);
      const got = await waitFor(to, 'chat:new', (p) => p?.message === message,
        `chat:new for "${message}" (${label})`);
      if (got.userId !== fromUser.userId) throw new Error(`chat:new ${label} has userId ${got.userId}`);
      console.log(`ok    chat ${label}: "${message}" delivered`);
    }
  } finally {
    sa.close();
    sb.close();
  }
}

/** A fresh user sends `n` messages into a fresh channel; resolves with the acks. */
async function burst(url, n) {
  const u = user();
  const channelName = `e2e-${crypto.randomBytes(4).toString('hex')}`;
  const s = await connect(url, u.token);
  try {
    await join(s, channelName);
    const acks = [];
    for (let i = 0; i < n; i += 1) {
      acks.push(await ack(s, 'chat:send', { channelName, message: `m${i}` }));
    }
    return acks;
  } finally {
    s.close();
  }
}

const isRateLimited = (a) => a?.ok === false && a?.error?.code === 'rate_limited';

async function accepts(url, n) {
  const acks = await burst(url, n);
  const refused = acks.findIndex((a) => !a?.ok);
  if (refused >= 0) throw new Error(`message ${refused + 1} of ${n} refused: ${JSON.stringify(acks[refused])}`);
  console.log(`ok    a fresh user sent ${n} messages, all accepted`);
}

async function rateLimit(url, limit, timeoutS) {
  const deadline = Date.now() + timeoutS * 1000;
  let attempt = 0;
  for (;;) {
    attempt += 1;
    const acks = await burst(url, limit + 1);
    const accepted = acks.slice(0, limit).every((a) => a?.ok === true);
    if (accepted && isRateLimited(acks[limit])) {
      console.log(`ok    limit ${limit}/min enforced (attempt ${attempt}): message ${limit + 1} refused with rate_limited`);
      return;
    }
    const summary = acks.map((a) => (a?.ok ? 'ok' : a?.error?.code ?? JSON.stringify(a))).join(',');
    if (Date.now() > deadline) {
      throw new Error(`limit ${limit}/min not enforced within ${timeoutS} s; last acks: ${summary}`);
    }
    console.log(`..    attempt ${attempt}: acks ${summary}; the new config is not loaded yet, retrying`);
    await sleep(5000);
  }
}

async function main(argv) {
  const [mode, ...rest] = argv;
  const usage = () => {
    console.error('usage: chat-across-pods.mjs chat URL_A URL_B | accepts URL N | rate-limit URL LIMIT [TIMEOUT_S]');
    process.exit(2);
  };
  if (!SECRET) {
    console.error('E2E_JWT_SECRET is not set');
    process.exit(2);
  }
  if (mode === 'chat' && rest.length === 2) return chat(rest[0], rest[1]);
  if (mode === 'accepts' && rest.length === 2) return accepts(rest[0], Number(rest[1]));
  if (mode === 'rate-limit' && (rest.length === 2 || rest.length === 3)) {
    return rateLimit(rest[0], Number(rest[1]), Number(rest[2] ?? 180));
  }
  return usage();
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (err) => fail(err.message),
);
