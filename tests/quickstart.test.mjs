// The README's <script> quick start, taken from the README itself: its migration and its
// page make an app whose button, clicked in one browser, updates the other one live.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { freshDatabase, launchBrowser, makeApp, openPage, repo, sql, startServer, until } from './support/harness.mjs';

const DB = 'js_quickstart_test';
const readme = readFileSync(join(repo, 'README.md'), 'utf8');
/** The README's code block whose first line is `firstLine`. */
function block(firstLine) {
  const start = readme.indexOf(`\n${firstLine}\n`);
  assert.ok(start > 0, `README has a block starting with ${firstLine}`);
  return readme.slice(start + 1, readme.indexOf('\n```', start));
}

let server;
let browser;

before(async () => {
  const app = makeApp({
    'migrations/0001_counter.sql': block('-- app/migrations/0001_counter.sql'),
    'index.html': block('<!-- app/index.html -->'),
  }, null);
  server = await startServer(app, freshDatabase(DB));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('the README’s static-page quick start counts clicks across browsers', async () => {
  const one = await openPage(await browser.newContext(), server.url);
  const two = await openPage(await browser.newContext(), server.url);
  const shown = (page) => page.locator('p').innerText();
  for (const page of [one, two]) {
    await until(() => shown(page), (t) => t === 'Clicked 0 times, by everyone.', { what: 'the count' });
  }
  await one.click('button');
  await one.click('button');
  await two.click('button');
  for (const page of [one, two]) {
    await until(() => shown(page), (t) => t === 'Clicked 3 times, by everyone.', { what: 'three clicks' });
  }
  assert.equal(sql(DB, "SELECT n FROM counters WHERE name = 'clicks'"), '3');
  assert.deepEqual([...one.problems, ...two.problems], []);
});
