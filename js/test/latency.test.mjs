// A user far from the server: pages load and commit through the delay proxy at a 100 ms
// round trip (50 ms each way). What is asserted here holds for today's runtime, which
// shows a shared click once its commit is answered and runs a page's handlers one at a
// time, and must hold for any later one: every click counts exactly once, on the page and
// in the database, and money is conserved.
//
// Issue 14 adds assertions on time to visible (the first frame after the click at the
// median; 10 clicks visible within 2 frames): `clickTimes` and `burst` already return it
// per click, in frames, and the test prints it (`node --test` shows the diagnostics).
// js/bench/latency.mjs measures the same things over more clicks.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { startDelayProxy } from './delay-proxy.mjs';
import { freshDatabase, launchBrowser, makeApp, openPage, repo, sql, startServer, until } from './harness.mjs';
import { burst, clickTimes, counterAppFiles, percentile, ready, shownCount } from './latency-page.mjs';

const ONE_WAY_MS = 50;
const RTT_MS = 2 * ONE_WAY_MS;
const COUNTER_DB = 'js_latency_counter_test';
const BANK_DB = 'js_latency_bank_test';

let browser;
const stops = [];

/** `mjolnir dev` on a fresh database, behind a proxy adding ONE_WAY_MS each way. */
async function slowServer(appDir, db) {
  const server = await startServer(appDir, freshDatabase(db));
  stops.push(() => server.stop());
  const proxy = await startDelayProxy(server.port, { upMs: ONE_WAY_MS, downMs: ONE_WAY_MS });
  stops.push(() => proxy.close());
  return { server, proxy };
}

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const stop of stops.reverse()) await stop();
});

describe(`the shared counter at a ${RTT_MS} ms round trip`, () => {
  let proxy;
  let page;
  const dbCount = () => Number(sql(COUNTER_DB, "SELECT n FROM counters WHERE name = 'clicks'"));

  let sockets;

  before(async () => {
    const app = makeApp(counterAppFiles(), null);
    stops.push(() => rmSync(app, { recursive: true, force: true }));
    ({ proxy } = await slowServer(app, COUNTER_DB));
    const context = await browser.newContext();
    sockets = [];
    context.on('page', (p) => p.on('websocket', (ws) => sockets.push(ws.url())));
    page = await openPage(context, proxy.url);
    assert.equal((await ready(page)).count, 0);
  });

  test('the page and its WebSocket go through the proxy', async () => {
    const script = await page.evaluate(() => performance.getEntriesByType('resource')
      .map((e) => e.name).find((n) => n.includes('/_mjolnir/mjolnir.js')));
    assert.ok(script.startsWith(`${proxy.url}/`), script);
    assert.deepEqual(sockets, [`${proxy.url.replace('http:', 'ws:')}/ws`]);
    assert.ok(proxy.connections() >= 2, 'the page and its socket');
  });

  test('ten clicks one at a time: each shows, and the count is exact on the page and in the database', async (t) => {
    const before = dbCount();
    const times = await clickTimes(page, 10);
    t.diagnostic(`time to visible in frames: ${times.map((c) => c.frames).join(' ')}; ` +
      `ms: ${times.map((c) => c.ms.toFixed(0)).join(' ')} (median ${percentile(times.map((c) => c.ms), 50).toFixed(0)})`);
    assert.equal(times.length, 10);
    for (const c of times) assert.ok(c.frames >= 1, 'shown no earlier than the frame after the click');
    assert.equal(dbCount(), before + 10);
    assert.equal(await shownCount(page), before + 10);
  });

  test('ten rapid clicks: all show, all commit, each once', async (t) => {
    const b = await burst(page, 10, { withLocal: true });
    t.diagnostic(`all 10 visible after ${b.all.frames} frames (${b.all.ms.toFixed(0)} ms), ` +
      `committed after ${b.committedMs.toFixed(0)} ms; a page-only handler clicked after them showed after ` +
      `${b.local.frames} frames (${b.local.ms.toFixed(0)} ms)`);
    // A commit needs the server's answer, whatever the runtime: the proxy is in the path.
    assert.ok(b.committedMs >= RTT_MS, `committed after ${b.committedMs.toFixed(1)} ms`);
    assert.ok(b.all.frames >= 1 && b.local.frames >= 1);
    assert.equal(dbCount(), b.start + 10, 'each click counted once in the database');
    assert.equal(await shownCount(page), b.start + 10, 'and on the page');
    assert.equal(await page.evaluate(() => window.latency.localCount()), 1);
    // Conflicts are not asserted: a runtime that pipelines commits may retry some.
    t.diagnostic(`aborts: ${JSON.stringify(await page.evaluate(() => window.latency.aborts))}`);
    assert.deepEqual(page.problems, []);
  });
});

describe(`the bank at a ${RTT_MS} ms round trip`, () => {
  let proxy;
  const balances = () =>
    Object.fromEntries(sql(BANK_DB, 'SELECT name, balance FROM users ORDER BY name').split('\n')
      .map((l) => l.split('|')).map(([n, b]) => [n, Number(b)]));
  const shownBalance = (page) =>
    page.evaluate(() => Number(/Balance: (\S+)/.exec(document.body.innerText)?.[1]));

  before(async () => {
    ({ proxy } = await slowServer(join(repo, 'examples', 'bank'), BANK_DB));
  });

  test('transfers from two pages at once conserve money, and the pages agree with the database', async () => {
    const start = balances();
    const pages = {};
    for (const user of ['alice', 'bob']) {
      pages[user] = await openPage(await browser.newContext(), `${proxy.url}/?user=${user}`);
      await until(() => shownBalance(pages[user]), (b) => Number.isFinite(b), { what: `${user}'s balance`, timeoutMs: 30_000 });
    }
    // Figure 4's send(), run as a transaction that reports what it moved.
    const send = (page, to, amount) => page.evaluate(([to, amount]) => mjolnir.atomic(() => {
      document.getElementById('to').value = to;
      document.getElementById('amount').value = String(amount);
      const mine = () => mjolnir.table('users').find(mjolnir.user).balance;
      const before = mine();
      send();
      return before - mine();
    })(), [to, amount]);
    const transfers = [
      ['alice', 'bob', 10], ['bob', 'alice', 7], ['alice', 'carol', 5], ['bob', 'carol', 3],
    ];
    // Both pages at once, on the same accounts: a conflict, if any, is retried.
    const moved = await Promise.all(['alice', 'bob'].map(async (user) => {
      const out = [];
      for (const [from, to, amount] of transfers.filter(([f]) => f === user)) {
        out.push({ from, to, amount: await send(pages[user], to, amount) });
      }
      return out;
    }));
    const expected = { ...start };
    for (const m of moved.flat()) {
      assert.equal(m.amount, transfers.find(([f, to]) => f === m.from && to === m.to)[2], 'the whole amount moved');
      expected[m.from] -= m.amount;
      expected[m.to] += m.amount;
    }
    const end = balances();
    assert.deepEqual(end, expected, 'the database holds exactly the committed transfers');
    assert.equal(Object.values(end).reduce((a, b) => a + b, 0), Object.values(start).reduce((a, b) => a + b, 0),
      'money is conserved');
    for (const user of ['alice', 'bob']) {
      await until(() => shownBalance(pages[user]), (b) => b === end[user], { what: `${user}'s page`, timeoutMs: 10_000 });
      assert.deepEqual(pages[user].problems, []);
    }
  });
});
