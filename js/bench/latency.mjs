// What a user feels over a real network: the README's counter in headless Chromium, served
// by `mjolnir dev` through the delay proxy (tests/support/delay-proxy.mjs) at a 100 ms
// round trip (50 ms each way), measured inside the page (tests/support/latency-page.mjs:
// clicks dispatched with element.click(), from each event's timeStamp to the animation
// frame that first shows the new value).
//
//   node js/bench/latency.mjs [--quick] [--rtt MS]   (build js/dist first: node js/build.mjs)
//
// 1. one click at a time: time to visible, median and p99 (each click after the one
//    before is visible and committed, then a pause of 30 ms plus up to a frame, at random,
//    so clicks fall at every phase of the frame); the same without the proxy, for reference;
// 2. 10 clicks in one go: until all 10 are visible, until all 10 are committed (commit
//    events), and a page-only handler clicked right after them: its time to visible;
//    checked against the database after each round;
// 3. commits per second one page sustains on the one shared counter, clicking continuously.
// The targets of the rebuilt runtime (issue 14) are printed beside the figures, and so is
// the baseline (js/bench/latency-baseline.json: the runtime before it) when present.
// Prints a table and writes js/bench/latency-results.json and js/bench/latency-results.md.
//
// The server is MJOLNIR_BIN (else target/debug/mjolnir). PostgreSQL:
// MJOLNIR_TEST_DATABASE_URL if set, else a private cluster started here and removed at exit.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDelayProxy } from '../../tests/support/delay-proxy.mjs';
import { burst, clickTimes, counterAppFiles, percentile, ready, sustain } from '../../tests/support/latency-page.mjs';
import { startPostgres } from './postgres.mjs';

const here = dirname(fileURLToPath(import.meta.url));
// The figures of the runtime before issue 14 (a results file of an earlier run, plus a
// `label`), shown beside this run's; absent if the file is.
const baselineFile = join(here, 'latency-baseline.json');
const baseline = existsSync(baselineFile) ? JSON.parse(readFileSync(baselineFile, 'utf8')) : null;
const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const rttMs = argv.includes('--rtt') ? Number(argv[argv.indexOf('--rtt') + 1]) : 100;
const started = Date.now();
const say = (s) => console.log(`latency-bench: [${((Date.now() - started) / 1000).toFixed(0)} s] ${s}`);

const plan = quick
  ? { warmup: 5, single: 40, direct: 20, bursts: 2, sustainSeconds: 1, sustainWarmupMs: 300, maxOutstanding: 50, gapMs: 30 }
  : { warmup: 10, single: 200, direct: 50, bursts: 5, sustainSeconds: 3, sustainWarmupMs: 500, maxOutstanding: 50, gapMs: 30 };

// A stuck page must not hang the run: give up (and stop everything, at exit) after this.
const limitMinutes = quick ? 4 : 10;
const deadline = setTimeout(() => {
  console.error(`latency-bench: gave up after ${limitMinutes} minutes`);
  process.exit(1);
}, limitMinutes * 60_000);
deadline.unref();

const loadBefore = os.loadavg()[0];
if (!process.env.MJOLNIR_TEST_DATABASE_URL) {
  process.env.MJOLNIR_TEST_DATABASE_URL = await startPostgres(say);
}
// Imported only now: the harness reads the database URL when it loads.
const { freshDatabase, launchBrowser, makeApp, openPage, sql, startServer } = await import('../../tests/support/harness.mjs');

const DB = 'mjolnir_latency_bench';
const app = makeApp(counterAppFiles(), null);
const server = await startServer(app, freshDatabase(DB));
const proxy = await startDelayProxy(server.port, { upMs: rttMs / 2, downMs: rttMs / 2 });
const browser = await launchBrowser();
const dbCount = () => Number(sql(DB, "SELECT n FROM counters WHERE name = 'clicks'"));

/** Fails the run if the database and the page disagree on the count: a lost or doubled click. */
async function checkCount(page, expected, what) {
  const [inDb, shown] = [dbCount(), await page.evaluate(() => window.latency.count())];
  if (inDb !== expected || shown !== expected) {
    throw new Error(`${what}: expected ${expected} clicks, the database holds ${inDb} and the page shows ${shown}`);
  }
}

async function done(page) {
  await page.close();
  if (page.problems.length) throw new Error(`the page reported:\n${page.problems.join('\n')}`);
}

const stats = (clicks) => {
  const ms = clicks.map((c) => c.ms);
  const frames = clicks.map((c) => c.frames);
  return {
    n: clicks.length,
    medianMs: percentile(ms, 50), p90Ms: percentile(ms, 90), p99Ms: percentile(ms, 99), maxMs: Math.max(...ms),
    minMs: Math.min(...ms), medianFrames: percentile(frames, 50), p99Frames: percentile(frames, 99),
  };
};

// ---- reference: the same clicks without the proxy ------------------------------------------

say(`reference: ${plan.direct} clicks one at a time, no proxy`);
let page = await openPage(await browser.newContext(), server.url);
let total = (await ready(page)).count;
await clickTimes(page, plan.warmup, { gapMs: plan.gapMs });
const direct = stats(await clickTimes(page, plan.direct, { gapMs: plan.gapMs }));
total += plan.warmup + plan.direct;
await checkCount(page, total, 'without the proxy');
await done(page);

