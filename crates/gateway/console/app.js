// The live-realtime operator console: sign in with a token, watch channels and one channel's
// feed live, moderate from the feed, and read the replicas' health and the running config.
//
// Text from the gateway is user content (chat, names, channel names): it is only ever set
// through dom.js (text nodes), never parsed as HTML.

import { Api, ApiError } from './api.js';
import { $, h, show, decodeEntities, formatDuration, formatTime, formatCount } from './dom.js';

const TOKEN_KEY = 'live-console-token';
/** Lines kept in the feed; older ones are dropped from the page. */
const MAX_FEED_LINES = 500;
const CHANNEL_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 10000;

const state = {
  api: null,
  session: null,
  overviewStream: null,
  feedStream: null,
  channel: null,
  ranking: null,
  endArmedUntil: 0,
};

// ---------------------------------------------------------------------------
// Sign in and out

async function signIn(token) {
  const api = new Api(token);
  const session = await api.get('api/session');
  state.api = api;
  state.session = session;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('who-name').textContent = session.username ? `${session.username} (${session.userId})` : session.userId;
  $('who-name').title = `role: ${session.role ?? 'none'}`;
  $('who-pod').textContent = `on ${session.pod} · v${session.version}`;
  show($('signin'), false);
  show($('tabs'));
  show($('who'));
  document.body.classList.add('signed-in');
  selectTab('live');
  state.overviewStream = keepStreaming('api/stream', onOverviewEvent, (s) => setStreamState('overview', s));
}

function signOut(message = '') {
  state.overviewStream?.abort();
  state.feedStream?.abort();
  state.overviewStream = null;
  state.feedStream = null;
  state.api = null;
  state.session = null;
  state.channel = null;
  sessionStorage.removeItem(TOKEN_KEY);
  document.body.classList.remove('signed-in');
  for (const id of ['tabs', 'who', 'tab-live', 'tab-replicas', 'tab-config']) show($(id), false);
  resetFeed();
  show($('signin'));
  $('token').value = '';
  $('signin-error').textContent = message;
  $('token').focus();
}

function refusalText(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) {
      return 'The gateway refused this token (unauthorized): it must be signed with one of the gateway\'s keys and not be expired.';
    }
    if (err.status === 403) {
      return 'This token is valid, but its role may not use the console: sign in with an admin or service token.';
    }
    return `Sign-in failed: ${err.message}`;
  }
  return `The gateway could not be reached: ${err.message}`;
}

// ---------------------------------------------------------------------------
// Event streams, reconnected with backoff until aborted or the token is refused

function keepStreaming(path, onEvent, onState) {
  const ctrl = new AbortController();
  (async () => {
    let delay = RETRY_MIN_MS;
    while (!ctrl.signal.aborted) {
      onState('connecting');
      try {
        await state.api.stream(path, (name, data) => {
          delay = RETRY_MIN_MS;
          onState('live');
          if (name === 'signed_out') {
            signOut(`Signed out: ${data?.message ?? 'the token is no longer valid'}.`);
            return;
          }
          onEvent(name, data);
        }, ctrl.signal);
      } catch (err) {
        if (ctrl.signal.aborted) return;
        if (err instanceof ApiError && err.signedOut) {
          signOut(refusalText(err));
          return;
        }
        onState(err instanceof ApiError ? err.message : 'connection lost');
      }
      if (ctrl.signal.aborted) return;
      onState('reconnecting');
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, RETRY_MAX_MS);
    }
  })();
  return ctrl;
}

function setStreamState(which, s) {
  if (which === 'overview') {
    document.body.dataset.overview = s === 'live' ? 'live' : 'down';
    if (s !== 'live') $('channels-scope').textContent = s;
  } else {
    $('feed-state').textContent = s === 'live' ? '' : s;
  }
}

// ---------------------------------------------------------------------------
// Overview: channels ranked by viewers, replicas

