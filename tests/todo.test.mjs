// The shared todo list (examples/todo), as its users would use it: pages in headless
// Chromium against `mjolnir dev` and a real PostgreSQL. Its list is a list template over a
// live query; it shows inserts from several pages at once, deletes, row-level security and
// mjolnir.state.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { freshDatabase, launchBrowser, openPage, repo, sql, startServer, until } from './support/harness.mjs';
import { startDelayProxy } from './support/delay-proxy.mjs';
import { join } from 'node:path';

const DB = 'js_todo_test';
let server;
let browser;

/** The items a page lists, in order: { title, done, by, visible }. */
const items = (page) =>
  page.$$eval('#todos li', (lis) => lis.map((li) => ({
    title: li.querySelector('.title').textContent,
    done: li.dataset.done,
    by: li.querySelector('small').textContent,
    visible: li.offsetParent !== null,
  })));
const titles = async (page) => (await items(page)).map((i) => i.title);

/** The page's summary line, rendered from `{{ state.filter }}`, two counts and `{{ state.added }}`. */
const summary = async (page) => (await page.locator('#summary').innerText()).replace(/\s+/g, ' ');

/** Rows in the database itself. */
const rows = () => {
  const out = sql(DB, "SELECT id, title, done, created_by FROM todos ORDER BY title");
  return out ? out.split('\n').map((l) => l.split('|')).map(([id, title, done, by]) => ({ id, title, done: done === 't', by })) : [];
};
/** The titles in the list's order: the query's, `created` then the key. */
const inOrder = () => sql(DB, 'SELECT title FROM todos ORDER BY created, id').split('\n').filter(Boolean);

/** Opens the list as `user` in its own browser context, once the list has loaded; `base`
 * is the server's address, or a delay proxy's in front of it. */
async function todoPage(user, base = server.url) {
  const context = await browser.newContext();
  const page = await openPage(context, `${base}/?user=${user}`);
  await until(() => summary(page), (s) => /Showing all of \d+ items, \d+ open; you added 0\./.test(s), { what: `${user}'s list` });
  // Every transaction's outcome, for the assertions.
  await page.evaluate(() => {
    window.aborts = [];
    window.commits = 0;
    mjolnir.on('abort', (e) => window.aborts.push(e.reason));
    mjolnir.on('commit', () => { window.commits += 1; });
  });
  return page;
}

/** What a user does: type a title and press Enter. */
async function typeTodo(page, title) {
  await page.fill('#title', title);
  await page.press('#title', 'Enter');
}

const itemNamed = (page, title) => page.locator('#todos li', { has: page.locator('.title', { hasText: title }) });
const settled = (page) => until(() => page.evaluate(() => mjolnir.pending), (n) => n === 0, { what: 'the page’s transactions to finish' });

/** A failed handler in automatic mode is also an unhandled rejection: the one problem a refusal may leave. */
const unexpected = (page, allowed = /^$/) => page.problems.filter((p) => !allowed.test(p));

