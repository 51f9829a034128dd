// The process itself: configuration through LIVE_* variables, logs on stderr.

import { describe, test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, connect, closeAllSockets, user, chan, emitAck, join, http, nextEvent, refusal, OK,
} from './harness.mjs';

afterEach(closeAllSockets);

describe('process', () => {
  test('listen addresses, drain window and config file can be given as LIVE_* variables', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-env-'));
    const file = path.join(dir, 'gateway.yaml');
    fs.writeFileSync(file, 'rateLimits:\n  messagesPerMinute: 2\n  giftsPerMinute: 30\n');
    const gw = await startGateway({ viaEnv: true, config: file });
    try {
      assert.equal((await http(`${gw.adminUrl}/healthz`)).status, 200);
      const s = await connect(gw, user().token);
      const channelName = chan();
      await join(s, channelName);
      assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'a' }), OK);
      assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'b' }), OK);
      assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'c' }),
        refusal('rate_limited', 'Rate limit exceeded for messages'), 'LIVE_CONFIG was loaded');
    } finally {
      closeAllSockets();
      await gw.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('logs go to stderr and stdout stays empty outside dev mode', async () => {
    const gw = await startGateway();
    try {
      const s = await connect(gw, user().token);
      const channelName = chan();
      await join(s, channelName);
      assert.deepEqual(await emitAck(s, 'chat:send', { channelName, message: 'log me not' }), OK);
      await nextEvent(s, 'chat:new');
    } finally {
      closeAllSockets();
      await gw.stop();
    }
    assert.equal(gw.stdout(), '');
    assert.ok(gw.stderr().length > 0, 'something was logged on stderr');
  });
});