function onOverviewEvent(name, data) {
  if (name !== 'overview') return;
  renderChannels(data.channels);
  renderReplicas(data.replicas, data.generatedAt);
}

function scopeText(scope) {
  return scope === 'cluster' ? 'all replicas' : 'this replica only';
}

function renderChannels(ranking) {
  state.ranking = ranking;
  const scope = $('channels-scope');
  scope.textContent = scopeText(ranking.scope);
  scope.dataset.scope = ranking.scope;
  $('channels-totals').textContent =
    `${formatCount(ranking.totalViewers)} viewers in ${formatCount(ranking.totalChannels)} channels` +
    (ranking.totalChannels > ranking.channels.length ? ` (top ${ranking.channels.length} shown)` : '');
  const filter = $('channel-filter').value.trim().toLowerCase();
  const rows = ranking.channels
    .filter((c) => !filter || c.channelName.toLowerCase().includes(filter))
    .map((c) => h('tr', {
      className: c.channelName === state.channel ? 'selected' : '',
      dataset: { channel: c.channelName },
    },
    h('td', {}, h('button', {
      type: 'button',
      className: 'link',
      text: c.channelName,
      on: { click: () => openChannel(c.channelName) },
    })),
    h('td', { className: 'num viewers', text: formatCount(c.viewers) })));
  $('channels').tBodies[0].replaceChildren(...rows);
  show($('channels-empty'), ranking.channels.length === 0);
}

function renderReplicas(r, now) {
  const scope = $('replicas-scope');
  scope.textContent = scopeText(r.scope);
  scope.dataset.scope = r.scope;
  $('replicas-note').textContent = r.scope === 'cluster'
    ? `${r.replicas.length} replica(s) publishing health through Redis. This console is connected to ${r.thisPod}.`
    : 'Only the replica this console is connected to is shown: it runs without Redis, or Redis is unreachable.';
  const rows = r.replicas.map((x) => {
    const seen = Math.max(0, Math.round(((now ?? Date.now()) - x.updatedAt) / 1000));
    return h('tr', { className: x.stale ? 'stale' : '', dataset: { pod: x.pod } },
      h('td', {}, x.pod, x.pod === r.thisPod ? h('span', { className: 'tag', text: 'this' }) : null),
      h('td', { text: x.version }),
      h('td', { className: 'num', text: formatDuration(x.uptimeSeconds) }),
      h('td', { className: 'num', text: formatCount(x.connections) }),
      h('td', {}, h('span', { className: `status redis-${x.redis}`, text: x.redis })),
      h('td', { className: 'mono', title: x.configHash, text: x.configHash.slice(0, 12) }),
      h('td', { className: `num${x.configReloadFailures ? ' warn' : ''}`, text: formatCount(x.configReloadFailures) }),
      h('td', {}, h('span', {
        className: `status ${x.draining ? 'draining' : x.stale ? 'stale' : 'serving'}`,
        text: x.draining ? 'draining' : x.stale ? 'stale' : 'serving',
      })),
      h('td', { className: 'num', text: `${seen} s ago` }));
  });
  $('replicas').tBodies[0].replaceChildren(...rows);
}

// ---------------------------------------------------------------------------
// One channel's feed

function resetFeed() {
  $('feed').replaceChildren();
  $('users').replaceChildren();
  $('feed-title').textContent = 'Pick a channel';
  $('feed-state').textContent = '';
  show($('feed-viewers'), false);
  show($('users-box'), false);
  show($('moderation'), false);
  show($('feed-empty'));
  $('mod-result').textContent = '';
}

function openChannel(name) {
  if (!CHANNEL_NAME.test(name)) {
    $('open-channel-error').textContent = 'A channel name is 1 to 64 letters, digits, "_", "." or "-", starting with a letter or digit.';
    return;
  }
  $('open-channel-error').textContent = '';
  state.feedStream?.abort();
  resetFeed();
  state.channel = name;
  $('feed-title').textContent = name;
  show($('feed-empty'), false);
  show($('moderation'));
  document.body.dataset.channel = name;
  if (state.ranking) renderChannels(state.ranking);
  const path = `api/channels/${encodeURIComponent(name)}/feed`;
  state.feedStream = keepStreaming(path, onFeedEvent, (s) => setStreamState('feed', s));
}

