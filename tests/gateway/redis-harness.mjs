// Real Redis deployments for the multi-replica tests: a standalone server (optionally with TLS),
// a 3-master Redis Cluster, and a primary + replica watched by a Sentinel, each on free loopback
// ports in a temporary directory, plus certificates made with openssl. Every process started here
// is killed by stopAll() (call it in after()).

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort, sleep, http } from './harness.mjs';

export const redisBin = process.env.REDIS_SERVER_BIN ?? 'redis-server';
export const sentinelBin = process.env.REDIS_SENTINEL_BIN ?? 'redis-sentinel';
export const cliBin = process.env.REDIS_CLI_BIN ?? 'redis-cli';

const works = (bin, args = ['--version']) => {
  try {
    return spawnSync(bin, args).status === 0;
  } catch {
    return false;
  }
};

/** Why a suite needing `bins` cannot run here, or false when it can. */
export function missing(...bins) {
  const absent = bins.filter((b) => !works(b, b === 'openssl' ? ['version'] : ['--version']));
  return absent.length ? `${absent.join(', ')} not found (scripts/test.sh installs them)` : false;
}

const running = new Set();

/** A temporary directory removed by stopAll(). */
export function tempDir(name) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `live-${name}-`));
  running.add({ stop: async () => fs.rmSync(dir, { recursive: true, force: true }) });
  return dir;
}

/** Starts `bin args` and resolves once its output contains `ready` (a string or RegExp). */
async function startProcess(bin, args, ready, what, timeoutMs = 10_000) {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const proc = {
    child,
    output: () => out,
    exited,
    alive: () => child.exitCode === null && child.signalCode === null,
    async kill(signal = 'SIGKILL') {
      if (proc.alive()) child.kill(signal);
      await exited;
    },
  };
  running.add({ stop: () => proc.kill() });
  const deadline = Date.now() + timeoutMs;
  const matches = () => (typeof ready === 'string' ? out.includes(ready) : ready.test(out));
  while (!matches()) {
    if (!proc.alive()) throw new Error(`${what} exited:\n${out}`);
    if (Date.now() > deadline) {
      await proc.kill();
      throw new Error(`${what} did not start within ${timeoutMs} ms:\n${out}`);
    }
    await sleep(25);
  }
  return proc;
}

