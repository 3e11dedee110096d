// The package as a user gets it: `npm pack`, installed offline into a fresh project, then
// loaded by a plain ESM page (import map, no bundler, the README's quick start) and by a
// static page with only the
// <script> tag from the tarball. Both commit a transaction against the real server; the
// tarball's TypeScript types resolve through its exports map.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { freshDatabase, launchBrowser, makeApp, openPage, repo, sql, startServer, until } from './support/harness.mjs';

const DB = 'js_packaging_test';
const pkg = join(repo, 'js');
let app;
let server;
let browser;

// The README's npm quick start, as printed there, in a page with an import map.
const readme = readFileSync(join(repo, 'README.md'), 'utf8');
const quickStart = /```js\n(import \{ connect \} from 'mjolnir-web';[\s\S]*?)```/.exec(readme)[1];
const ESM_PAGE = `<!doctype html>
<html><head><meta charset="utf-8">
<script type="importmap">{ "imports": { "mjolnir-web": "./node_modules/mjolnir-web/dist/index.js" } }</script>
<script type="module">
${quickStart}
window.result = 'paid';
</script>
</head><body><p id="balance">{{ table('users').find(user).balance }}</p></body></html>`;

// Nothing but the drop-in from the tarball; the wasm comes from beside it.
const SCRIPT_PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><script src="node_modules/mjolnir-web/dist/mjolnir.js"></script></head>
<body>
<script>document.addEventListener('DOMContentLoaded', function () { window.early = [mjolnir.connection, typeof mjolnir.table]; });</script>
<p id="balance">Balance: {{ table('users').find(user).balance }}</p>
<button onclick="var me = mjolnir.table('users').find(mjolnir.user); me.balance -= 2; mjolnir.table('users').find('bob').balance += 2;">pay bob 2</button>
</body></html>`;

const TYPES_CHECK = `import {
  connect, load, Mjolnir, type ConnectOptions, type ErrorKind, type Key, type QueryBuilder, type RowObject, type ServerMessage,
  type Tx,
} from 'mjolnir-web';

const options: ConnectOptions = { user: 'alice' };
const m: Mjolnir = await connect(options);
await load();
const key: Key = { kind: 'row', table: 'users', pk: 'alice' };
const kind: ErrorKind = 'constraint_violation';
const message: ServerMessage = { type: 'committed', txn: 'x', version: '1' };
m.table('users').find('alice');
const user: string | undefined = m.user;
// @ts-expect-error: not an error kind of the protocol
const wrong: ErrorKind = 'no_such_kind';
// Queries: an immutable builder whose steps and terminals are typed, in both forms.
const rich: QueryBuilder = m.table('users').where({ name: 'alice', nick: null }).where('balance', '>=', 10)
  .where('name', 'in', ['alice', 'bob']).orderBy('balance', 'desc').limit(50);