function onFeedEvent(name, data) {
  if (name === 'presence') renderPresence(data);
  else if (name === 'item') appendItem(data);
  else if (name === 'skipped') appendNotice(`${formatCount(data.count)} item(s) skipped: the console read slower than the channel produced.`);
  else if (name === 'notice') appendNotice(data.message);
}

function renderPresence(p) {
  if (p.channelName !== state.channel) return;
  const badge = $('feed-viewers');
  badge.textContent = `${formatCount(p.viewers)} viewer${p.viewers === 1 ? '' : 's'}`;
  badge.dataset.viewers = String(p.viewers);
  badge.title = scopeText(p.scope);
  show(badge);
  const chips = p.users.map((u) => h('li', {},
    h('button', {
      type: 'button',
      className: 'chip',
      text: u,
      title: `Select ${u} for moderation`,
      on: { click: () => selectTarget(u) },
    })));
  if (p.usersTruncated) chips.push(h('li', { className: 'muted', text: 'and more…' }));
  $('users').replaceChildren(...chips);
  show($('users-box'), p.users.length > 0);
}

function selectTarget(userId) {
  $('mod-target').value = userId;
  $('mod-target').focus();
}

/** Who did it, as shown: the username when there is one, the id in the tooltip. */
function person(userId, username) {
  const label = username ? decodeEntities(username) : userId;
  return h('span', { className: 'who-ref', title: userId ?? '', text: label ?? 'unknown' });
}

function actions(userId) {
  if (!userId) return null;
  return h('span', { className: 'line-actions' },
    h('button', { type: 'button', className: 'mini', text: 'Warn', title: `Warn ${userId}`, on: { click: () => moderate('warn', userId) } }),
    h('button', { type: 'button', className: 'mini', text: 'Mute', title: `Mute ${userId}`, on: { click: () => moderate('mute', userId) } }));
}

/** The line's kind label, its content, and the user it is about (for the line's actions). */
function describe(item) {
  const p = item.payload ?? {};
  switch (item.kind) {
    case 'chat':
      return ['chat', [person(p.userId, p.username), h('span', { className: 'text', text: decodeEntities(p.message ?? '') })], p.userId];
    case 'gift':
      return ['gift', [person(p.from, p.fromUsername), ` sent ${formatCount(p.qty)} × `, h('strong', { text: p.giftId })], p.from];
    case 'system':
      if (p.type === 'join' || p.type === 'leave') {
        return ['presence', [person(p.userId, p.username), p.type === 'join' ? ' joined' : ' left', p.role ? ` as ${p.role}` : ''], p.userId];
      }
      // The gateway escapes every string of a backend event; shown as the characters sent.
      return ['system', [h('strong', { text: decodeEntities(p.type ?? 'event') }), ' ', h('code', { text: JSON.stringify(decodeStrings(withoutKeys(p, ['type', 'timestamp', 'offset', 'epoch']))) })], null];
    case 'moderation': {
      const target = p.targetUserId ? [' ', h('span', { className: 'who-ref', text: p.targetUserId })] : [];
      const verb = { warn: 'warned', mute: 'muted', end: 'ended the stream' }[p.action] ?? p.action;
      return ['moderation', [
        person(p.by, p.byUsername), ` ${verb}`, ...target,
        p.durationSeconds ? ` for ${formatDuration(p.durationSeconds)}` : '',
        p.reason ? h('span', { className: 'reason', text: ` — ${decodeEntities(p.reason)}` }) : '',
      ], null];
    }
    case 'presence': {
      // Observed by the console in the users present (cluster-wide, every 2 s).
      const d = Number(p.delta ?? 0);
      return ['presence', [person(p.userId, p.username), d > 0 ? ' joined' : ' left'], d > 0 ? p.userId : null];
    }
    case 'metrics':
      return ['metrics', [h('code', { text: JSON.stringify(p.metrics ?? p) })], null];
    default:
      return [item.kind ?? 'event', [h('code', { text: JSON.stringify(p) })], null];
  }
}

