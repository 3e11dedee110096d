// The client half of the benchmarks: the browser runtime in headless Chromium.
//
//   node js/bench/client.mjs [--quick]      (build js/dist first: cd js && node build.mjs)
//
// 1. a handler's cost (10 reads, 2 writes over 1,000 entries): Mjölnir against plain
//    objects, a hand-written immutable spread and Immer;
// 2. rolling back a transaction with mjolnir.state at 1k, 100k and 1M entries;
// 3. the shipped size of js/dist, raw and gzipped;
// 4. the page's heap across 10,000 transactions, and across reads of more distinct rows
//    than the client cache holds.
// Prints a table and writes js/bench/results.json and js/bench/client-results.md.
//
// The page (page.js, bundled here with esbuild) is served by a real `mjolnir dev` (the
// harness's; MJOLNIR_BIN picks the binary), since the row measurements need a server.
// PostgreSQL: MJOLNIR_TEST_DATABASE_URL if set, else a private cluster started here and
// removed at exit.
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';
import { startPostgres } from './postgres.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, '..', 'dist');
const quick = process.argv.includes('--quick');
const started = Date.now();
const say = (s) => console.log(`client-bench: [${((Date.now() - started) / 1000).toFixed(0)} s] ${s}`);

// Batches of at least minBatchMs (the clock is coarse), the median of `batches` kept.
const timing = quick
  ? { minBatchMs: 5, batches: 9, warmup: 2, commits: 50 }
  : { minBatchMs: 20, batches: 31, warmup: 5, commits: 300 };
const STATE_TXNS = 10_000;
// Rows no transaction read before: 30,000 (full) or 12,000, past the cache's 10,000 keys.
// Each transaction waits for a fetch and a commit, a few ms each, hence rows in bunches.
const DISTINCT = quick ? { txns: 400, per: 30 } : { txns: 2_000, per: 15 };
const ROLLBACK_SIZES = [1_000, 100_000, 1_000_000];

// A stuck page must not hang the run: give up (and stop everything, at exit) after this.
const deadline = setTimeout(() => {
  console.error(`client-bench: gave up after ${quick ? 5 : 20} minutes`);
  process.exit(1);
}, (quick ? 5 : 20) * 60_000);
deadline.unref();

const loadBefore = os.loadavg()[0];
if (!process.env.MJOLNIR_TEST_DATABASE_URL) {
  process.env.MJOLNIR_TEST_DATABASE_URL = await startPostgres(say);
}
// Imported only now: the harness reads the database URL when it loads.
const { freshDatabase, launchBrowser, makeApp, startServer, openPage } = await import('../../tests/support/harness.mjs');

// ---- 3. shipped size (no browser needed) -------------------------------------------------

const size = {};
for (const f of ['mjolnir_bg.wasm', 'mjolnir.js', 'index.js']) {
  const bytes = readFileSync(join(dist, f));
  size[f] = { raw: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length };
}
const sum = (a, b) => ({ raw: a.raw + b.raw, gzip: a.gzip + b.gzip });
size.dropIn = sum(size['mjolnir_bg.wasm'], size['mjolnir.js']);
size.npm = sum(size['mjolnir_bg.wasm'], size['index.js']);

// ---- the app: a table of 1,000 rows for part 1, one of 30,000 for part 4 -------------------