const rows: RowObject[] = rich.all();
const count: number = m.table('users').where('nick', '!=', null).count();
const later = m.atomic(async (tx: Tx) => (await tx.table('users').orderBy('name').all()).length + (await tx.table('users').count()));
const refused: ErrorKind = 'invalid_query';
// @ts-expect-error: not an operator
m.table('users').where('name', 'like', 'a%');
// @ts-expect-error: an ordering comparison with null matches nothing
m.table('users').where('balance', '<', null);
// @ts-expect-error: the direction is 'asc' or 'desc'
m.table('users').orderBy('balance', 'down');
export { key, kind, message, user, wrong, rows, count, later, refused };
`;

const GLOBAL_CHECK = `/// <reference types="mjolnir-web/global" />
export const ready: Promise<string | undefined> = mjolnir.ready.then((m) => m.user);
export const open: mjolnir.RowObject[] = mjolnir.table('todos').where({ done: false }).orderBy('created').all();
`;

before(async () => {
  app = makeApp({
    'package.json': JSON.stringify({ name: 'consumer', private: true, type: 'module' }),
    'esm.html': ESM_PAGE,
    'script.html': SCRIPT_PAGE,
    'check.ts': TYPES_CHECK,
    'global-check.ts': GLOBAL_CHECK,
    'tsconfig.json': JSON.stringify({
      compilerOptions: {
        module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022', 'dom'],
        strict: true, noEmit: true, skipLibCheck: false,
      },
      files: ['check.ts', 'global-check.ts'],
    }),
  });
  execFileSync('npm', ['pack', '--pack-destination', app], { cwd: pkg, stdio: 'ignore' });
  const tarball = readdirSync(app).find((f) => f.endsWith('.tgz'));
  // --offline: everything must come from the tarball itself (it has no dependencies).
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', `./${tarball}`], { cwd: app, stdio: 'ignore' });
  server = await startServer(app, freshDatabase(DB));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('the tarball holds the built package and nothing else', () => {
  const files = readdirSync(join(app, 'node_modules', 'mjolnir-web', 'dist')).sort();
  for (const f of ['index.js', 'index.d.ts', 'mjolnir.js', 'mjolnir_bg.wasm', 'protocol.d.ts', 'wasm.d.ts', 'global.d.ts']) {
    assert.ok(files.includes(f), `${f} in ${files}`);
  }
  const top = readdirSync(join(app, 'node_modules', 'mjolnir-web')).sort();
  assert.deepEqual(top.filter((f) => !['dist', 'package.json'].includes(f) && !/^(README|LICENSE)/i.test(f)), []);
});

test('its types resolve through the exports map and type-check a consumer', () => {
  const tsc = join(pkg, 'node_modules', 'typescript', 'bin', 'tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', app], { cwd: app, encoding: 'utf8' });
  } catch (e) {
    assert.fail(`tsc failed:\n${e.stdout}${e.stderr}`);
  }
});

test('a plain ESM page runs the README’s npm quick start and commits', async () => {
  const page = await openPage(await browser.newContext(), `${server.url}/esm.html?user=alice`);
  assert.equal(await until(() => page.evaluate(() => window.result), (r) => r !== undefined, { what: 'the commit' }), 'paid');
  assert.equal(sql(DB, "SELECT balance FROM users WHERE name = 'alice'"), '90');
  assert.equal(sql(DB, "SELECT balance FROM users WHERE name = 'bob'"), '110');
  await until(() => page.locator('#balance').innerText(), (t) => t === '90', { what: 'the template' });
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('a static page with only the <script> tag loads the drop-in and commits', async () => {
  const page = await openPage(await browser.newContext(), `${server.url}/script.html?user=carol`);
  await until(() => page.locator('#balance').innerText(), (t) => t === 'Balance: 100', { what: 'the balance' });
  assert.equal(await page.evaluate(() => typeof mjolnir.atomic), 'function');
  await page.click('button');
  await until(() => page.locator('#balance').innerText(), (t) => t === 'Balance: 98', { what: 'the new balance' });
  await until(() => sql(DB, "SELECT balance FROM users WHERE name = 'carol'"), (b) => b === '98', { what: 'the commit' });
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('a handler that fires before the wasm has loaded runs, as a transaction, once it has', async () => {
  const context = await browser.newContext();
  // Hold the wasm back, so DOMContentLoaded surely fires before the runtime exists.
  await context.route('**/mjolnir_bg.wasm', async (route) => {
    await new Promise((r) => setTimeout(r, 500));
    await route.continue();
  });
  const page = await openPage(context, `${server.url}/script.html?user=carol`);
  const early = await until(() => page.evaluate(() => window.early), (e) => e !== undefined, { what: 'the early handler' });
  // It ran once the runtime was the global: a plain call would have seen the placeholder.
  assert.equal(early[1], 'function');
  assert.notEqual(early[0], 'loading');
  assert.deepEqual(page.problems, []);
  await context.close();
});
