// The Grafana dashboard and the PrometheusRule in deploy/monitoring/: valid JSON and YAML, every
// PromQL expression accepted by `promtool check rules`, every alert's behaviour proven with
// `promtool test rules`, and every metric they read exported by the gateway or the operator
// (the list is read from their source and cross-checked against a running gateway's /metrics).
// Also: the chart's copies equal the originals, and the kustomization renders the ConfigMap.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import {
  repoRoot, startGateway, metricsText, metricValue, connect, join, emitAck, user, chan, closeAllSockets, OK, nextEvent,
} from '../gateway/harness.mjs';
import { metricNames, variablesOf, substituteVariables, tokenize, GRAFANA_INTERVALS } from './promql.mjs';

const monitoring = path.join(repoRoot, 'deploy', 'monitoring');
const chartCopies = path.join(repoRoot, 'charts', 'live-realtime-operator', 'monitoring');
const dashboardPath = path.join(monitoring, 'grafana-dashboard.json');
const rulesPath = path.join(monitoring, 'prometheus-rules.yaml');

/** Metrics that are not ours but that the dashboard and alerts may read: Prometheus' own `up`,
 * and the HorizontalPodAutoscaler's state from kube-state-metrics (part of
 * kube-prometheus-stack), which no live-realtime process can export. */
const EXTERNAL = new Set([
  'up',
  'kube_horizontalpodautoscaler_spec_target_metric',
  'kube_horizontalpodautoscaler_spec_min_replicas',
  'kube_horizontalpodautoscaler_spec_max_replicas',
  'kube_horizontalpodautoscaler_status_current_replicas',
  'kube_horizontalpodautoscaler_status_desired_replicas',
]);
/** Series Prometheus itself creates from alerting rules. */
const PROMETHEUS_SERIES = new Set(['ALERTS', 'ALERTS_FOR_STATE']);

function rustFiles(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...rustFiles(p));
    else if (e.name.endsWith('.rs')) out.push(p);
  }
  return out;
}

/** Every metric family the gateway and operator define, read from their source:
 * {names: Set of series names (histograms with _bucket/_sum/_count), families: Set}. */
function exportedFromSource() {
  const families = new Set();
  const histograms = new Set();
  const def = /\b(Opts|HistogramOpts|IntGauge|IntCounter|Gauge|Counter)::new\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"/g;
  for (const crate of ['gateway', 'operator']) {
    for (const file of rustFiles(path.join(repoRoot, 'crates', crate, 'src'))) {
      for (const m of fs.readFileSync(file, 'utf8').matchAll(def)) {
        families.add(m[2]);
        if (m[1] === 'HistogramOpts') histograms.add(m[2]);
      }
    }
  }
  const names = new Set(families);
  for (const h of histograms) for (const s of ['_bucket', '_sum', '_count']) names.add(h + s);
  return { names, families };
}

function dashboard() {
  return JSON.parse(fs.readFileSync(dashboardPath, 'utf8'));
}