before(async () => {
  server = await startServer(join(repo, 'examples', 'todo'), freshDatabase(DB));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

describe('the shared todo list', () => {
  test('an item alice types shows up on bob’s page live; bob ticks it off and alice sees it', async () => {
    const alice = await todoPage('alice');
    const bob = await todoPage('bob');
    await bob.evaluate(() => { window.notReloaded = true; });

    await typeTodo(alice, 'buy milk');
    for (const page of [bob, alice]) {
      assert.deepEqual(await until(() => titles(page), (t) => t.length === 1, { what: 'the item' }), ['buy milk']);
    }
    assert.equal(await alice.inputValue('#title'), '', 'the box is emptied');
    assert.deepEqual((await items(bob))[0], { title: 'buy milk', done: 'false', by: 'alice', visible: true });
    await until(() => summary(alice), (s) => /of 1 items, 1 open; you added 1\./.test(s), { what: 'alice’s summary' });
    await until(() => summary(bob), (s) => /of 1 items, 1 open; you added 0\./.test(s), { what: 'bob’s summary' });

    await itemNamed(bob, 'buy milk').locator('.tick').click();
    await until(async () => (await items(alice))[0].done, (d) => d === 'true', { what: 'the tick on alice’s page' });
    assert.equal(await itemNamed(alice, 'buy milk').locator('.tick').innerText(), '☑');
    await until(() => summary(alice), (s) => /of 1 items, 0 open;/.test(s), { what: 'the open count' });

    const [{ id, ...row }] = rows();
    assert.deepEqual(row, { title: 'buy milk', done: true, by: 'alice' });
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/, 'the page made a uuid key');
    assert.equal(await itemNamed(alice, 'buy milk').getAttribute('data-id'), id, 'each item names its row');
    assert.equal(await bob.evaluate(() => window.notReloaded), true);
    assert.deepEqual([...alice.problems, ...bob.problems], []);
    assert.deepEqual([...await alice.evaluate(() => window.aborts), ...await bob.evaluate(() => window.aborts)], []);
    await alice.context().close();
    await bob.context().close();
  });

  test('three pages: what each one adds shows up live on all three, in one order', async () => {
    const users = ['alice', 'bob', 'carol'];
    const pages = [];
    for (const user of users) pages.push(await todoPage(user));
    const before = await titles(pages[0]);
    for (const [i, page] of pages.entries()) {
      await typeTodo(page, `from ${users[i]}`);
    }
    const added = users.map((u) => `from ${u}`);
    for (const page of pages) {
      await until(() => titles(page), (t) => added.every((a) => t.includes(a)), { what: 'every page’s item' });
    }
    // All three settle on the server's order: the query's.
    for (const page of pages) await settled(page);
    const order = inOrder();
    assert.deepEqual(order.slice(0, before.length), before);
    for (const page of pages) {
      assert.deepEqual(await until(() => titles(page), (t) => t.join() === order.join(), { what: 'the server’s order' }), order);
    }
    assert.deepEqual(pages.flatMap((p) => p.problems), []);
    for (const page of pages) await page.context().close();
  });

  test('10 inserts from each of two pages at once: all 20 kept, with no conflict between them', async (t) => {
    const before = rows().length;
    const pages = [await todoPage('alice'), await todoPage('bob')];
    // All 20 fired at once. An insert reads nothing (the list is a query the server keeps,
    // not a value the handlers rewrite), so nothing two pages do here can conflict.
    const results = await Promise.all(pages.map((page, p) => page.evaluate(async (who) => {
      const adds = Array.from({ length: 10 }, (_, i) => mjolnir.atomic(addTodo)(`${who} ${String(i).padStart(2, '0')}`));
      return (await Promise.allSettled(adds)).map((r) => (r.status === 'fulfilled' ? 'ok' : `${r.reason.name}: ${r.reason.message}`));
    }, ['alice', 'bob'][p])));
    assert.deepEqual(results, [Array(10).fill('ok'), Array(10).fill('ok')]);
    const outcomes = await Promise.all(pages.map((p) => p.evaluate(() => ({ aborts: window.aborts, commits: window.commits }))));
    t.diagnostic(`commits per page: ${outcomes.map((o) => o.commits)}; aborts: ${outcomes.flatMap((o) => o.aborts)}`);
    assert.deepEqual(outcomes.flatMap((o) => o.aborts), [], 'no conflict, no retry, no refusal');
    assert.deepEqual(outcomes.map((o) => o.commits), [10, 10], 'each insert committed once, at its first attempt');

    const expected = ['alice', 'bob'].flatMap((who) => Array.from({ length: 10 }, (_, i) => `${who} ${String(i).padStart(2, '0')}`));
    assert.equal(rows().length, before + 20);
    const order = inOrder();
    for (const page of pages) {
      const shown = await until(() => titles(page), (s) => s.join() === order.join(), { what: 'all 20 items, in the server’s order' });
      assert.deepEqual(shown.filter((s) => / \d\d$/.test(s)).sort(), expected);
      assert.equal(await page.evaluate(() => mjolnir.state.added), 10);
      await until(() => summary(page), (s) => new RegExp(`of ${before + 20} items, \\d+ open; you added 10\\.`).test(s), { what: 'the summary' });
    }
    assert.deepEqual(pages.flatMap((p) => p.problems), []);
    for (const page of pages) await page.context().close();
  });

  // The item shows at once (pending), and stays through its commit: the reply comes a
  // moment before the push that brings the query's new result. Through a proxy adding 50 ms
  // each way, as a user far from the server sees it: localhost would hide a gap.
  test('an item added shows in the next frame and never leaves the list on its way to the server', async () => {
    const proxy = await startDelayProxy(server.port, { upMs: 50, downMs: 50 });
    const alice = await todoPage('alice', proxy.url);
    const report = await alice.evaluate(async () => {
      const out = [];
      for (let i = 0; i < 10; i += 1) {
        const title = `steady ${i}`;
        const frames = [];
        const has = () => Array.from(document.querySelectorAll('#todos .title')).some((el) => el.textContent === title);
        let committed = false;
        const started = performance.now();
        let took = 0;
        const done = mjolnir.atomic(addTodo)(title).then(() => { committed = true; took = performance.now() - started; });
        // Sampled at every frame until 5 frames after the commit.
        await new Promise((resolve) => {
          let after = 0;
          const frame = () => {
            frames.push(has() ? 1 : 0);
            if (committed) after += 1;
            if (after >= 5) resolve(); else requestAnimationFrame(frame);
          };
          requestAnimationFrame(frame);
        });
        await done;
        out.push({ frames: frames.join(''), took });
      }
      return out;
    });
    const said = JSON.stringify(report);
    for (const { frames, took } of report) {
      assert.match(frames, /^1+$/, `shown from the first frame on, every frame: ${said}`);
      // The commit took the proxy's round trip, and every frame meanwhile showed the item.
      assert.ok(took >= 100, `the commit returned after a round trip: ${said}`);
    }
    await alice.context().close();
    await proxy.close();
  });

  test('the creator deletes an item everywhere; anyone else’s delete is refused and changes nothing', async () => {
    const alice = await todoPage('alice');
    const bob = await todoPage('bob');
    await typeTodo(alice, 'alice’s chore');
    await typeTodo(bob, 'bob’s chore');
    for (const page of [alice, bob]) {
      await until(() => titles(page), (t) => t.includes('alice’s chore') && t.includes('bob’s chore'), { what: 'both chores' });
    }
    const start = rows();

    // Alice deletes her own item: gone on both pages and from the table.
    const mine = start.find((r) => r.title === 'alice’s chore');
    await itemNamed(alice, 'alice’s chore').locator('.delete').click();
    for (const page of [alice, bob]) {
      await until(() => titles(page), (t) => !t.includes('alice’s chore'), { what: 'the deleted item to go' });
    }
    assert.deepEqual(rows(), start.filter((r) => r.id !== mine.id));

    // Alice tries to delete bob's: the policy refuses, the page says so, nothing changes
    // (the item, gone from her page at the click, comes back with the rollback).
    const before = { rows: rows(), titles: await titles(alice) };
    await itemNamed(alice, 'bob’s chore').locator('.delete').click();
    await settled(alice);
    assert.match(await alice.locator('#error').innerText(), /^Not done: forbidden: the policies on todos do not let this user delete todos\[/);
    assert.deepEqual(await alice.evaluate(() => window.aborts), ['forbidden']);
    assert.deepEqual(rows(), before.rows);
    assert.deepEqual(await until(() => titles(alice), (t) => t.join() === before.titles.join(), { what: 'bob’s item back' }), before.titles);
    assert.deepEqual(await titles(bob), before.titles);
    assert.deepEqual(unexpected(alice, /policies on todos/), []);
    assert.deepEqual(bob.problems, []);
    await alice.context().close();
    await bob.context().close();
  });

  test('mjolnir.state is part of each transaction: a refused or failed handler leaves it as it was', async () => {
    const alice = await todoPage('alice');
    await typeTodo(alice, 'water plants');
    await itemNamed(alice, 'water plants').locator('.tick').click();
    await until(async () => (await items(alice)).find((i) => i.title === 'water plants')?.done, (d) => d === 'true');
    await typeTodo(alice, 'call mum');
    await until(() => titles(alice), (t) => t.includes('call mum'));
    await settled(alice);

    // The filter is page state: the button's handler sets it (a transaction with nothing
    // to send). Its templates are checked below, after events that re-render them.
    await alice.click('#filters >> text=open');
    assert.equal(await alice.evaluate(() => mjolnir.state.filter), 'open');
    const count = rows().length;
    const stateBefore = await alice.evaluate(() => ({ ...mjolnir.state }));
    assert.deepEqual(stateBefore, { filter: 'open', added: 2 });

    // A title of spaces: addTodo counts it in state.added and empties the box, then the
    // table's CHECK refuses the commit, and all of it is rolled back.
    await typeTodo(alice, '   ');
    await settled(alice);
    assert.match(await alice.locator('#error').innerText(), /^Not done: .*todos_title_check/);
    assert.deepEqual(await alice.evaluate(() => ({ ...mjolnir.state })), stateBefore);
    assert.equal(await alice.inputValue('#title'), '   ', 'the box holds what was typed again');
    // Templates re-render at the next animation frame after the abort, not at once.
    await until(() => summary(alice), (s) => /you added 2\./.test(s), { what: 'the summary to show the rolled-back count' });
    // Too long (201 characters): refused the same way.
    await typeTodo(alice, 'x'.repeat(201));
    await settled(alice);
    assert.deepEqual(await alice.evaluate(() => ({ ...mjolnir.state })), stateBefore);

    // A handler that changes the filter and then throws: the filter stays `open`.
    const thrown = await alice.evaluate(async () => {
      try {
        await mjolnir.atomic(() => { show('done'); addTodo('never'); throw new Error('changed my mind'); })();
        return 'committed';
      } catch (e) {
        return e.message;
      }
    });
    assert.equal(thrown, 'changed my mind');
    assert.deepEqual(await alice.evaluate(() => ({ ...mjolnir.state })), stateBefore);
    // Conflicts aside: the tick, clicked as soon as the new item shows, may run while its
    // insert is in flight and read the row as the page predicted it; the database completes
    // the row (`created_by`), so that dependency fails once and the tick runs again.
    const aborts = await alice.evaluate(() => window.aborts);
    assert.deepEqual(aborts.filter((r) => r !== 'conflict'), ['constraint_violation', 'constraint_violation', 'error']);
    assert.ok(aborts.filter((r) => r === 'conflict').length <= 2, `at most the two early handlers conflict: ${aborts}`);
    assert.equal(rows().length, count, 'nothing reached the database');
    // The aborts re-rendered the templates: they show the filter, and `done` items are
    // hidden under `open` (todo.css, from the list's data-filter template).
    await until(() => summary(alice), (s) => /^Showing open of \d+ items, \d+ open; you added 2\./.test(s), { what: 'the summary after the aborts' });
    assert.equal(await alice.getAttribute('#todos', 'data-filter'), 'open');
    assert.equal(await itemNamed(alice, 'water plants').isVisible(), false);
    assert.equal(await itemNamed(alice, 'call mum').isVisible(), true);

    // A handler that finishes keeps its state change.
    await alice.click('#filters >> text=done');
    assert.equal(await alice.evaluate(() => mjolnir.state.filter), 'done');
    assert.deepEqual(unexpected(alice, /todos_title_check/), []);
    await alice.context().close();
  });

  // A transaction that changes only mjolnir.state sends nothing and brings no commit or
  // change event: the runtime's `state` event re-renders the templates that show it.
  test('clicking a filter re-renders the {{ state.filter }} templates at once', async () => {
    const alice = await todoPage('alice');
    await typeTodo(alice, 'dust shelves');
    await itemNamed(alice, 'dust shelves').locator('.tick').click();
    await until(async () => (await items(alice)).find((i) => i.title === 'dust shelves')?.done, (d) => d === 'true');
    await settled(alice);
    await alice.click('#filters >> text=open');
    try {
      await until(() => summary(alice), (s) => s.startsWith('Showing open'), { what: 'the filter template', timeoutMs: 2_000 });
      assert.equal(await itemNamed(alice, 'dust shelves').isVisible(), false);
      await alice.click('#filters >> text=done');
      await until(() => summary(alice), (s) => s.startsWith('Showing done'), { what: 'the filter template', timeoutMs: 2_000 });
      assert.equal(await itemNamed(alice, 'dust shelves').isVisible(), true);
      assert.deepEqual(alice.problems, []);
    } finally {
      await alice.context().close();
    }
  });
});
