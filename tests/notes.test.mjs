// Shared notes with a search box (examples/notes), as its users would use it: two pages in
// headless Chromium against `mjolnir dev` and a real PostgreSQL. The list is a list
// template over a live query, the newest notes or the search the box holds: a note posted
// on one page shows up in the other's search results by itself when it matches.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { freshDatabase, launchBrowser, openPage, repo, sql, startServer, until } from './support/harness.mjs';
import { join } from 'node:path';

const DB = 'js_notes_test';
let server;
let browser;

/** The notes a page lists, in order. */
const notes = (page) => page.$$eval('#notes li', (lis) => lis.map((li) => li.querySelector('.body').textContent));
const status = async (page) => (await page.locator('#status').innerText()).replace(/\s+/g, ' ');

/** Opens the notes as `user`, once the list has loaded; records every abort and every read sent. */
async function notesPage(user) {
  const context = await browser.newContext();
  // Every search the page sends, read off its socket: an empty box must send none.
  await context.addInitScript(() => {
    window.searches = [];
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
      try {
        for (const key of JSON.parse(data).keys ?? []) {
          if (key.kind === 'query' && key.search) window.searches.push(key.search.text);
        }
      } catch { /* not JSON */ }
      return send.call(this, data);
    };
  });
  const page = await openPage(context, `${server.url}/?user=${user}`);
  await until(() => notes(page), (n) => n.length >= 5, { what: `${user}'s notes` });
  await page.evaluate(() => {
    window.aborts = [];
    mjolnir.on('abort', (e) => window.aborts.push(e.reason));
  });
  return page;
}

async function post(page, text) {
  await page.fill('#note', text);
  await page.press('#note', 'Enter');
}

const settled = (page) => until(() => page.evaluate(() => mjolnir.pending), (n) => n === 0, { what: 'the page’s transactions to finish' });

before(async () => {
  server = await startServer(join(repo, 'examples', 'notes'), freshDatabase(DB));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

describe('shared notes with search', () => {
  test('the search results update live when a matching note is added on another page', async () => {
    const alice = await notesPage('alice');
    const bob = await notesPage('bob');
    assert.deepEqual((await notes(alice))[0], 'New coffee machine on the third floor: it takes the blue cups only.', 'newest first');
    assert.match(await status(alice), /; 5 notes\./);

    // Alice searches: the two notes about the database, and only those.
    await alice.fill('#q', 'database');
    const found = await until(() => notes(alice), (n) => n.length === 2, { what: 'the search results' });
    assert.deepEqual(found.sort(), [
      'Deploys are frozen during the database migration on Friday evening.',
      'Reminder: the staging database is reset every night at 2am.',
    ]);
    assert.match(await alice.locator('#showing').innerText(), /Notes matching “database”/);

    // Bob, on the newest notes, posts one that matches: it shows in alice's results
    // without her doing anything.
    await post(bob, 'Database backups now run at midnight, not at 2am.');
    await until(() => notes(alice), (n) => n.includes('Database backups now run at midnight, not at 2am.'), { what: 'bob’s note in alice’s results' });
    assert.equal((await notes(alice)).length, 3);
    assert.equal((await notes(bob))[0], 'Database backups now run at midnight, not at 2am.', 'newest first on bob’s page');

    // One that does not match stays out of her results; the count sees it.
    await post(bob, 'Pizza on Friday, order by noon.');
    await until(() => status(alice), (s) => /; 7 notes\./.test(s), { what: 'the count' });
    await settled(bob);
    assert.equal((await notes(alice)).length, 3);
    assert.ok(!(await notes(alice)).includes('Pizza on Friday, order by noon.'));

    // Another word: a new search, live as well.
    await alice.fill('#q', 'friday');
    await until(() => notes(alice), (n) => n.length === 3, { what: 'the notes about Friday' });
    await post(bob, 'Friday demo moved to the big room.');
    await until(() => notes(alice), (n) => n.length === 4 && n.includes('Friday demo moved to the big room.'), { what: 'the new Friday note' });

    // The box emptied (blank is empty): the newest notes again, bob's on top, and no
    // search was ever sent for blank text.
    await alice.fill('#q', '   ');
    await until(() => notes(alice), (n) => n.length === 8 && n[0] === 'Friday demo moved to the big room.', { what: 'the newest notes' });
    assert.match(await alice.locator('#showing').innerText(), /Newest first/);
    const searches = await alice.evaluate(() => window.searches);
    assert.ok(searches.length > 0 && searches.every((s) => s.trim() !== ''), `searches sent: ${JSON.stringify(searches)}`);
    assert.ok(searches.includes('database') && searches.includes('friday'));
    assert.equal(await bob.evaluate(() => window.searches.length), 0, 'bob never searched');

    assert.deepEqual([...await alice.evaluate(() => window.aborts), ...await bob.evaluate(() => window.aborts)], []);
    assert.deepEqual([...alice.problems, ...bob.problems], []);
    assert.equal(sql(DB, 'SELECT count(*) FROM notes'), '8');
    await alice.context().close();
    await bob.context().close();
  });

  test('a note posted shows at the top in the next frame, and a refused one goes away', async () => {
    const alice = await notesPage('alice');
    const first = await alice.evaluate(async () => {
      document.getElementById('note').value = 'Hello from the top';
      mjolnir.atomic(post)();  // as the form's submit runs it
      await new Promise((r) => requestAnimationFrame(r));
      return document.querySelector('#notes li .body').textContent;
    });
    assert.equal(first, 'Hello from the top', 'placed first before the server answered: posted is NULL until then, and NULL sorts first descending');
    await settled(alice);
    assert.equal((await notes(alice))[0], 'Hello from the top');
    assert.equal(sql(DB, "SELECT author FROM notes WHERE body = 'Hello from the top'"), 'alice');

    // A blank note: the CHECK refuses it, the note leaves the list, the box gets its text back.
    const count = (await notes(alice)).length;
    await post(alice, ' ');
    await settled(alice);
    assert.match(await alice.locator('#error').innerText(), /^Not posted: .*notes_body_check/);
    assert.equal(await alice.inputValue('#note'), ' ');
    await until(() => notes(alice), (n) => n.length === count && n[0] === 'Hello from the top', { what: 'the refused note gone' });
    assert.deepEqual(await alice.evaluate(() => window.aborts), ['constraint_violation']);
    assert.deepEqual(alice.problems.filter((p) => !/notes_body_check/.test(p)), []);
    await alice.context().close();
  });
});