function panelsOf(d) {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** [{where, expr}] for every query of the dashboard. */
function dashboardExprs(d) {
  const out = [];
  for (const p of panelsOf(d)) {
    for (const t of p.targets ?? []) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
  }
  for (const v of d.templating.list) {
    if (v.type === 'query') {
      const q = typeof v.query === 'string' ? v.query : v.query.query;
      const m = q.match(/^label_values\((.*),\s*\w+\)$/s);
      assert.ok(m, `variable ${v.name}: expected label_values(<selector>, <label>), got ${q}`);
      out.push({ where: `variable ${v.name}`, expr: m[1] });
    }
  }
  return out;
}

function ruleGroups() {
  const doc = YAML.parse(fs.readFileSync(rulesPath, 'utf8'));
  assert.equal(doc.apiVersion, 'monitoring.coreos.com/v1');
  assert.equal(doc.kind, 'PrometheusRule');
  return doc.spec.groups;
}

function hasPromtool() {
  return spawnSync('promtool', ['--version'], { stdio: 'ignore' }).status === 0;
}
const PROMTOOL_MISSING = 'promtool not found: install Debian\'s `prometheus` package (scripts/test.sh does) to check the PromQL';

describe('the Grafana dashboard', () => {
  test('is valid JSON with a stable uid, a datasource variable and no overlapping panels', () => {
    const d = dashboard();
    assert.equal(d.uid, 'live-realtime');
    assert.equal(d.title, 'live-realtime');
    const vars = d.templating.list.map((v) => v.name);
    assert.deepEqual(vars, ['datasource', 'namespace', 'job']);
    const ids = new Set();
    const cells = new Set();
    for (const p of panelsOf(d)) {
      assert.ok(!ids.has(p.id), `duplicate panel id ${p.id}`);
      ids.add(p.id);
      const { x, y, w, h } = p.gridPos;
      assert.ok(x >= 0 && w > 0 && x + w <= 24, `panel "${p.title}" is outside the 24-column grid`);
      for (let i = x; i < x + w; i += 1) {
        for (let j = y; j < y + h; j += 1) {
          assert.ok(!cells.has(`${i},${j}`), `panel "${p.title}" overlaps another at ${i},${j}`);
          cells.add(`${i},${j}`);
        }
      }
      if (p.type !== 'row') {
        assert.equal(p.datasource?.uid, '${datasource}', `panel "${p.title}" is not on the datasource variable`);
        assert.ok(p.description, `panel "${p.title}" has no description`);
        assert.ok(p.targets?.length, `panel "${p.title}" has no query`);
      }
    }
  });

  test('uses only the variables it defines and Grafana\'s interval variables', () => {
    const d = dashboard();
    const defined = new Set([...d.templating.list.map((v) => v.name), ...Object.keys(GRAFANA_INTERVALS)]);
    for (const { where, expr } of dashboardExprs(d)) {
      for (const v of variablesOf(expr)) assert.ok(defined.has(v), `${where}: undefined variable $${v}`);
    }
  });

  test('covers what operators watch: connections, deliveries, latency, limits, auth, Redis, reloads, HPA, reconciles', () => {
    const all = dashboardExprs(dashboard()).map((e) => e.expr).join('\n');
    for (const metric of [
      'ws_active_connections', 'ws_connections_total', 'ws_deliveries_total', 'ws_message_duration_seconds_bucket',
      'ws_rate_limit_hits_total', 'ws_auth_failures_total', 'live_redis_up', 'live_redis_publish_skipped_total',
      'live_config_reloads_total', 'kube_horizontalpodautoscaler_spec_target_metric',
      'live_operator_reconcile_errors_total',
    ]) {
      assert.ok(all.includes(metric), `no panel reads ${metric}`);
    }
  });
});

describe('the PrometheusRule', () => {
  test('has every alert the runbooks document, each with a severity, a summary and a runbook', () => {
    const alerts = ruleGroups().flatMap((g) => g.rules);
    const names = alerts.map((r) => r.alert).sort();
    assert.deepEqual(names, [
      'LiveAuthFailuresSpiking', 'LiveConfigReloadFailing', 'LiveGatewayAtConnectionTarget',
      'LiveGatewayDown', 'LiveGatewayReplicaDown', 'LiveOperatorReconcileErrors',
      'LiveRealtimeNotReady', 'LiveRedisUnreachable',
    ]);
    const doc = fs.readFileSync(path.join(repoRoot, 'docs', 'monitoring.md'), 'utf8');
    for (const r of alerts) {
      assert.ok(['critical', 'warning'].includes(r.labels?.severity), `${r.alert}: severity`);
      assert.ok(r.annotations?.summary && r.annotations?.description, `${r.alert}: summary and description`);
      assert.ok(r.annotations?.runbook?.includes('1. '), `${r.alert}: a runbook with steps`);
      assert.ok(doc.includes(`### ${r.alert}`), `docs/monitoring.md has no section for ${r.alert}`);
    }
  });
});

describe('PromQL', () => {
  let tmp;
  before(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'live-monitoring-')); });
  after(() => { fs.rmSync(tmp, { recursive: true, force: true }); });

  /** The PrometheusRule's groups as a plain Prometheus rule file. */
  function writeRules() {
    const file = path.join(tmp, 'rules.yaml');
    fs.writeFileSync(file, YAML.stringify({ groups: ruleGroups() }));
    return file;
  }

  test('every dashboard and alert expression parses (promtool check rules)', (t) => {
    if (!hasPromtool()) return t.skip(PROMTOOL_MISSING);
    const rules = dashboardExprs(dashboard()).map(({ expr }, i) => ({
      record: `dashboard:query_${i}`,
      expr: substituteVariables(expr),
    }));
    const file = path.join(tmp, 'all.yaml');
    fs.writeFileSync(file, YAML.stringify({ groups: [{ name: 'dashboard', rules }, ...ruleGroups()] }));
    const r = spawnSync('promtool', ['check', 'rules', file], { encoding: 'utf8' });
    assert.equal(r.status, 0, `promtool check rules failed:\n${r.stdout}${r.stderr}`);
    assert.match(r.stdout, new RegExp(`SUCCESS: ${rules.length + ruleGroups().flatMap((g) => g.rules).length} rules found`));
  });

  test('every alert fires when it should and stays quiet when it should (promtool test rules)', (t) => {
    if (!hasPromtool()) return t.skip(PROMTOOL_MISSING);
    writeRules();
    const tests = path.join(tmp, 'alerts.test.yaml');
    fs.copyFileSync(path.join(repoRoot, 'tests', 'console', 'alerts.promtool.yaml'), tests);
    const r = spawnSync('promtool', ['test', 'rules', tests], { encoding: 'utf8' });
    assert.equal(r.status, 0, `promtool test rules failed:\n${r.stdout}${r.stderr}`);
    const tested = new Set([...fs.readFileSync(tests, 'utf8').matchAll(/alertname="(\w+)"/g)].map((m) => m[1]));
    for (const rule of ruleGroups().flatMap((g) => g.rules)) {
      assert.ok(tested.has(rule.alert), `alerts.promtool.yaml has no test for ${rule.alert}`);
    }
  });

  test('the metric-name reader finds selectors and ignores labels, functions and keywords', () => {
    assert.deepEqual(metricNames('sum by (pod, le) (rate(a_total{x="y", z=~"b|c"}[5m] offset 1h)) / on (pod) group_left (v) b'), ['a_total', 'b']);
    assert.deepEqual(metricNames('label_replace(k{job="j"}, "job", "$1", "hpa", "(.+)") >= bool 0.9 * max_over_time(m[10m:1m])'), ['k', 'm']);
    assert.deepEqual(metricNames('{__name__="n", a="b"} unless up == 0 and inf > nan'), ['n', 'up']);
    assert.deepEqual(tokenize('x[1h30m] > 1e3'), ['x', '[', '1h30m', ']', '>', '1e3']);
  });

  test('every metric the dashboard and the alerts read is exported by the gateway or the operator', () => {
    const { names } = exportedFromSource();
    const exprs = [
      ...dashboardExprs(dashboard()),
      ...ruleGroups().flatMap((g) => g.rules.map((r) => ({ where: `alert ${r.alert}`, expr: r.expr }))),
    ];
    const unknown = [];
    for (const { where, expr } of exprs) {
      for (const m of metricNames(substituteVariables(expr))) {
        if (!names.has(m) && !EXTERNAL.has(m) && !PROMETHEUS_SERIES.has(m)) unknown.push(`${where}: ${m}`);
      }
    }
    assert.deepEqual(unknown, [], 'metrics neither live-gateway nor live-operator exports');
  });

  describe('against a running gateway', () => {
    let gw;
    before(async () => { gw = await startGateway(); });
    after(async () => { await gw?.stop(); });

    test('ws_deliveries_total counts one delivery per recipient of a broadcast', async () => {
      const channelName = chan();
      const members = [];
      for (let i = 0; i < 3; i += 1) {
        const s = await connect(gw, user().token);
        await join(s, channelName, { others: members });
        members.push(s);
      }
      const before = metricValue(await metricsText(gw), 'ws_deliveries_total');
      assert.deepEqual(await emitAck(members[0], 'chat:send', { channelName, message: 'one line, three members' }), OK);
      for (const s of members) await nextEvent(s, 'chat:new');
      const after = metricValue(await metricsText(gw), 'ws_deliveries_total');
      assert.equal(after - before, 3);
      closeAllSockets();
    });

    test('every family on /metrics is one the source scan found (the scan misses nothing)', async () => {
      const { families } = exportedFromSource();
      const text = await metricsText(gw);
      const live = [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]);
      assert.ok(live.length >= 10, `too few families on /metrics: ${live}`);
      assert.deepEqual(live.filter((f) => !families.has(f)), []);
    });
  });
});