/** `v` with every string in it passed through `decodeEntities`. */
function decodeStrings(v) {
  if (typeof v === 'string') return decodeEntities(v);
  if (Array.isArray(v)) return v.map(decodeStrings);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, decodeStrings(x)]));
  return v;
}

function withoutKeys(o, keys) {
  return Object.fromEntries(Object.entries(o).filter(([k]) => !keys.includes(k)));
}

function appendLine(li) {
  const list = $('feed');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(li);
  while (list.childElementCount > MAX_FEED_LINES) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function appendItem(item) {
  const [kind, content, userId] = describe(item);
  const ts = item.payload?.timestamp ?? item.at;
  appendLine(h('li', { className: `line kind-${kind}`, dataset: { kind, user: userId ?? '', offset: item.offset ?? '' } },
    h('time', { text: formatTime(ts), attrs: { datetime: new Date(Number(ts) || Date.now()).toISOString() } }),
    h('span', { className: 'kind', text: kind }),
    h('span', { className: 'content' }, ...content),
    actions(userId)));
}

function appendNotice(message) {
  appendLine(h('li', { className: 'line kind-notice', dataset: { kind: 'notice' } },
    h('time', { text: formatTime(Date.now()) }),
    h('span', { className: 'kind', text: 'console' }),
    h('span', { className: 'content', text: message })));
}

// ---------------------------------------------------------------------------
// Moderation, through the gateway's own moderation path

function showResult(ok, text) {
  const out = $('mod-result');
  out.dataset.state = ok ? 'ok' : 'error';
  out.textContent = text;
}

async function moderate(action, target) {
  const channel = state.channel;
  if (!channel) return;
  const userId = (target ?? $('mod-target').value).trim();
  if (action === 'mute' && !userId) {
    showResult(false, 'Enter the user id to mute, or use a line\'s Mute button.');
    return;
  }
  const body = { action };
  if (userId && action !== 'end') body.targetUserId = userId;
  if (action === 'mute') body.durationSeconds = Number($('mod-duration').value);
  const reason = $('mod-reason').value.trim();
  if (reason) body.reason = reason;
  try {
    const r = await state.api.post(`api/channels/${encodeURIComponent(channel)}/moderation`, body);
    const who = r.targetUserId ? ` ${r.targetUserId}` : '';
    const text = {
      warn: `Warned${who || ' the channel'} in ${r.channelName}.`,
      mute: `Muted${who} in ${r.channelName} for ${formatDuration(r.durationSeconds)}.`,
      end: `Ended ${r.channelName}: every viewer was removed from the channel.`,
    }[r.action];
    showResult(true, text);
  } catch (err) {
    if (err instanceof ApiError && err.signedOut) {
      signOut(refusalText(err));
      return;
    }
    showResult(false, `Refused: ${err.message}${err.code ? ` (${err.code})` : ''}`);
  }
}

function onModerationClick(e) {
  const button = e.target.closest('button[data-action]');
  if (!button) return;
  const action = button.dataset.action;
  if (action === 'end') {
    // Two steps, so a stray click cannot end a stream.
    if (Date.now() > state.endArmedUntil) {
      state.endArmedUntil = Date.now() + 4000;
      button.textContent = 'Confirm end';
      button.classList.add('armed');
      setTimeout(() => { button.textContent = 'End stream'; button.classList.remove('armed'); }, 4000);
      return;
    }
    state.endArmedUntil = 0;
    button.textContent = 'End stream';
    button.classList.remove('armed');
  }
  moderate(action);
}

// ---------------------------------------------------------------------------
// Running config

const SECTION_TITLES = {
  rateLimits: 'Rate limits (per user, per minute)',
  moderation: 'Moderation',
  cors: 'CORS',
  limits: 'Input limits',
  presence: 'Presence batching',
  history: 'Channel history',
};

function valueText(v) {
  if (v === null || v === undefined) return '—';
  if (Array.isArray(v)) return v.length ? v.join(', ') : '(empty list)';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function table(rows) {
  return h('table', { className: 'kv' }, h('tbody', {}, ...rows.map(([k, v]) =>
    h('tr', {}, h('th', { scope: 'row', text: k }), h('td', { className: 'mono', text: valueText(v) })))));
}

async function loadConfig() {
  $('config-error').textContent = '';
  try {
    const c = await state.api.get('api/config');
    $('config-hash').textContent = `config ${c.configHash.slice(0, 12)}`;
    $('config-hash').title = `sha256 ${c.configHash}`;
    $('config-pod').textContent = state.session?.pod ?? 'this replica';
    // Known sections first, in the order of the docs; any newer section after them.
    const names = [...Object.keys(SECTION_TITLES), ...Object.keys(c.gateway)]
      .filter((n, i, all) => all.indexOf(n) === i && n in c.gateway);
    const sections = names.map((name) => [name, c.gateway[name]]).map(([name, values]) => {
      const rows = typeof values === 'object' && values !== null ? Object.entries(values) : [['value', values]];
      if (name === 'cors') rows.push(['origins in force', c.origins === '*' ? 'any origin, without credentials' : (Array.isArray(c.origins) && c.origins.length === 0 ? 'none: browsers refused (no list configured)' : c.origins)]);
      return h('section', { className: 'config-section', dataset: { section: name } },
        h('h3', { text: SECTION_TITLES[name] ?? name }), table(rows));
    });
    sections.push(h('section', { className: 'config-section', dataset: { section: 'process' } },
      h('h3', { text: 'Startup settings (restart to change)' }), table(Object.entries(c.process))));
    $('config-sections').replaceChildren(...sections);
  } catch (err) {
    if (err instanceof ApiError && err.signedOut) signOut(refusalText(err));
    else $('config-error').textContent = `Could not load the config: ${err.message}`;
  }
}

// ---------------------------------------------------------------------------
// Tabs and wiring

function selectTab(name) {
  for (const b of $('tabs').querySelectorAll('button[data-tab]')) {
    if (b.dataset.tab === name) b.setAttribute('aria-current', 'page');
    else b.removeAttribute('aria-current');
  }
  for (const t of ['live', 'replicas', 'config']) show($(`tab-${t}`), t === name);
  if (name === 'config') loadConfig();
}

function wire() {
  $('signin-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const token = $('token').value.trim().replace(/^Bearer\s+/i, '');
    if (!token) return;
    $('signin-error').textContent = '';
    show($('signin-busy'));
    $('signin-submit').disabled = true;
    try {
      await signIn(token);
    } catch (err) {
      $('signin-error').textContent = refusalText(err);
    } finally {
      show($('signin-busy'), false);
      $('signin-submit').disabled = false;
    }
  });
  $('sign-out').addEventListener('click', () => signOut('Signed out.'));
  $('tabs').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-tab]');
    if (b) selectTab(b.dataset.tab);
  });
  $('channel-filter').addEventListener('input', () => state.ranking && renderChannels(state.ranking));
  $('open-channel').addEventListener('submit', (e) => {
    e.preventDefault();
    openChannel($('open-channel-name').value.trim());
  });
  $('moderation').addEventListener('click', onModerationClick);
  $('moderation').addEventListener('submit', (e) => e.preventDefault());
  $('config-refresh').addEventListener('click', loadConfig);
}

async function boot() {
  wire();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (!saved) {
    $('token').focus();
    return;
  }
  try {
    await signIn(saved);
  } catch (err) {
    signOut(refusalText(err));
  }
}

boot();
