// A user far from the server: pages load and commit through the delay proxy at a 100 ms
// round trip (50 ms each way). The page never waits for it: a click shows in the first
// frames after it, ten rapid clicks all show before the first commit returns, a page-only
// handler is not held back by commits in flight, and still every click counts exactly
// once, on the page and in the database, and money is conserved. When a commit conflicts,
// it and the page's later ones are undone and run again (a re-run reads the form as it was
// when its event fired), and the pages converge to the database.
// js/bench/latency.mjs measures the same things over more clicks.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { startDelayProxy } from './support/delay-proxy.mjs';
import { freshDatabase, launchBrowser, makeApp, openPage, repo, sql, startServer, until } from './support/harness.mjs';
import { burst, clickTimes, counterAppFiles, percentile, ready, shownCount } from './support/latency-page.mjs';

const ONE_WAY_MS = 50;
const RTT_MS = 2 * ONE_WAY_MS;
const COUNTER_DB = 'js_latency_counter_test';
const BANK_DB = 'js_latency_bank_test';
const RACE_DB = 'js_latency_race_test';
const BANK_FORM_DB = 'js_latency_bank_form_test';
/** How late the slow page of a race hears the server. */
const SLOW_DOWN_MS = 800;

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
    for (const c of times) {
      assert.ok(c.frames >= 1, 'shown no earlier than the frame after the click');
      // Not after the commit's round trip: in the first frames after the click.
      assert.ok(c.frames <= 3, `shown ${c.frames} frames (${c.ms.toFixed(0)} ms) after the click`);
    }
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
    assert.ok(b.all.ms < RTT_MS, `all ten shown ${b.all.ms.toFixed(0)} ms after the first click, before any commit returned`);
    assert.ok(b.local.frames <= 3, `the page-only handler waited ${b.local.frames} frames behind the commits in flight`);
    assert.equal(dbCount(), b.start + 10, 'each click counted once in the database');
    assert.equal(await shownCount(page), b.start + 10, 'and on the page');
    assert.equal(await page.evaluate(() => window.latency.localCount()), 1);
    // Conflicts are not asserted: pipelined commits of one page do not conflict with each
    // other, but another test's leftovers could.
    t.diagnostic(`aborts: ${JSON.stringify(await page.evaluate(() => window.latency.aborts))}`);
    assert.deepEqual(page.problems, []);
  });
});

