// A page served with a strict Content-Security-Policy (no inline scripts, no eval) still
// renders its {{ }} templates, its list templates (data-each over a query) and runs its
// handlers as transactions: templates are parsed and evaluated in Rust, and nothing in the
// runtime uses eval or new Function. A handler inside a list's copy finds its row through
// the copy's data-name (a listener on the list, as pages under such a policy attach them).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { freshDatabase, launchBrowser, makeApp, sql, startServer, until } from './support/harness.mjs';

const DB = 'js_csp_test';
const CSP = "script-src 'self' 'wasm-unsafe-eval'";
let server;
let browser;

const app = makeApp({
  'index.html': `<!doctype html>
<html><head><meta charset="utf-8">
<script src="/_mjolnir/mjolnir.js"></script>
<script src="app.js"></script>
</head><body>
<p id="balance">Balance: {{ table('users').find(user).balance }}</p>
<p id="greeting" title="{{ user }}">{{ user == 'alice' ? 'Hello, ' + user : 'who?' }}</p>
<p id="rich">{{ table('users').find(user).balance > 50 ? 'rich' : 'poor' }}</p>
<button id="give">give bob 1</button>
<p id="count">{{ table('users').where('balance', '>', 100).count() }} above 100</p>
<ul id="users">
  <li data-each="u in table('users').orderBy('balance', 'desc')" data-name="{{ u.name }}"
      class="{{ u.name == user ? 'me' : '' }}">{{ u.name }}: {{ u.balance }} <button class="give">give 1</button></li>
</ul>
<script>window.inlineRan = true;</script>
</body></html>`,
  'app.js': `document.addEventListener('DOMContentLoaded', function () {
  document.getElementById('give').addEventListener('click', function () {
    var me = mjolnir.table('users').find(mjolnir.user);
    var bob = mjolnir.table('users').find('bob');
    me.balance -= 1;
    bob.balance += 1;
  });
  // One listener for every copy, present and future: the copy says whose row it shows.
  document.getElementById('users').addEventListener('click', function (e) {
    var copy = e.target.closest('[data-name]');
    if (!e.target.matches('.give') || !copy) return;
    mjolnir.table('users').find(mjolnir.user).balance -= 1;
    mjolnir.table('users').find(copy.dataset.name).balance += 1;
  });
});`,
});

before(async () => {
  server = await startServer(app, freshDatabase(DB), { args: ['--content-security-policy', CSP] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('a page under a strict CSP renders its templates and commits', async () => {
  const context = await browser.newContext();
  await context.addInitScript(() => {
    window.violations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.violations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const response = await page.goto(`${server.url}/?user=alice`);
  assert.equal(response.headers()['content-security-policy'], CSP);

  const text = (id) => page.locator(`#${id}`).innerText();
  assert.equal(await until(() => text('balance'), (t) => t === 'Balance: 100', { what: 'the balance' }), 'Balance: 100');
  assert.equal(await text('greeting'), 'Hello, alice');
  assert.equal(await page.locator('#greeting').getAttribute('title'), 'alice');
  assert.equal(await text('rich'), 'rich');

  const list = () => page.locator('#users li').evaluateAll((lis) => lis.map((li) => `${li.textContent.trim().replace(/\s+/g, ' ')}${li.className ? ' (' + li.className + ')' : ''}`));
  assert.deepEqual(await until(list, (l) => l.length === 4, { what: 'the list' }),
    ['alice: 100 give 1 (me)', 'bob: 100 give 1', 'carol: 100 give 1', 'dave: 100 give 1']);
  assert.equal(await text('count'), '0 above 100');

  await page.click('#give');
  await until(() => text('balance'), (t) => t === 'Balance: 99', { what: 'the new balance' });
  await until(() => sql(DB, "SELECT balance FROM users WHERE name = 'alice'"), (b) => b === '99', { what: 'the commit' });
  assert.equal(sql(DB, "SELECT balance FROM users WHERE name = 'bob'"), '101');
  await until(list, (l) => l[0] === 'bob: 101 give 1' && l[3] === 'alice: 99 give 1 (me)', { what: 'the list reordered' });
  await until(() => text('count'), (t) => t === '1 above 100', { what: 'the count' });

  // A button in carol's copy: the handler reads whose row from the copy.
  await page.locator('#users li[data-name="carol"] .give').click();
  await until(() => sql(DB, "SELECT balance FROM users WHERE name = 'carol'"), (b) => b === '101', { what: 'the gift to carol' });
  assert.deepEqual(await until(list, (l) => l[1] === 'carol: 101 give 1', { what: 'carol moved up' }),
    ['bob: 101 give 1', 'carol: 101 give 1', 'dave: 100 give 1', 'alice: 98 give 1 (me)']);
  await until(() => text('count'), (t) => t === '2 above 100', { what: 'the count' });

  // The policy was in force (the inline script was blocked) and only that was blocked.
  assert.equal(await page.evaluate(() => window.inlineRan), undefined);
  const violations = await page.evaluate(() => window.violations);
  assert.deepEqual(violations, ['script-src-elem inline']);
  assert.deepEqual(errors, []);
  await context.close();
});