// ---- through the proxy -----------------------------------------------------------------------

page = await openPage(await browser.newContext(), proxy.url);
if ((await ready(page)).count !== total) throw new Error('the page does not show the count');
const frameIntervalMs = await page.evaluate(() => window.latency.frameInterval());

say(`1. ${plan.single} clicks one at a time, at ${rttMs} ms round trip`);
await clickTimes(page, plan.warmup, { gapMs: plan.gapMs });
const singleClicks = await clickTimes(page, plan.single, { gapMs: plan.gapMs });
const single = stats(singleClicks);
total += plan.warmup + plan.single;
await checkCount(page, total, 'after the single clicks');

say(`2. ${plan.bursts} rounds of 10 clicks in one go, then a page-only handler`);
const bursts = [];
for (let r = 0; r < plan.bursts; r++) {
  const b = await burst(page, 10, { withLocal: true, gapMs: plan.gapMs });
  total += 10;
  if (b.start + 10 !== total) throw new Error(`round ${r + 1} started at ${b.start}, expected ${total - 10}`);
  await checkCount(page, total, `after round ${r + 1} of 10 clicks`);
  bursts.push(b);
}
const medianOf = (f) => percentile(bursts.map(f), 50);
const burstSummary = {
  rounds: bursts.length,
  firstVisibleMs: medianOf((b) => b.first.ms),
  allVisibleMs: medianOf((b) => b.all.ms), allVisibleFrames: medianOf((b) => b.all.frames),
  allVisibleFromLastClickMs: medianOf((b) => b.allFromLastClickMs),
  committedMs: medianOf((b) => b.committedMs),
  localMs: medianOf((b) => b.local.ms), localFrames: medianOf((b) => b.local.frames),
};

say(`3. continuous clicking for ${plan.sustainSeconds} s (after ${plan.sustainWarmupMs} ms), at most ${plan.maxOutstanding} clicks not yet committed`);
const sustained = await sustain(page, { seconds: plan.sustainSeconds, warmupMs: plan.sustainWarmupMs, maxOutstanding: plan.maxOutstanding });
total += sustained.clicked;
await checkCount(page, total, 'after continuous clicking');
const aborts = await page.evaluate(() => window.latency.aborts.length);
await done(page);

const chromiumVersion = browser.version();
await browser.close();
await proxy.close();
await server.stop();
rmSync(app, { recursive: true, force: true });

// ---- report ----------------------------------------------------------------------------------

const frame = 1000 / 60;
const targets = {
  medianFrames: { value: single.medianFrames, target: 1, unit: 'frames', what: 'one click, median: the first frame after the click' },
  p99Ms: { value: single.p99Ms, target: 34, unit: 'ms', what: 'one click, p99' },
  burstVisibleFrames: { value: burstSummary.allVisibleFrames, target: 2, unit: 'frames', what: '10 clicks all visible' },
  burstCommittedMs: { value: burstSummary.committedMs, target: 2 * rttMs + 50, unit: 'ms', what: '10 clicks all committed: 2 RTT + 50 ms' },
  commitsPerSecond: { value: sustained.perSecond, target: 200, unit: 'commits/s', what: 'commits per second, one page, one counter', atLeast: true },
};
for (const t of Object.values(targets)) t.met = t.atLeast ? t.value >= t.target : t.value <= t.target;

const machine = {
  cpu: os.cpus()[0]?.model, cores: os.cpus().length, os: `${os.type()} ${os.release()}`, node: process.version,
  chromium: chromiumVersion, server: process.env.MJOLNIR_BIN ?? 'target/debug/mjolnir', loadAverage: [loadBefore, os.loadavg()[0]],
};
const results = {
  date: new Date().toISOString(), mode: quick ? 'quick' : 'full', rttMs, plan, machine, frameIntervalMs,
  direct, single, singleClicks, bursts, burstSummary, sustained, aborts, totalClicks: total, targets,
};
writeFileSync(join(here, 'latency-results.json'), `${JSON.stringify(results, null, 2)}\n`);

