#!/usr/bin/env node
// Failure semantics, measured (issue 14): two gateway replicas behind a real Redis Sentinel
// (primary + replica + sentinel, started here on free loopback ports), a backend publishing
// numbered chats through replica A's bridge at --rate, one member on each replica; mid-traffic
// the primary is failed over (SENTINEL FAILOVER) and/or killed (SIGKILL). Prints, per run: chats
// sent, lost on the publishing replica (local delivery; must be 0), lost across replicas, the
// longest cross-replica silence in seconds, how long the sentinel took to promote the replica,
// and how long after the promotion cross-replica delivery resumed (target: within 5 s).
//
//   npm ci --prefix tests           # socket.io-client, once
//   node bench/redis-failover.mjs [--mode failover|kill|both] [--rate 20] [--runs 3]
//
// Environment: LIVE_GATEWAY_BIN (default target/release/live-gateway), REDIS_SERVER_BIN,
// REDIS_SENTINEL_BIN, REDIS_CLI_BIN.

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
process.env.LIVE_GATEWAY_BIN ??= path.join(root, 'target', 'release', 'live-gateway');

const { values } = parseArgs({
  options: {
    mode: { type: 'string', default: 'both' },
    rate: { type: 'string', default: '20' },
    runs: { type: 'string', default: '1' },
  },
});
const modes = values.mode === 'both' ? ['failover', 'kill'] : [values.mode];
const rate = Number(values.rate);
const runs = Number(values.runs);

const { startGateway, closeAllSockets } = await import('../tests/gateway/harness.mjs');
const { startSentinel, stopAll, redisUp } = await import('../tests/gateway/redis-harness.mjs');
const { runFailover } = await import('../tests/gateway/failover-scenario.mjs');

const results = [];
try {
  for (const mode of modes) {
    for (let run = 0; run < runs; run += 1) {
      const sentinel = await startSentinel();
      const start = (name) => startGateway({
        env: { REDIS_URL: sentinel.url, LIVE_REDIS_PREFIX: 'failover', POD_NAME: name },
      });
      const [a, b] = await Promise.all([start('a'), start('b')]);
      try {
        await redisUp(a);
        await redisUp(b);
        const trigger = mode === 'kill' ? () => sentinel.killPrimary() : () => sentinel.failover();
        const report = await runFailover({ sender: a, remote: b, trigger, rate });
        delete report.crossLostSeqs;
        results.push({ mode, run, ...report });
        process.stderr.write(`${mode} #${run}: ${JSON.stringify(report)}\n`);
      } finally {
        closeAllSockets();
        await Promise.all([a.stop(2000), b.stop(2000)]);
        await stopAll();
      }
    }
  }
} finally {
  await stopAll();
}
console.log(JSON.stringify(results, null, 2));