const bundle = await esbuild.build({
  entryPoints: [join(here, 'page.js')], bundle: true, format: 'esm', target: 'es2022', write: false,
  logLevel: 'warning', logOverride: { 'empty-import-meta': 'silent', 'duplicate-object-key': 'silent' },
});
const bigRows = DISTINCT.txns * DISTINCT.per;
const app = makeApp({
  'index.html': '<!doctype html><meta charset="utf-8"><title>Mjölnir client benchmark</title>\n' +
    '<script type="module" src="/bench.js"></script>\n',
  'bench.js': bundle.outputFiles[0].contents,
  // The package fetches its wasm from beside the module: beside bench.js here.
  'mjolnir_bg.wasm': readFileSync(join(dist, 'mjolnir_bg.wasm')),
  'migrations/0001_bench.sql': `
    CREATE TABLE items (id integer PRIMARY KEY, f integer NOT NULL, g integer NOT NULL);
    INSERT INTO items SELECT k, k, k FROM generate_series(1, 1000) AS k;
    CREATE TABLE big (id integer PRIMARY KEY, v integer NOT NULL);
    INSERT INTO big SELECT k, k FROM generate_series(1, ${bigRows}) AS k;
  `,
}, null);
const server = await startServer(app, freshDatabase('mjolnir_client_bench'));
// Cross-origin isolation refines performance.now() from 100 µs to 5 µs in Chromium; the
// dev server does not send the headers for it, so they are added on the way to the page.
// A page answered that way has no server address, so Chromium counts it as public and
// would block its WebSocket to 127.0.0.1 (local network access checks): turned off here.
const browser = await launchBrowser({
  args: ['--disable-features=LocalNetworkAccessChecks',
    '--js-flags=--expose-gc'], // page.js collects garbage between timed batches
});
const context = await browser.newContext();
await context.route(`${server.url}/**`, async (route) => {
  const response = await route.fetch();
  await route.fulfill({
    response,
    headers: { ...response.headers(), 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' },
  });
});

/** A new page, connected, with the 1,000 rows of `items` in its cache. */
async function benchPage() {
  const page = await openPage(context, `${server.url}/?user=bench`);
  await page.waitForFunction(() => window.bench);
  page.info = await page.evaluate(() => window.bench.setup());
  return page;
}

/** Closes `page` and fails if it logged an error: a broken run must not look like a fast one. */
async function done(page) {
  await page.close();
  if (page.problems.length) throw new Error(`the page reported:\n${page.problems.join('\n')}`);
}

// ---- 1. per-handler cost ---------------------------------------------------------------------

say('1. per-handler cost');
let page = await benchPage();
const pageInfo = page.info;
const handlers = await page.evaluate((o) => window.bench.handlers(o), timing);
await done(page);

// ---- 2. rollback -------------------------------------------------------------------------------

say('2. rollback at 1k, 100k, 1M entries');
page = await benchPage();
const rollback = await page.evaluate(([sizes, o]) => window.bench.rollback(sizes, o), [ROLLBACK_SIZES, timing]);
await done(page);

// ---- 4. heap -----------------------------------------------------------------------------------

say('4. heap across transactions');
page = await benchPage();
const cdp = await context.newCDPSession(page);
const heap = [];
async function measureHeap(after) {
  await page.evaluate(() => new Promise((r) => setTimeout(r, 50))); // let replies settle
  await cdp.send('HeapProfiler.collectGarbage');
  const { usedSize } = await cdp.send('Runtime.getHeapUsage');
  heap.push({ after, jsHeapUsed: usedSize, wasmMemory: await page.evaluate(() => window.bench.wasmBytes()) });
}
await measureHeap('connected, 1,000 rows cached');
for (let k = 1; k <= 4; k++) {
  await page.evaluate((n) => window.bench.stateTransactions(n), STATE_TXNS / 4);
  await measureHeap(`${(k * STATE_TXNS / 4).toLocaleString('en')} state-only transactions`);
}
for (let k = 1; k <= 4; k++) {
  const rows = await page.evaluate(([n, per]) => window.bench.distinctReads(n, per), [DISTINCT.txns / 4, DISTINCT.per]);
  await measureHeap(`+ ${(k * DISTINCT.txns / 4).toLocaleString('en')} transactions reading ${rows.toLocaleString('en')} distinct rows`);
}
await done(page);

const chromiumVersion = browser.version();
await browser.close();
await server.stop();
rmSync(app, { recursive: true, force: true });

// ---- report --------------------------------------------------------------------------------

const immerVersion = JSON.parse(readFileSync(join(here, '..', 'node_modules', 'immer', 'package.json'), 'utf8')).version;
const machine = {
  cpu: os.cpus()[0]?.model, cores: os.cpus().length, memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  os: `${os.type()} ${os.release()}`, node: process.version, chromium: chromiumVersion, immer: immerVersion,
  crossOriginIsolated: pageInfo.crossOriginIsolated, timerResolutionUs: pageInfo.timerResolutionUs,
  // Other work on the machine skews the figures: the load average (1 min) before and after.
  loadAverage: [loadBefore, os.loadavg()[0]],
};
const ratio = (a, b) => a / b;
const targets = {
  mjolnirOverImmer: { value: ratio(handlers.mjolnirState.us, handlers.immer.us), target: 0.1 },
  mjolnirOverPlain: { value: ratio(handlers.mjolnirState.us, handlers.plain.us), target: 50 },
  rollback1MOver1k: { value: ratio(rollback[1_000_000].us, rollback[1_000].us), target: 2 },
  gzippedKB: { value: size.dropIn.gzip / 1024, target: 150 },
};
for (const t of Object.values(targets)) t.met = t.value <= t.target;
const results = { date: new Date().toISOString(), mode: quick ? 'quick' : 'full', timing, machine, handlers, rollback, size, heap, targets };
writeFileSync(join(here, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);

const us = (x) => (x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : x.toFixed(0));
const kb = (b) => `${(b / 1024).toFixed(1)} KB`;
const mb = (b) => `${(b / 2 ** 20).toFixed(1)} MB`;
const x = (v) => (v < 1 ? v.toFixed(3) : v.toFixed(2));
const verdict = (t) => `${x(t.value)} (target ≤ ${t.target}: ${t.met ? 'met' : `missed by ${x(t.value / t.target)}×`})`;
const spread = (r) => `${us(r.p10)}–${us(r.p90)}`;

const md = [];
md.push('## The browser runtime', '');
md.push(`Measured by \`node js/bench/client.mjs${quick ? ' --quick' : ''}\` on ${results.date.slice(0, 16).replace('T', ' ')} UTC: ` +
  `${machine.cores} cores (${machine.cpu}), ${machine.memoryGiB} GiB, ${machine.os} (load average ${machine.loadAverage.map((l) => l.toFixed(1)).join(' before, ')} after), headless Chromium ${chromiumVersion}, ` +
  `Node ${machine.node}, Immer ${immerVersion}. The page is cross-origin isolated: ${machine.crossOriginIsolated} ` +
  `(performance.now() steps of ${us(machine.timerResolutionUs)} µs). Short calls are timed in batches of at least ` +
  `${timing.minBatchMs} ms, each after a forced garbage collection; each figure is the median of ${timing.batches} batches after ` +
  `${timing.warmup} warm-up batches (p10–p90 of the batches beside it), the variants of a table taking turns batch by batch.`, '');
md.push('### A handler\'s cost', '');
md.push('One handler: 10 reads and 2 writes over 1,000 entries (`{f, g}` objects), the same logic each way.', '');
md.push('| Variant | µs per handler | p10–p90 |', '|---|---:|---:|');
md.push(`| Plain mutable objects | ${us(handlers.plain.us)} | ${spread(handlers.plain)} |`);
md.push(`| Immutable spread (\`{...state, [k]: {...state[k], f: v}}\`) | ${us(handlers.spread.us)} | ${spread(handlers.spread)} |`);
md.push(`| Immer \`produce\` (auto-freeze on) | ${us(handlers.immer.us)} | ${spread(handlers.immer)} |`);
md.push(`| **Mjölnir**: \`mjolnir.atomic\` over \`mjolnir.state\` (the whole transaction; nothing to send) | **${us(handlers.mjolnirState.us)}** | ${spread(handlers.mjolnirState)} |`);
md.push(`| Mjölnir, an empty handler (\`mjolnir.atomic(() => {})\`): the fixed cost of a transaction | ${us(handlers.mjolnirEmpty.us)} | ${spread(handlers.mjolnirEmpty)} |`);
md.push(`| Mjölnir over 1,000 cached table rows, throwing at its end (the whole attempt and its local rollback; nothing sent) | ${us(handlers.mjolnirRowsRolledBack.us)} | ${spread(handlers.mjolnirRowsRolledBack)} |`);
md.push(`| Mjölnir over 1,000 cached table rows, committing: the call until it returns (attempt run, commit sent) | ${us(handlers.mjolnirRowsCommitted.us)} | median of ${handlers.mjolnirRowsCommitted.calls} calls timed one by one; the commit's round trip: ${us(handlers.mjolnirRowsCommitted.roundTripUs)} µs |`);
md.push('', `Mjölnir (\`mjolnir.state\`) / Immer: ${verdict(targets.mjolnirOverImmer)}. Mjölnir / plain: ${verdict(targets.mjolnirOverPlain)}.`, '');
md.push('### Rolling back', '');
md.push('A handler that writes one entry of `mjolnir.state` and throws, so its transaction is rolled back.', '');
md.push('| Entries in `mjolnir.state` | µs per handler | p10–p90 |', '|---:|---:|---:|');
for (const n of ROLLBACK_SIZES) md.push(`| ${n.toLocaleString('en')} | ${us(rollback[n].us)} | ${spread(rollback[n])} |`);
md.push('', `1M / 1k: ${verdict(targets.rollback1MOver1k)}.`, '');
md.push('### Shipped size', '');
md.push('| File | Raw | gzip -9 |', '|---|---:|---:|');
for (const f of ['mjolnir_bg.wasm', 'mjolnir.js', 'index.js']) md.push(`| \`js/dist/${f}\` | ${kb(size[f].raw)} | ${kb(size[f].gzip)} |`);
md.push(`| The \`<script>\` drop-in: wasm + mjolnir.js | ${kb(size.dropIn.raw)} | **${kb(size.dropIn.gzip)}** |`);
md.push(`| The npm package's runtime: wasm + index.js | ${kb(size.npm.raw)} | ${kb(size.npm.gzip)} |`);
md.push('', `The drop-in gzipped, in KB: ${verdict(targets.gzippedKB)}.`, '');
md.push('### The page\'s memory', '');
md.push('After a forced garbage collection (CDP `HeapProfiler.collectGarbage`): the JavaScript heap in use ' +
  '(`Runtime.getHeapUsage`) and the wasm linear memory (which grows and never shrinks, so it is a high-water mark). ' +
  `State-only transactions run the handler above over 1,000 entries; then each transaction reads ${DISTINCT.per} rows ` +
  'no earlier one read (\`mjolnir.atomic(async tx => …)\`: fetched from the server together, then a read-only commit), past the cache\'s bound of 10,000 keys.', '');
md.push('| After | JS heap used | wasm memory |', '|---|---:|---:|');
for (const h of heap) md.push(`| ${h.after} | ${mb(h.jsHeapUsed)} | ${mb(h.wasmMemory)} |`);
md.push('');
writeFileSync(join(here, 'client-results.md'), md.join('\n'));

console.log(`\n${md.join('\n')}`);
say(`wrote ${join(here, 'results.json')} and ${join(here, 'client-results.md')}`);
