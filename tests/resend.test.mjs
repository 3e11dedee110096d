// A commit whose reply is lost: the page re-sends it after reconnecting, and it is applied
// once. The page reaches the server through a TCP proxy in this test, which lets the first
// commit reach the server, then cuts the connection instead of passing on the reply: the
// window in which a client cannot know whether its commit landed.
//
// The re-send must not carry the `first` mark of its first send: the server answers a
// marked commit whose reads it knows are stale as a conflict from memory, and here its
// reads are stale because of its own first send. A conflict would make the page run the
// click again, counting it twice.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { freshDatabase, launchBrowser, makeApp, openPage, sql, startServer, until } from './support/harness.mjs';

const DB = 'js_resend_test';
let server;
let browser;
let proxy;

/** The text of each complete, masked client frame in `buf` (client frames are always masked). */
function clientFrames(buf) {
  const texts = [];
  let at = 0;
  while (at + 2 <= buf.length) {
    let len = buf[at + 1] & 0x7f;
    let head = 2;
    if (len === 126) { len = buf.readUInt16BE(at + 2); head = 4; }
    else if (len === 127) { len = Number(buf.readBigUInt64BE(at + 2)); head = 10; }
    if (at + head + 4 + len > buf.length) break;
    const mask = buf.subarray(at + head, at + head + 4);
    const body = Buffer.from(buf.subarray(at + head + 4, at + head + 4 + len));
    for (let i = 0; i < body.length; i++) body[i] ^= mask[i % 4];
    if ((buf[at] & 0x0f) === 1) texts.push(body.toString('utf8'));
    at += head + 4 + len;
  }
  return { texts, rest: buf.subarray(at) };
}

/**
 * A proxy to `port` that records every commit the page sends ({ conn, txn, first }) and
 * cuts both sides of the connection where the first `committed` reply would pass.
 */
function startProxy(port) {
  const commits = [];
  let conns = 0;
  let cut = false;
  const srv = net.createServer((page) => {
    const conn = ++conns;
    const upstream = net.connect(port, '127.0.0.1');
    let fromPage = Buffer.alloc(0);
    let upgraded = false;
    page.on('data', (chunk) => {
      upstream.write(chunk);
      if (!upgraded) {
        upgraded = chunk.includes('\r\n\r\n') && /upgrade: websocket/i.test(chunk.toString('latin1'));
        return;
      }
      const { texts, rest } = clientFrames(Buffer.concat([fromPage, chunk]));
      fromPage = rest;
      for (const text of texts) {
        const msg = JSON.parse(text);
        if (msg.type === 'commit') commits.push({ conn, txn: msg.txn, first: msg.first });
      }
    });
    upstream.on('data', (chunk) => {
      // Server frames are unmasked: the reply is visible as is.
      if (!cut && chunk.includes('"type":"committed"')) {
        cut = true;
        page.destroy();
        upstream.destroy();
        return;
      }
      page.write(chunk);
    });
    page.on('error', () => upstream.destroy());
    upstream.on('error', () => page.destroy());
    page.on('close', () => upstream.destroy());
    upstream.on('close', () => page.destroy());
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${srv.address().port}`,
    commits,
    close: () => new Promise((r) => { srv.close(r); }),
  })));
}

before(async () => {
  const app = makeApp({
    'migrations/0001_counter.sql': `
      CREATE TABLE counters (name text PRIMARY KEY, n integer NOT NULL);
      INSERT INTO counters VALUES ('clicks', 0);`,
    'index.html': `
      <script src="/_mjolnir/mjolnir.js"></script>
      <p>Clicked {{ table('counters').find('clicks').n }} times.</p>
      <button onclick="mjolnir.table('counters').find('clicks').n += 1">Click</button>`,
  }, null);
  server = await startServer(app, freshDatabase(DB));
  proxy = await startProxy(server.port);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.stop();
});

test('a commit whose reply was lost is re-sent unmarked after the reconnect and counted once', async () => {
  const page = await openPage(await browser.newContext(), proxy.url);
  const shown = () => page.locator('p').innerText();
  await until(shown, (t) => t === 'Clicked 0 times.', { what: 'the count' });

  await page.click('button');
  await until(() => page.evaluate(() => mjolnir.pending), (n) => n === 0, { what: 'the click to commit', timeoutMs: 30_000 });
  await until(shown, (t) => t === 'Clicked 1 times.', { what: 'the page to show it' });

  assert.equal(sql(DB, "SELECT n FROM counters WHERE name = 'clicks'"), '1', 'counted once');
  const [sent, ...again] = proxy.commits;
  assert.equal(sent.first, true, 'the first send is marked');
  assert.ok(again.length >= 1, `the commit was sent again: ${JSON.stringify(proxy.commits)}`);
  for (const c of again) {
    assert.equal(c.txn, sent.txn, 'the same transaction, not a re-run of the click');
    assert.ok(c.conn > sent.conn, 'on a new connection');
    assert.equal(c.first, undefined, 'a re-send carries no mark');
  }
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  assert.match(metrics, /^mjolnir_duplicate_commits_total 1$/m, 'answered from the record of committed ids');
  assert.match(metrics, /^mjolnir_known_stale_commits_total 0$/m);
  assert.deepEqual(page.problems, []);
});
