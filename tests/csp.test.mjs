// A page served with a strict Content-Security-Policy (no inline scripts, no eval) still
// renders its {{ }} templates and runs its handlers as transactions: templates are parsed
// and evaluated in Rust, and nothing in the runtime uses eval or new Function.
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
<script>window.inlineRan = true;</script>
</body></html>`,
  'app.js': `document.addEventListener('DOMContentLoaded', function () {
  document.getElementById('give').addEventListener('click', function () {
    var me = mjolnir.table('users').find(mjolnir.user);
    var bob = mjolnir.table('users').find('bob');
    me.balance -= 1;
    bob.balance += 1;
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

  await page.click('#give');
  await until(() => text('balance'), (t) => t === 'Balance: 99', { what: 'the new balance' });
  await until(() => sql(DB, "SELECT balance FROM users WHERE name = 'alice'"), (b) => b === '99', { what: 'the commit' });
  assert.equal(sql(DB, "SELECT balance FROM users WHERE name = 'bob'"), '101');

  // The policy was in force (the inline script was blocked) and only that was blocked.
  assert.equal(await page.evaluate(() => window.inlineRan), undefined);
  const violations = await page.evaluate(() => window.violations);
  assert.deepEqual(violations, ['script-src-elem inline']);
  assert.deepEqual(errors, []);
  await context.close();
});
