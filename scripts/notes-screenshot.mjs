// Takes docs/notes.png: the notes example (examples/notes) searching for "database" while
// another user posts a matching note, in headless Chromium against `mjolnir dev`, with the
// end-to-end tests' harness. Anyone can run it again after a change to the example:
//
//   node js/build.mjs && cargo build -p mjolnir-server && node scripts/notes-screenshot.mjs
//
// It needs what the end-to-end tests need (scripts/setup.sh installs it: Chromium,
// tests/node_modules). PostgreSQL: MJOLNIR_TEST_DATABASE_URL if set, else a private
// cluster, removed at exit; the binary: MJOLNIR_BIN, else the checkout's debug build.
import { join } from 'node:path';
import { startPostgres } from '../js/bench/postgres.mjs';

if (!process.env.MJOLNIR_TEST_DATABASE_URL) {
  process.env.MJOLNIR_TEST_DATABASE_URL = await startPostgres();
}
// Imported only now: the harness reads the database URL when it loads.
const { freshDatabase, launchBrowser, openPage, repo, startServer, until } = await import('../tests/support/harness.mjs');

const server = await startServer(join(repo, 'examples', 'notes'), freshDatabase('mjolnir_notes_screenshot'));
const browser = await launchBrowser();
try {
  const notes = (page) => page.$$eval('#notes li', (lis) => lis.length);
  const open = async (user) => {
    const page = await openPage(await browser.newContext({ viewport: { width: 1280, height: 720 } }), `${server.url}/?user=${user}`);
    await until(() => notes(page), (n) => n >= 5, { what: `${user}'s notes` });
    return page;
  };
  const alice = await open('alice');
  const bob = await open('bob');
  await alice.fill('#q', 'database');
  await until(() => notes(alice), (n) => n === 2, { what: 'the search results' });
  await bob.fill('#note', 'Database backups now run at midnight, not at 2am.');
  await bob.press('#note', 'Enter');
  await until(() => notes(alice), (n) => n === 3, { what: 'bob’s note in alice’s results' });
  await until(() => alice.evaluate(() => mjolnir.pending + document.querySelectorAll('[data-mjolnir-pending]').length), (n) => n === 0);
  const out = join(repo, 'docs', 'notes.png');
  await alice.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await server.stop();
}
