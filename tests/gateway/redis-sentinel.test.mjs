// Two gateway replicas behind a real Redis Sentinel (a primary, a replica, one redis-sentinel),
// with REDIS_URL=redis-sentinel://...?sentinelServiceName=...: cross-replica traffic and shared
// state through the primary the sentinel names, and failover mid-traffic (SENTINEL FAILOVER, then
// killing the primary): local delivery never stops and cross-replica delivery resumes unaided,
// without restarting a gateway. The figures (gap, loss) are printed; timing is measured by
// bench/redis-failover.mjs, not asserted here.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  startGateway, user, chan, connect, join, emitAck, nextEvent, closeAllSockets, http, OK, refusal,
  token, uid,
} from './harness.mjs';
import {
  missing, startSentinel, tempDir, stopAll, eventually, redisUp, redisBin, sentinelBin, cliBin,
} from './redis-harness.mjs';
import { runFailover } from './failover-scenario.mjs';

const skip = missing(redisBin, sentinelBin, cliBin);
const prefix = uid('se').replace(/-/g, '_');
const PASSWORD = 'sentinel-test-password';

let sentinel;
let gw1;
let gw2;

before(async () => {
  if (skip) return;
  const dir = tempDir('sentinel-gw');
  fs.writeFileSync(path.join(dir, 'gateway.yaml'), 'rateLimits: {messagesPerMinute: 4, giftsPerMinute: 30}\n');
  sentinel = await startSentinel({ password: PASSWORD });
  // The password comes from REDIS_PASSWORD, not the URL: the sentinel itself has none.
  const start = (name) => startGateway({
    config: path.join(dir, 'gateway.yaml'),
    env: { REDIS_URL: sentinel.url, REDIS_PASSWORD: PASSWORD, LIVE_REDIS_PREFIX: prefix, POD_NAME: name },
  });
  [gw1, gw2] = await Promise.all([start('s1'), start('s2')]);
  await redisUp(gw1);
  await redisUp(gw2);
});

after(async () => {
  if (process.env.DUMP_GW_LOGS) { console.log(gw1?.stderr()); console.log(gw2?.stderr()); }
  closeAllSockets();
  await Promise.all([gw1?.stop(), gw2?.stop()]);
  await stopAll();
});

afterEach(() => closeAllSockets());

test('replicas share traffic and rate limits through the primary the sentinel names', { skip }, async () => {
  const c = chan();
  const dave = user();
  const a = await connect(gw1, dave.token);
  const b = await connect(gw2, dave.token);
  await join(b, c);
  await join(a, c, { others: [b] });
  assert.deepEqual(await emitAck(a, 'chat:send', { channelName: c, message: 'via sentinel' }), OK);
  assert.equal((await nextEvent(b, 'chat:new', 5000)).message, 'via sentinel');
  const acks = [];
  for (let i = 1; i < 6; i += 1) acks.push(await emitAck(i % 2 ? b : a, 'chat:send', { channelName: c, message: `m${i}` }));
  assert.equal(acks.filter((x) => x.ok).length, 3, JSON.stringify(acks));
  assert.deepEqual(acks[4], refusal('rate_limited', 'Rate limit exceeded for messages'));
});

for (const [how, trigger] of [
  ['SENTINEL FAILOVER', () => sentinel.failover()],
  ['the primary killed', () => sentinel.killPrimary()],
]) {
  test(`with ${how} mid-traffic, local delivery never stops and cross-replica delivery resumes unaided`, { skip, timeout: 90_000 }, async () => {
    const report = await runFailover({ sender: gw1, remote: gw2, trigger, rate: 20 });
    console.log(`# failover (${how}): ${JSON.stringify({ ...report, crossLostSeqs: undefined })}`);
    assert.equal(report.localLost, 0, 'every chat reached the member on the publishing replica');
    assert.ok(report.crossResumed, 'cross-replica delivery resumed after the new primary took over');
    assert.ok(report.crossReceived > 0, JSON.stringify(report));
    assert.ok(gw1.running && gw2.running, 'no gateway restarted');
    await redisUp(gw1);
    await redisUp(gw2);
    // Shared state works again on the new primary.
    const c = chan();
    const s1 = await connect(gw1, user().token);
    await emitAck(s1, 'join', { channelName: c });
    await eventually(async () => (await http(`${gw2.adminUrl}/v1/channels/${c}/viewers`, {
      headers: { authorization: `Bearer ${token({ userId: 'backend', role: 'service' })}` },
    })).json.viewers === 1, 10_000, 'counts on the new primary');
  });
}