const ms = (x) => `${x.toFixed(0)} ms`;
const fr = (x) => `${x} frame${x === 1 ? '' : 's'}`;
const verdict = (t) => (t.met ? 'met' : 'not met');
const command = `node js/bench/latency.mjs${quick ? ' --quick' : ''}${rttMs !== 100 ? ` --rtt ${rttMs}` : ''}`;
const md = [];
md.push(`## What a user feels at a ${rttMs} ms round trip`, '');
md.push(`Measured by \`${command}\` (run by \`scripts/bench.sh\`) on ${results.date.slice(0, 16).replace('T', ' ')} UTC: ` +
  `${machine.cores} cores (${machine.cpu}), ${machine.os} (load average ${machine.loadAverage.map((l) => l.toFixed(1)).join(' before, ')} after), ` +
  `headless Chromium ${chromiumVersion} (frames every ${frameIntervalMs.toFixed(1)} ms), Node ${machine.node}, ` +
  `the server's ${machine.server.includes('/release/') ? 'release' : 'debug'} build. ` +
  `The README's counter (\`<button onclick="mjolnir.table('counters').find('clicks').n += 1">\` and a \`{{ }}\` template showing it) ` +
  `is served by \`mjolnir dev\` through a TCP proxy in the benchmark's process that holds every chunk ${rttMs / 2} ms each way ` +
  '(`tests/support/delay-proxy.mjs`; the page and its WebSocket both go through it). Clicks are dispatched inside the page with ' +
  '`element.click()`; a click\'s time to visible runs from its event\'s `timeStamp` to the start of the animation frame whose ' +
  'rendering first shows the new count, and is also given in frames (1: the first frame after the click; ' +
  '`tests/support/latency-page.mjs` says how the frame is found). After each part the count in the database and on the page ' +
  `must equal the clicks made (${total.toLocaleString('en')} in all; ${aborts} aborts).` +
  (baseline ? ` The baseline is \`js/bench/latency-baseline.json\`: the same command on ${baseline.date.slice(0, 16).replace('T', ' ')} UTC ` +
    `(load average ${baseline.machine.loadAverage.map((l) => l.toFixed(1)).join(' before, ')} after), ${baseline.label}.` : ''), '');
// The figures of one run (this one's, or the baseline's), cell by cell.
const cells = (r) => ({
  median: `${ms(r.single.medianMs)} (${fr(r.single.medianFrames)})`,
  p99: `${ms(r.single.p99Ms)} (${fr(r.single.p99Frames)})`,
  spread: `${ms(r.single.p90Ms)} / ${ms(r.single.minMs)} / ${ms(r.single.maxMs)}`,
  allVisible: `${ms(r.burstSummary.allVisibleMs)} (${fr(r.burstSummary.allVisibleFrames)})`,
  firstVisible: ms(r.burstSummary.firstVisibleMs),
  committed: ms(r.burstSummary.committedMs),
  local: `${ms(r.burstSummary.localMs)} (${fr(r.burstSummary.localFrames)})`,
  perSecond: r.sustained.perSecond.toFixed(1),
  direct: `${ms(r.direct.medianMs)} / ${ms(r.direct.p99Ms)} (${fr(r.direct.medianFrames)} / ${fr(r.direct.p99Frames)})`,
});
const now = cells(results);
const base = baseline ? cells(baseline) : null;
const row = (label, key, target = '', met = '', bold = false) => {
  const b = (x) => (bold ? `**${x}**` : x);
  md.push(`| ${label} | ${b(now[key])} | ${base ? `${base[key]} | ` : ''}${target} | ${met} |`);
};
md.push(`| Measure | This run | ${base ? `Baseline (${baseline.label}) | ` : ''}Target (issue 14) | |`,
  `|---|---:|${base ? '---:|' : ''}---:|---|`);
row(`One click at a time (${single.n} clicks, each after the one before is visible and committed, then ${plan.gapMs} ms plus up to a frame at random): time to visible, median`,
  'median', 'the first frame after the click', verdict(targets.medianFrames), true);
row('… p99', 'p99', '≤ 34 ms', verdict(targets.p99Ms), true);
row('… p90 / min / max', 'spread');
row(`10 clicks in one go (median of ${burstSummary.rounds} rounds): until all 10 are visible, from the first click`,
  'allVisible', 'within 2 frames', verdict(targets.burstVisibleFrames), true);
row('… until the first click\'s effect is visible', 'firstVisible');
row('… until all 10 are committed (commit events)', 'committed', `≤ 2 RTT + 50 ms = ${2 * rttMs + 50} ms`, verdict(targets.burstCommittedMs), true);
row('A page-only handler (it changes the DOM only) clicked right after the 10: its time to visible', 'local',
  '(a page never waits: the first frame)', burstSummary.localFrames <= 1 ? 'met' : 'not met', true);
row(`Commits per second, one page clicking one shared counter continuously (${plan.sustainSeconds} s counted after ${plan.sustainWarmupMs} ms; at most ${plan.maxOutstanding} clicks not yet committed)`,
  'perSecond', '≥ 200', verdict(targets.commitsPerSecond), true);
row(`Reference: one click at a time without the proxy (${direct.n} clicks), median / p99`, 'direct');
md.push('');
md.push(`Rounds of 10 clicks, from the first click (ms): visible ${bursts.map((b) => b.all.ms.toFixed(0)).join(', ')}; ` +
  `committed ${bursts.map((b) => b.committedMs.toFixed(0)).join(', ')}; the page-only handler ${bursts.map((b) => b.local.ms.toFixed(0)).join(', ')}. ` +
  `Continuous clicking made ${sustained.clicked} clicks; the backlog took ${(sustained.drainMs / 1000).toFixed(1)} s more to commit. ` +
  `A frame is ${frame.toFixed(1)} ms at 60 Hz.`, '');
writeFileSync(join(here, 'latency-results.md'), md.join('\n'));

console.log(`\n${md.join('\n')}`);
say(`wrote ${join(here, 'latency-results.json')} and ${join(here, 'latency-results.md')}`);
