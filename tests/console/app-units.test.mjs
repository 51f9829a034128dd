// The console's pure JavaScript, run in Node: the event-stream parser and the character
// reference decoding used before chat lines are set as text.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { repoRoot } from '../gateway/harness.mjs';

const app = (file) => import(pathToFileURL(path.join(repoRoot, 'crates', 'gateway', 'console', file)).href);

test('the event-stream parser reassembles events split anywhere, skips comments, parses JSON', async () => {
  const { EventParser } = await app('api.js');
  const got = [];
  const p = new EventParser((name, data) => got.push([name, data]));
  const stream = ': keep-alive\n\nevent: overview\ndata: {"a":\n\nevent: item\r\ndata: {"kind":"chat","payload":{"message":"x\\ny"}}\r\n\r\ndata: plain\n\n';
  // Fed one character at a time: chunk boundaries never change the result.
  for (const ch of stream) p.push(ch);
  assert.deepEqual(got, [
    ['overview', '{"a":'],
    ['item', { kind: 'chat', payload: { message: 'x\ny' } }],
    ['message', 'plain'],
  ]);
});

test('multi-line data joins with newlines, and an event without data is no event', async () => {
  const { EventParser } = await app('api.js');
  const got = [];
  const p = new EventParser((name, data) => got.push([name, data]));
  p.push('event: notice\ndata: line one\ndata: line two\n\nevent: empty\n\n');
  assert.deepEqual(got, [['notice', 'line one\nline two']]);
});

test('the sanitizer\'s character references decode to the characters typed, nothing else is touched', async () => {
  const { decodeEntities } = await app('dom.js');
  assert.equal(decodeEntities('&lt;script&gt;alert(1)&lt;/script&gt;'), '<script>alert(1)</script>');
  assert.equal(decodeEntities('1 &lt; 2 &amp;&amp; 3 &gt; 2 &quot;q&quot; it&#39;s &#x41;&nbsp;'), '1 < 2 && 3 > 2 "q" it\'s A\u00a0');
  assert.equal(decodeEntities('&amp;lt;'), '&lt;', 'decoded once, not twice');
  assert.equal(decodeEntities('&bogus; &#0; &#xD800; & plain'), '&bogus; &#0; &#xD800; & plain');
  assert.equal(decodeEntities('no references'), 'no references');
});

test('durations read as an operator would say them', async () => {
  const { formatDuration } = await app('dom.js');
  assert.equal(formatDuration(45), '45 s');
  assert.equal(formatDuration(900), '15 min');
  assert.equal(formatDuration(3 * 3600 + 120), '3 h 2 min');
  assert.equal(formatDuration(86400 * 2 + 3600), '2 d 1 h');
});
