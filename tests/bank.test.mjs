// The bank of the paper's Figures 3 and 4 (examples/bank), as its users would use it:
// pages in headless Chromium against `mjolnir dev` and a real PostgreSQL.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { freshDatabase, launchBrowser, openPage, repo, sql, startServer, until } from './support/harness.mjs';
import { join } from 'node:path';

const DB = 'js_bank_test';
const USERS = ['alice', 'bob', 'carol', 'dave'];
let database;
let server;
let browser;

/** The balance the page's `{{ }}` template shows, as a number (NaN while loading). */
const shownBalance = (page) =>
  page.evaluate(() => Number(/Balance: (\S+)/.exec(document.body.innerText)?.[1]));

/** Balances in the database itself. */
const balances = () =>
  Object.fromEntries(sql(DB, 'SELECT name, balance FROM users ORDER BY name').split('\n')
    .map((l) => l.split('|')).map(([n, b]) => [n, Number(b)]));

/** Opens the bank as `user` in its own browser context (its own cookies and storage). */
async function bankPage(user) {
  const context = await browser.newContext();
  const page = await openPage(context, `${server.url}/?user=${user}`);
  await until(() => shownBalance(page), (b) => Number.isFinite(b), { what: `${user}'s balance` });
  return page;
}

/** What a user does: fill in the form of Figure 3 and press its submit button. */
async function submitTransfer(page, to, amount) {
  await page.fill('#to', to);
  await page.fill('#amount', String(amount));
  await page.click('input[type=submit]');
}

/**
 * Runs Figure 4's send() as one transaction and reports how much it moved, so the test
 * knows exactly which transfers committed. Resolves { committed, moved } or { error }.
 */
function sendAtomically(page, to, amount) {
  return page.evaluate(async ([to, amount]) => {
    const run = mjolnir.atomic(function () {
      document.getElementById('to').value = to;
      document.getElementById('amount').value = String(amount);
      const mine = () => mjolnir.table('users').find(mjolnir.user).balance;
      const before = mine();
      send();
      return before - mine();
    });
    try {
      return { committed: true, moved: await run() };
    } catch (e) {
      return { committed: false, error: `${e.name}: ${e.message}` };
    }
  }, [to, amount]);
}