describe(`two pages racing on one counter, one of them slow to hear back`, () => {
  let fast;
  let slow;
  const dbCount = () => Number(sql(RACE_DB, "SELECT n FROM counters WHERE name = 'clicks'"));

  before(async () => {
    const app = makeApp(counterAppFiles(), null);
    stops.push(() => rmSync(app, { recursive: true, force: true }));
    const { server, proxy } = await slowServer(app, RACE_DB);
    // The slow page hears the server SLOW_DOWN_MS late: its cache is stale for that long.
    const late = await startDelayProxy(server.port, { upMs: ONE_WAY_MS, downMs: SLOW_DOWN_MS });
    stops.push(() => late.close());
    fast = await openPage(await browser.newContext(), proxy.url);
    slow = await openPage(await browser.newContext(), late.url);
    for (const page of [fast, slow]) await ready(page);
  });

  test("the loser's pipelined handlers are undone latest first, run again, and both pages converge", async () => {
    // Between its bumps the slow page runs two page-only handlers: `note` changes the same
    // list and state entry as the bumps, so the cascade undoes it in its place and runs it
    // again; `tick` changes only its own node, so the cascade leaves it alone.
    const start = dbCount();
    await slow.evaluate(async () => {
      const m = await mjolnir.ready;
      window.aborts = [];
      m.on('abort', (e) => window.aborts.push(e.reason));
      const list = document.createElement('ol');
      list.id = 'bumps';
      document.body.append(list);
      // Each bump shows, in the page's DOM and state, the count it made.
      window.bump = m.atomic(() => {
        const c = m.table('counters').find('clicks');
        c.n += 1;
        const li = document.createElement('li');
        li.textContent = String(c.n);
        list.append(li);
        m.state.bumps = [...(m.state.bumps ?? []), c.n];
      });
      window.runs = { note: 0, tick: 0 };
      window.note = m.atomic(() => {
        window.runs.note += 1;
        const li = document.createElement('li');
        li.textContent = 'note';
        list.append(li);
        m.state.bumps = [...(m.state.bumps ?? []), 'note'];
      });
      const ticks = document.createElement('span');
      ticks.id = 'ticks';
      ticks.textContent = '0';
      document.body.append(ticks);
      window.tick = m.atomic(() => {
        window.runs.tick += 1;
        ticks.textContent = String(Number(ticks.textContent) + 1);
      });
    });
    // The fast page commits first; the slow one has not heard of it when it bumps.
    await fast.evaluate(() => document.getElementById('shared').click());
    await until(dbCount, (n) => n === start + 1, { what: 'the fast commit', timeoutMs: 10_000 });
    const shown = await slow.evaluate(async () => {
      const done = [window.bump(), window.note(), window.tick(), window.bump(), window.bump()];
      window.settled = Promise.all(done);
      await new Promise((r) => requestAnimationFrame(() => r()));
      return {
        list: [...document.querySelectorAll('#bumps li')].map((li) => li.textContent),
        pending: document.getElementById('count').hasAttribute('data-mjolnir-pending'),
      };
    });
    // At once, on what the slow page knew: its own three, speculatively.
    assert.deepEqual(shown.list, [start + 1, 'note', start + 2, start + 3].map(String));
    assert.equal(shown.pending, true, 'the count is marked pending');

    await slow.evaluate(async () => {
      await window.settled;
      await new Promise((r) => requestAnimationFrame(() => r())); // templates render per frame
    });
    const end = await slow.evaluate(() => ({
      list: [...document.querySelectorAll('#bumps li')].map((li) => li.textContent),
      state: mjolnir.state.bumps.map(String),
      runs: window.runs,
      ticks: document.getElementById('ticks').textContent,
      aborts: window.aborts,
      pending: document.getElementById('count').hasAttribute('data-mjolnir-pending'),
    }));
    assert.ok(end.aborts.includes('conflict'), `the first bump conflicted: ${JSON.stringify(end.aborts)}`);
    // Undone (DOM and state) and run again on the fast page's commit: no trace of the
    // first runs, each count once; the note once, in DOM and state alike (undone out of
    // order, the first bump's undo would have put back the state from before the note).
    assert.deepEqual(end.list.filter((x) => x !== 'note'), [start + 2, start + 3, start + 4].map(String));
    assert.equal(end.list.filter((x) => x === 'note').length, 1);
    assert.deepEqual(end.state, end.list);
    assert.deepEqual(end.runs, { note: 2, tick: 1 }, 'the note ran again, the tick did not');
    assert.equal(end.ticks, '1');
    assert.equal(end.pending, false);
    assert.equal(dbCount(), start + 4);
    for (const page of [fast, slow]) {
      await until(() => shownCount(page), (n) => n === start + 4, { what: 'the pages to converge', timeoutMs: 10_000 });
      assert.deepEqual(page.problems, []);
    }
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

  test('a send() run again after a conflict moves the amount typed when it was clicked', async () => {
    const { server, proxy: near } = await slowServer(join(repo, 'examples', 'bank'), BANK_FORM_DB);
    // Alice hears the server late, so her cache misses bob's transfer to her for a while.
    const late = await startDelayProxy(server.port, { upMs: ONE_WAY_MS, downMs: SLOW_DOWN_MS });
    stops.push(() => late.close());
    const alice = await openPage(await browser.newContext(), `${late.url}/?user=alice`);
    const bob = await openPage(await browser.newContext(), `${near.url}/?user=bob`);
    for (const page of [alice, bob]) {
      await until(() => shownBalance(page), (b) => Number.isFinite(b), { what: 'a balance', timeoutMs: 30_000 });
    }
    const balancesIn = (db) => Object.fromEntries(sql(db, 'SELECT name, balance FROM users ORDER BY name').split('\n')
      .map((l) => l.split('|')).map(([n, b]) => [n, Number(b)]));
    const start = balancesIn(BANK_FORM_DB);
    await alice.evaluate(async () => {
      const m = await mjolnir.ready;
      window.aborts = [];
      m.on('abort', (e) => window.aborts.push(e.reason));
    });
    // Bob's row in alice's cache, so that her send runs to its end at the click.
    await until(() => alice.evaluate(() => mjolnir.table('users').find('bob')?.balance ?? null),
      (b) => b === start.bob, { what: "bob's row on alice's page", timeoutMs: 10_000 });
    await bob.evaluate(() => {
      document.getElementById('to').value = 'alice';
      document.getElementById('amount').value = '1';
      document.querySelector('input[type=submit]').click();
    });
    await until(() => balancesIn(BANK_FORM_DB).alice, (b) => b === start.alice + 1, { what: "bob's transfer" });
    // Alice sends 10, then the box changes while her commit is out (it will conflict).
    await alice.evaluate(() => {
      document.getElementById('to').value = 'bob';
      document.getElementById('amount').value = '10';
      document.querySelector('input[type=submit]').click();
      document.getElementById('amount').value = '99';
    });
    await until(() => balancesIn(BANK_FORM_DB).alice, (b) => b !== start.alice + 1, { what: "alice's transfer", timeoutMs: 10_000 });
    const end = balancesIn(BANK_FORM_DB);
    assert.equal(end.alice, start.alice + 1 - 10, 'the amount typed at the click, not what the box held at the re-run');
    assert.equal(end.bob, start.bob - 1 + 10);
    const aborts = await alice.evaluate(() => window.aborts);
    assert.ok(aborts.includes('conflict'), `alice's send ran again after a conflict: ${JSON.stringify(aborts)}`);
    await until(() => shownBalance(alice), (b) => b === end.alice, { what: "alice's page", timeoutMs: 10_000 });
    assert.deepEqual(alice.problems, []);
  });
});
