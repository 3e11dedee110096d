// The delay proxy (delay-proxy.mjs) against a plain TCP echo server: bytes arrive intact and
// in order, no earlier than the delay of their direction, and a half-close passes through.
// No database or browser needed.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { startDelayProxy } from './support/delay-proxy.mjs';

const UP_MS = 40;
const DOWN_MS = 60;
let echo;
let proxy;
/** When the echo server received each chunk (performance.now()). */
const arrivals = [];

before(async () => {
  // Echoes every byte; ends its half when the client ends its own.
  echo = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('data', (d) => {
      arrivals.push({ at: performance.now(), bytes: d.length });
      s.write(d);
    });
    s.on('end', () => s.end());
  });
  await new Promise((r) => echo.listen(0, '127.0.0.1', r));
  proxy = await startDelayProxy(echo.address().port, { upMs: UP_MS, downMs: DOWN_MS, limitMs: 60_000 });
});

after(async () => {
  await proxy?.close();
  await new Promise((r) => echo.close(r));
});

/** Connects through the proxy; resolves with the socket once connected. */
function connect() {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true }, () => resolve(s));
    s.once('error', reject);
  });
}

test('bytes arrive intact, in order, and no earlier than the delay each way', async () => {
  const s = await connect();
  const chunks = [Buffer.from('hello'), randomBytes(2 * 1024 * 1024), Buffer.from('bye')];
  const sent = Buffer.concat(chunks);
  const received = [];
  let firstBack;
  const ended = new Promise((resolve) => s.on('end', resolve));
  s.on('data', (d) => {
    firstBack ??= performance.now();
    received.push(d);
  });
  arrivals.length = 0;
  const t0 = performance.now();
  for (const c of chunks) s.write(c);
  s.end();
  await ended;
  const back = Buffer.concat(received);
  assert.equal(back.length, sent.length, 'every byte came back');
  assert.ok(back.equals(sent), 'the same bytes, in the same order');
  assert.ok(arrivals[0].at - t0 >= UP_MS, `reached the server after ${(arrivals[0].at - t0).toFixed(1)} ms (≥ ${UP_MS})`);
  assert.ok(firstBack - t0 >= UP_MS + DOWN_MS,
    `the echo came back after ${(firstBack - t0).toFixed(1)} ms (≥ ${UP_MS + DOWN_MS})`);
  // A delay, not a rate limit: 2 MB do not take much longer than the round trip here.
  assert.ok(performance.now() - t0 < 10_000, 'the transfer is not throttled');
  await new Promise((r) => (s.destroyed ? r() : s.on('close', r)));
});

test('each chunk is held for the delay, measured chunk by chunk', async () => {
  const s = await connect();
  const sentAt = [];
  const backAt = [];
  let got = '';
  s.setEncoding('utf8');
  s.on('data', (d) => {
    for (let i = 0; i < d.length; i++) backAt.push(performance.now());
    got += d;
  });
  // Five one-byte messages 15 ms apart: each must come back a round trip after it left,
  // not batched or sped up behind the first.
  for (const ch of 'abcde') {
    sentAt.push(performance.now());
    s.write(ch);
    await new Promise((r) => setTimeout(r, 15));
  }
  const deadline = Date.now() + 5_000;
  while (got.length < 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(got, 'abcde');
  for (let i = 0; i < 5; i++) {
    const rtt = backAt[i] - sentAt[i];
    assert.ok(rtt >= UP_MS + DOWN_MS, `byte ${i} came back after ${rtt.toFixed(1)} ms`);
  }
  s.destroy();
});

test('closing the proxy closes its open connections', async () => {
  const other = await startDelayProxy(echo.address().port, { upMs: 1, downMs: 1, limitMs: 60_000 });
  const s = await new Promise((resolve, reject) => {
    const c = net.connect({ port: other.port, host: '127.0.0.1' }, () => resolve(c));
    c.once('error', reject);
  });
  s.on('error', () => {});
  const closed = new Promise((r) => s.on('close', r));
  await other.close();
  await closed;
  assert.equal(other.connections(), 1);
});
