// The Redis failover scenario shared by the Sentinel test (which asserts that delivery resumes)
// and bench/redis-failover.mjs (which reports the figures): a backend publishes numbered chats
// through replica A's bridge at a steady rate; one member on replica A (local delivery) and one
// on replica B (cross-replica delivery) record what they get; mid-traffic the primary is failed
// over or killed.

import { user, chan, connect, join, http, token, sleep } from './harness.mjs';

const bridgeToken = token({ userId: 'failover-bench', role: 'service' });

/** The longest silence between consecutive receptions in `times` (ms), with where it started. */
function longestGap(received) {
  let gap = { ms: 0, afterSeq: null, beforeSeq: null, from: null, to: null };
  for (let i = 1; i < received.length; i += 1) {
    const ms = received[i].at - received[i - 1].at;
    if (ms > gap.ms) {
      gap = { ms, afterSeq: received[i - 1].seq, beforeSeq: received[i].seq, from: received[i - 1].at, to: received[i].at };
    }
  }
  return gap;
}

/**
 * Runs the scenario.
 * opts.sender / opts.remote: the two gateways (publishing replica, other replica).
 * opts.trigger: async () => {promotedAt} — fails over or kills the primary, resolving once the
 *   new primary is promoted (its timestamp in ms).
 * opts.rate: chats per second (default 20). opts.beforeMs: traffic before the trigger (2000).
 * opts.resumeTimeoutMs: how long to wait for cross-replica delivery to resume (30000).
 * Resolves a report: counts, loss, the gap in seconds, and the resumption after promotion.
 */
export async function runFailover({ sender, remote, trigger, rate = 20, beforeMs = 2000, resumeTimeoutMs = 30_000 }) {
  const c = chan('failover');
  const local = await connect(sender, user().token);
  const far = await connect(remote, user().token);
  await join(local, c);
  await join(far, c, { others: [local] });
  const got = { local: [], far: [] };
  const record = (list) => (m) => {
    const seq = Number(m.message.slice(1));
    list.push({ seq, at: Date.now() });
  };
  local.on('chat:new', record(got.local));
  far.on('chat:new', record(got.far));

  const sent = [];
  let stop = false;
  const publisher = (async () => {
    let seq = 0;
    const every = 1000 / rate;
    let next = Date.now();
    while (!stop) {
      const body = JSON.stringify({ userId: 'failover-bench', message: `f${seq}` });
      const at = Date.now();
      try {
        const r = await http(`${sender.adminUrl}/v1/channels/${c}/chat`, {
          method: 'POST',
          headers: { authorization: `Bearer ${bridgeToken}`, 'content-type': 'application/json' },
          body,
        });
        if (r.status === 202) sent.push({ seq, at });
      } catch { /* the bridge itself never depends on Redis; a timeout here would be a finding */ }
      seq += 1;
      next += every;
      await sleep(Math.max(0, next - Date.now()));
    }
  })();

  await sleep(beforeMs);
  const triggeredAt = Date.now();
  const { promotedAt } = await trigger();
  // Wait until the far member got a message sent after the promotion, then a little more.
  const deadline = Date.now() + resumeTimeoutMs;
  let resumed = null;
  while (Date.now() < deadline) {
    const after = got.far.find((r) => sent.find((s) => s.seq === r.seq)?.at >= promotedAt);
    if (after) { resumed = after; break; }
    await sleep(50);
  }
  await sleep(1000);
  stop = true;
  await publisher;
  await sleep(500);
  local.close();
  far.close();

  const sentSeqs = new Set(sent.map((s) => s.seq));
  const seen = (list) => new Set(list.map((r) => r.seq));
  const farSeen = seen(got.far);
  const localSeen = seen(got.local);
  const lostFar = [...sentSeqs].filter((s) => !farSeen.has(s));
  const lostLocal = [...sentSeqs].filter((s) => !localSeen.has(s));
  const gap = longestGap(got.far);
  return {
    channel: c,
    rate,
    sent: sent.length,
    localReceived: localSeen.size,
    localLost: lostLocal.length,
    localLongestGapSeconds: longestGap(got.local).ms / 1000,
    crossReceived: farSeen.size,
    crossLost: lostFar.length,
    crossLostSeqs: lostFar,
    crossGapSeconds: gap.ms / 1000,
    triggeredToPromotedSeconds: (promotedAt - triggeredAt) / 1000,
    crossResumed: resumed !== null,
    crossResumedAfterPromotionSeconds: resumed ? (resumed.at - promotedAt) / 1000 : null,
  };
}