before(async () => {
  database = freshDatabase(DB);
  server = await startServer(join(repo, 'examples', 'bank'), database);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

describe('the bank of Figures 3 and 4', () => {
  test('a transfer from alice shows up on bob’s page live, without a reload', async () => {
    const alice = await bankPage('alice');
    const bob = await bankPage('bob');
    assert.equal(await shownBalance(alice), 100);
    assert.equal(await shownBalance(bob), 100);
    await bob.evaluate(() => { window.notReloaded = true; });
    await alice.evaluate(() => { window.notReloaded = true; });

    await submitTransfer(alice, 'bob', 10);

    assert.equal(await until(() => shownBalance(bob), (b) => b === 110, { what: 'bob at 110' }), 110);
    assert.equal(await until(() => shownBalance(alice), (b) => b === 90, { what: 'alice at 90' }), 90);
    assert.equal(await bob.evaluate(() => window.notReloaded), true, 'bob’s page was not reloaded');
    assert.equal(await alice.evaluate(() => window.notReloaded), true,
      'submitting the form (Figure 3 has no action) did not reload alice’s page');
    assert.match(await alice.locator('#log').innerText(), /committed/);
    assert.deepEqual(balances(), { alice: 90, bob: 110, carol: 100, dave: 100 });
    assert.deepEqual([...alice.problems, ...bob.problems], []);
    await alice.context().close();
    await bob.context().close();
  });

  test('4 users × 25 concurrent transfers: money is conserved and every commit counts', async (t) => {
    const start = balances();
    const pages = await Promise.all(USERS.map(bankPage));
    for (const page of pages) {
      await page.evaluate(() => {
        window.conflicts = 0;
        mjolnir.on('abort', (e) => { if (e.reason === 'conflict') window.conflicts += 1; });
      });
    }
    const moved = [];
    // Each page sends its 25 transfers one after another; the four pages run at once, on
    // overlapping accounts, so their transactions conflict and are retried.
    const results = await Promise.all(pages.map(async (page, i) => {
      const out = [];
      for (let k = 0; k < 25; k++) {
        const to = USERS[(i + 1 + (k % 3)) % 4];
        const amount = 1 + ((i * 7 + k * 5) % 15);
        const r = await sendAtomically(page, to, amount);
        out.push(r);
        if (r.committed) moved.push({ from: USERS[i], to, amount: r.moved });
      }
      return out;
    }));
    const conflicts = (await Promise.all(pages.map((p) => p.evaluate(() => window.conflicts))))
      .reduce((a, b) => a + b, 0);
    t.diagnostic(`${moved.length} transfers committed after ${conflicts} conflicts; ${100 - moved.length} gave up`);
    // Conflicts are retried (10 attempts by default); one that still loses is reported
    // as a ConflictError and changes nothing, which the exact balances below check.
    const failed = results.flat().filter((r) => !r.committed);
    assert.ok(failed.every((r) => r.error.startsWith('ConflictError')), JSON.stringify(failed));
    assert.ok(failed.length <= 5, `${failed.length} transfers gave up: ${JSON.stringify(failed)}`);

    const expected = { ...start };
    for (const m of moved) {
      assert.ok(m.amount === 0 || m.amount > 0);
      expected[m.from] -= m.amount;
      expected[m.to] += m.amount;
    }
    const end = balances();
    assert.deepEqual(end, expected, 'the database reflects exactly the committed transfers');
    assert.equal(Object.values(end).reduce((a, b) => a + b, 0), 400);
    assert.ok(Object.values(end).every((b) => b >= 0), 'no negative balance');
    assert.ok(moved.some((m) => m.amount > 0), 'money moved');
    // Every page converges to the database's figures through pushes.
    for (const [i, page] of pages.entries()) {
      await until(() => shownBalance(page), (b) => b === end[USERS[i]], { what: `${USERS[i]}'s page` });
      assert.deepEqual(page.problems, []);
      await page.context().close();
    }
  });

  test('a transfer larger than the balance changes nothing anywhere', async () => {
    const start = balances();
    const alice = await bankPage('alice');
    const bob = await bankPage('bob');

    // Through the form: Figure 4's check leaves both balances alone.
    await submitTransfer(alice, 'bob', start.alice + 1);
    await until(() => alice.evaluate(() => mjolnir.pending), (n) => n === 0, { what: 'the handler to finish' });
    // Bypassing the check: the database's CHECK (balance >= 0) refuses the commit, the
    // page's optimistic figures are rolled back, and the page says why.
    const bypass = await alice.evaluate(async (amount) => {
      try {
        await mjolnir.atomic(() => {
          mjolnir.table('users').find('alice').balance -= amount;
          mjolnir.table('users').find('bob').balance += amount;
        })();
        return 'committed';
      } catch (e) {
        return `${e.name} ${e.kind ?? ''}: ${e.message}`;
      }
    }, start.alice + 1);
    assert.match(bypass, /constraint_violation|check/i);
    assert.match(await until(() => alice.locator('#log').innerText(), (t) => /not done/.test(t)), /not done: .+/);

    assert.deepEqual(balances(), start);
    assert.equal(await shownBalance(alice), start.alice);
    assert.equal(await shownBalance(bob), start.bob);
    await alice.context().close();
    await bob.context().close();
  });

  test('the server is killed mid-session: the page says so, reconnects, and its pending transfer commits once', async () => {
    const start = balances();
    const alice = await bankPage('alice');
    await until(() => alice.evaluate(() => document.documentElement.dataset.mjolnirConnection), (s) => s === 'open');

    await server.kill();
    const connectionText = () => alice.evaluate(() =>
      [document.documentElement.dataset.mjolnirConnection,
        getComputedStyle(document.querySelector('.connection'), '::after').content]);
    const [state, text] = await until(connectionText, ([s]) => s === 'disconnected', { what: 'the page to notice' });
    assert.equal(state, 'disconnected');
    assert.match(text, /Disconnected/);

    // A transfer made while the server is down waits for it.
    await submitTransfer(alice, 'bob', 5);
    await until(() => alice.evaluate(() => mjolnir.pending), (n) => n === 1, { what: 'a pending transfer' });
    assert.deepEqual(balances(), start, 'nothing reached the database yet');

    server = await startServer(join(repo, 'examples', 'bank'), database, { port: server.port });
    await until(() => alice.evaluate(() => mjolnir.pending), (n) => n === 0, { what: 'the transfer to finish', timeoutMs: 30_000 });
    await until(connectionText, ([s]) => s === 'open', { what: 'the page to reconnect' });
    assert.deepEqual(balances(), { ...start, alice: start.alice - 5, bob: start.bob + 5 }, 'committed exactly once');
    await until(() => shownBalance(alice), (b) => b === start.alice - 5, { what: 'alice’s new balance' });
    await alice.context().close();
  });
});