describe('distribution', () => {
  test('the chart carries exact copies of the dashboard and the rules', () => {
    for (const f of ['grafana-dashboard.json', 'prometheus-rules.yaml']) {
      const want = fs.readFileSync(path.join(monitoring, f), 'utf8');
      const copy = path.join(chartCopies, f);
      if (process.env.UPDATE_MONITORING === '1') fs.writeFileSync(copy, want);
      assert.equal(fs.readFileSync(copy, 'utf8'), want,
        `${path.relative(repoRoot, copy)} differs from deploy/monitoring/${f}; run UPDATE_MONITORING=1 npm test --prefix tests`);
    }
  });

  test('the kustomization renders the dashboard ConfigMap with the sidecar label, and the rule', (t) => {
    const kubectl = spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' });
    if (kubectl.status !== 0) return t.skip('kubectl not found (scripts/fetch-tools.sh provides it)');
    const out = execFileSync('kubectl', ['kustomize', monitoring], { encoding: 'utf8' });
    const docs = YAML.parseAllDocuments(out).map((d) => d.toJSON());
    const cm = docs.find((d) => d.kind === 'ConfigMap');
    assert.equal(cm.metadata.name, 'live-realtime-dashboard');
    assert.equal(cm.metadata.labels.grafana_dashboard, '1');
    assert.deepEqual(JSON.parse(cm.data['live-realtime.json']), dashboard());
    assert.ok(docs.some((d) => d.kind === 'PrometheusRule' && d.metadata.name === 'live-realtime'));
  });
});