/** Runs redis-cli against `port` and returns its stdout (throws on failure). */
export function cli(port, args, { tls } = {}) {
  const base = ['-h', '127.0.0.1', '-p', String(port)];
  if (tls) base.push('--tls', '--cacert', tls.ca, ...(tls.cert ? ['--cert', tls.cert, '--key', tls.key] : []));
  const r = spawnSync(cliBin, [...base, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`redis-cli ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** INFO `section` of the server on `port` as {field: value}. */
export function info(port, section, opts) {
  const out = {};
  for (const line of cli(port, ['INFO', section], opts).split('\n')) {
    const m = line.trim().match(/^([a-z0-9_]+):(.*)$/);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

/** How many clients are subscribed to pub/sub channel `chan` on `port` (sharded or plain). */
export function subscribers(port, chan, { sharded = false, tls } = {}) {
  const lines = cli(port, ['PUBSUB', sharded ? 'SHARDNUMSUB' : 'NUMSUB', chan], { tls }).trim().split('\n');
  return Number(lines[1]);
}

const baseArgs = (port) => ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];

/**
 * A standalone redis-server on a free port. opts.args: extra server arguments; opts.tls: the
 * certificates from makeCerts() (the server then listens with TLS only).
 * Resolves {port, proc, stop()}.
 */
export async function startRedis({ args = [], tls, port } = {}) {
  port ??= await freePort();
  const listen = tls
    ? ['--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--tls-cert-file', tls.cert, '--tls-key-file', tls.key, '--tls-ca-cert-file', tls.ca, '--tls-auth-clients', 'no']
    : baseArgs(port);
  const proc = await startProcess(redisBin, [...listen, ...args], 'Ready to accept connections', `redis-server :${port}`);
  return { port, proc, stop: () => proc.kill() };
}

/**
 * A Redis Cluster of `masters` primaries on free loopback ports, created with
 * `redis-cli --cluster create`; resolves once every node reports `cluster_state:ok`.
 * Resolves {ports, nodes: [{port, proc}], url (redis-cluster://...), stop()}.
 */
export async function startCluster({ masters = 3, tls } = {}) {
  const dir = tempDir('cluster');
  const nodes = [];
  const tlsOpts = tls ? { tls } : {};
  for (let i = 0; i < masters; i += 1) {
    const port = await freePort();
    const listen = tls
      ? ['--port', '0', '--tls-port', String(port), '--tls-cluster', 'yes', '--bind', '127.0.0.1', '--save', '',
        '--appendonly', 'no', '--tls-cert-file', tls.cert, '--tls-key-file', tls.key, '--tls-ca-cert-file', tls.ca,
        '--tls-auth-clients', 'no']
      : baseArgs(port);
    const proc = await startProcess(redisBin, [
      ...listen, '--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, `nodes-${port}.conf`),
      '--cluster-node-timeout', '2000', '--dir', dir,
    ], 'Ready to accept connections', `cluster node :${port}`);
    nodes.push({ port, proc });
  }
  const ports = nodes.map((n) => n.port);
  const tlsArgs = tls ? ['--tls', '--cacert', tls.ca] : [];
  const r = spawnSync(cliBin, [...tlsArgs, '--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-yes'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`redis-cli --cluster create: ${r.stdout}\n${r.stderr}`);
  const deadline = Date.now() + 15_000;
  while (!ports.every((p) => cli(p, ['CLUSTER', 'INFO'], tlsOpts).includes('cluster_state:ok'))) {
    if (Date.now() > deadline) throw new Error('the cluster did not reach cluster_state:ok');
    await sleep(100);
  }
  const [first, ...rest] = ports;
  return {
    ports,
    nodes,
    url: `${tls ? 'rediss' : 'redis'}-cluster://127.0.0.1:${first}?${rest.map((p) => `node=127.0.0.1:${p}`).join('&')}`,
    /** Subscribers of sharded channel `chan`, over every node (only its slot's owner has any). */
    shardSubscribers(chan) {
      return ports.reduce((n, p) => n + subscribers(p, chan, { sharded: true, ...tlsOpts }), 0);
    },
    stop: () => Promise.all(nodes.map((n) => n.proc.kill())),
  };
}

/**
 * A primary and a replica watched by one Sentinel (quorum 1) under service name `name`; fast
 * timeouts so a failover takes a couple of seconds.
 * Resolves {name, primary: {port, proc}, replica: {port, proc}, sentinel: {port, proc}, url,
 * currentPrimary(), failover(), stop()}.
 */
export async function startSentinel({ name = 'live-primary', password } = {}) {
  const dir = tempDir('sentinel');
  const auth = password ? ['--requirepass', password, '--masterauth', password] : [];
  const primary = await startRedis({ args: auth });
  const replica = await startRedis({ args: [...auth, '--replicaof', '127.0.0.1', String(primary.port)] });
  const cliAuth = password ? ['-a', password, '--no-auth-warning'] : [];
  const deadline = Date.now() + 10_000;
  while (!cli(replica.port, [...cliAuth, 'INFO', 'replication']).includes('master_link_status:up')) {
    if (Date.now() > deadline) throw new Error('the replica did not sync');
    await sleep(100);
  }
  const port = await freePort();
  const conf = path.join(dir, 'sentinel.conf');
  fs.writeFileSync(conf, [
    `port ${port}`,
    'bind 127.0.0.1',
    `dir ${dir}`,
    `sentinel monitor ${name} 127.0.0.1 ${primary.port} 1`,
    `sentinel down-after-milliseconds ${name} 1000`,
    `sentinel failover-timeout ${name} 5000`,
    `sentinel parallel-syncs ${name} 1`,
    ...(password ? [`sentinel auth-pass ${name} ${password}`] : []),
    '',
  ].join('\n'));
  const proc = await startProcess(sentinelBin, [conf], /\+monitor master/, `redis-sentinel :${port}`);
  // The sentinel learns about the replica from the primary's INFO within a few seconds.
  const known = Date.now() + 15_000;
  while (!/num-slaves\s+1/.test(cli(port, ['SENTINEL', 'MASTER', name]).replace(/\n(?=\d)/g, ' '))) {
    if (Date.now() > known) throw new Error(`the sentinel did not discover the replica:\n${proc.output()}`);
    await sleep(200);
  }
  const sentinel = { port, proc };
  const currentPrimary = () => Number(cli(port, ['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name]).trim().split('\n')[1]);
  return {
    name,
    primary,
    replica,
    sentinel,
    url: `redis-sentinel://127.0.0.1:${port}?sentinelServiceName=${name}`,
    currentPrimary,
    /** Resolves {port, promotedAt} once a server other than `before` is the primary. */
    async promoted(before, timeoutMs = 30_000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        let now;
        try { now = currentPrimary(); } catch { now = before; }
        if (now !== before) {
          try {
            if (cli(now, [...cliAuth, 'INFO', 'replication']).includes('role:master')) return { port: now, promotedAt: Date.now() };
          } catch { /* not answering yet */ }
        }
        if (Date.now() > until) throw new Error(`no new primary within ${timeoutMs} ms:\n${proc.output()}`);
        await sleep(20);
      }
    },
    /** SENTINEL FAILOVER now; resolves {port, promotedAt} of the new primary. */
    async failover() {
      const before = currentPrimary();
      cli(port, ['SENTINEL', 'FAILOVER', name]);
      return this.promoted(before);
    },
    /** Kills the primary (SIGKILL); resolves {port, promotedAt} once the sentinel promoted the replica. */
    async killPrimary() {
      const before = currentPrimary();
      await [primary, replica].find((r) => r.port === before).stop();
      return this.promoted(before);
    },
    stop: () => Promise.all([proc.kill(), primary.stop(), replica.stop()]),
  };
}

/**
 * A CA and a server certificate for 127.0.0.1/localhost made with openssl in `dir`; a second,
 * unrelated CA (`otherCa`) for negative tests. Resolves {ca, cert, key, otherCa}.
 */
export function makeCerts(dir) {
  const run = (...args) => {
    const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  for (const ca of ['ca', 'other-ca']) {
    run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=live test ${ca}`,
      '-keyout', `${ca}.key`, '-out', `${ca}.crt`);
  }
  run('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', 'server.key', '-out', 'server.csr');
  fs.writeFileSync(path.join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
    '-extfile', 'san.ext', '-out', 'server.crt');
  return {
    ca: path.join(dir, 'ca.crt'),
    cert: path.join(dir, 'server.crt'),
    key: path.join(dir, 'server.key'),
    otherCa: path.join(dir, 'other-ca.crt'),
  };
}

/**
 * A TCP proxy to 127.0.0.1:`targetPort` that holds every client-to-server chunk for `delayMs`
 * (in order): a Redis that is slow for one gateway only. Resolves {port, stop()}.
 */
export async function delayProxy(targetPort, delayMs) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    let chain = Promise.resolve();
    client.on('data', (d) => {
      chain = chain.then(() => sleep(delayMs)).then(() => { if (!upstream.destroyed) upstream.write(d); });
    });
    upstream.on('data', (d) => { if (!client.destroyed) client.write(d); });
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('close', close);
    upstream.on('close', close);
    client.on('error', close);
    upstream.on('error', close);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const proxy = {
    port: server.address().port,
    stop: () => new Promise((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    }),
  };
  running.add(proxy);
  return proxy;
}

/** Kills every process and removes every directory started through this module. */
export async function stopAll() {
  const all = [...running].reverse();
  running.clear();
  for (const r of all) {
    try { await r.stop(); } catch { /* already gone */ }
  }
}

/** Polls `fn` until it returns a truthy value or `ms` pass; throws with `what` on timeout. */
export async function eventually(fn, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what} (last: ${JSON.stringify(last)})`);
    await sleep(100);
  }
}

/** Resolves once `gw` reports `live_redis_up 1` (the sample line, not its help text). */
export function redisUp(gw, ms = 15_000) {
  return eventually(async () => /^live_redis_up 1$/m.test((await http(`${gw.adminUrl}/metrics`)).text), ms,
    `live_redis_up 1 on ${gw.adminUrl}`);
}
