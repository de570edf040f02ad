'use strict';
// End-to-end test: starts the real omnirelay server and calls it through the client.
// The server binary comes from RELAY_SERVER_BIN (set by `make test-node`), else ../../.venv/bin/omnirelay.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { OmniRelayClient, OmniRelayError } = require('../index.js');

const BIN = process.env.RELAY_SERVER_BIN || path.join(__dirname, '..', '..', '..', '.venv', 'bin', 'omnirelay');
const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;
const SERVING_RE = /^omnirelay serving on 127\.0\.0\.1:(\d+) profile=development$/m;

/** @type {import('node:child_process').ChildProcess} */
let server;
let serverStderr = '';
/** @type {Promise<{code: number|null, signal: string|null}>} */
let serverExited;
/** @type {OmniRelayClient} */
let client;

/** Starts the server and resolves with its port once it prints the serving line. */
function startServer() {
  assert.ok(fs.existsSync(BIN), `omnirelay binary not found at ${BIN} (set RELAY_SERVER_BIN)`);
  // The server reads every OMNIRELAY_* variable as a setting (and rejects unknown ones),
  // which is why the binary's path comes in RELAY_SERVER_BIN.
  // Its usage ledger and spill file go to a directory of this run, not the working directory.
  const scratch = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'omnirelay-node-'));
  server = spawn(BIN, ['serve', '--host', '127.0.0.1', '--port', '0', '--profile', 'development'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      OMNIRELAY_USAGE__SQLITE_PATH: path.join(scratch, 'usage.db'),
      OMNIRELAY_USAGE__SPILL_PATH: path.join(scratch, 'usage-spill.jsonl'),
      OMNIRELAY_METRICS__PORT: '0',
    },
  });
  serverExited = new Promise((resolve) => server.once('exit', (code, signal) => resolve({ code, signal })));
  server.stderr.setEncoding('utf8').on('data', (chunk) => { serverStderr += chunk; });
  let stdout = '';
  return new Promise((resolve, reject) => {
    const fail = (why) => {
      clearTimeout(timer);
      reject(new Error(`${why}\n--- server stdout ---\n${stdout}\n--- server stderr ---\n${serverStderr}`));
    };
    const timer = setTimeout(() => fail(`server did not print its serving line within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
    server.stdout.setEncoding('utf8').on('data', (chunk) => {
      stdout += chunk;
      const m = SERVING_RE.exec(stdout);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    server.once('error', (err) => fail(`could not start ${BIN}: ${err.message}`));
    serverExited.then(({ code, signal }) => fail(`server exited early (code ${code}, signal ${signal})`));
  });
}

before(async () => {
  const port = await startServer();
  assert.ok(port > 0 && port < 65536, `bad port ${port}`);
  client = new OmniRelayClient(`127.0.0.1:${port}`, { requestId: 'node-client-test' });
});

after(async () => {
  if (client) client.close();
  if (!server) return;
  const running = server.exitCode === null && server.signalCode === null;
  if (running) server.kill('SIGTERM');
  const timeout = new Promise((resolve) => setTimeout(() => resolve(null), STOP_TIMEOUT_MS).unref());
  const exit = await Promise.race([serverExited, timeout]);
  if (exit === null) {
    server.kill('SIGKILL');
    await serverExited;
    server.stdout.destroy();
    server.stderr.destroy();
    assert.fail(`server did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM\n${serverStderr}`);
  }
  // A grandchild could hold the pipes open and keep the test process alive.
  server.stdout.destroy();
  server.stderr.destroy();
  const when = running ? 'on SIGTERM' : 'before the tests ended (it crashed)';
  assert.deepEqual(exit, { code: 0, signal: null }, `server did not exit cleanly ${when}\n${serverStderr}`);
});

/** @param {number} maxTokens */
function helloRequest(maxTokens) {
  return {
    model: 'local-small',
    messages: [{ role: 'ROLE_USER', content: [{ text: 'hello node' }] }],
    sampling: { max_tokens: maxTokens },
  };
}

/** @param {number} code gRPC status number. */
function isCode(code) {
  return (err) => {
    assert.ok(err instanceof OmniRelayError, `expected OmniRelayError, got ${err}`);
    assert.equal(err.code, code, `expected code ${code}, got ${err.code} (${err.codeName}: ${err.details})`);
    assert.equal(typeof err.details, 'string');
    return true;
  };
}

test('complete returns one assistant choice cut at max_tokens', async () => {
  const res = await client.complete(helloRequest(5), { deadlineMs: 10_000 });
  assert.equal(res.choices.length, 1);
  const [choice] = res.choices;
  assert.equal(choice.message.role, 'ROLE_ASSISTANT');
  const text = choice.message.content.map((p) => p.text || '').join('');
  assert.ok(text.length > 0, 'empty answer text');
  assert.equal(choice.finish_reason, 'FINISH_REASON_LENGTH');
  assert.equal(Number(res.usage.output_tokens), 5);
  assert.ok(Number(res.usage.input_tokens) > 0, `input_tokens ${res.usage.input_tokens}`);
  assert.equal(res.route.resolved_model, 'local-small');
  assert.equal(res.route.provider, 'local');
});

test('stream yields route_started, 8 deltas matching the unary text, finish, usage, done', async () => {
  const request = helloRequest(8);
  const events = [];
  for await (const ev of client.stream(request, { deadlineMs: 10_000 })) events.push(ev);
  const types = events.map((e) => e.type);
  assert.ok(events.length > 0, 'no events');
  assert.equal(types[0], 'route_started', `event types: ${types}`);
  assert.equal(types[types.length - 1], 'done', `event types: ${types}`);

  const deltas = events.filter((e) => e.type === 'text_delta');
  assert.equal(deltas.length, 8, `event types: ${types}`);
  const streamed = deltas.map((d) => d.text).join('');
  const unary = await client.complete(request, { deadlineMs: 10_000 });
  const unaryText = unary.choices[0].message.content.map((p) => p.text || '').join('');
  assert.equal(streamed, unaryText);

  const finishes = events.filter((e) => e.type === 'finish');
  assert.equal(finishes.length, 1, `event types: ${types}`);
  assert.equal(finishes[0].finish_reason, 'FINISH_REASON_LENGTH');
  const usages = events.filter((e) => e.type === 'usage');
  assert.equal(usages.length, 1, `event types: ${types}`);
  assert.equal(Number(usages[0].output_tokens), 8);
});

test('an unknown model is NOT_FOUND', async () => {
  await assert.rejects(client.complete({ ...helloRequest(5), model: 'no-such-model' }), isCode(5));
});

test('a request without messages is INVALID_ARGUMENT', async () => {
  await assert.rejects(client.complete({ ...helloRequest(5), messages: [] }), isCode(3));
});

test('listModels includes local-small', async () => {
  const models = await client.listModels();
  assert.ok(Array.isArray(models));
  const names = models.map((m) => m.name);
  assert.ok(names.includes('local-small'), `models: ${names}`);
});
