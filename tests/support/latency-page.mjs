// What a user feels: a counter page that measures, inside the page, how long each click
// takes to show. Shared by tests/latency.test.mjs (what must stay true) and
// js/bench/latency.mjs (the figures), usually through the delay proxy (delay-proxy.mjs).
//
// The page loads `latency.js` (INSTRUMENT below) before the Mjölnir drop-in, so that what it
// keeps is untouched by automatic mode: its click listener (capture phase, on window) and
// its timers are not transactions and never wait behind the page's pending handlers.
//
// How "visible" is decided. A click is stamped with its event's `timeStamp` (the
// performance.now() clock) and the number of the last animation frame begun before it.
// `latency.js` wraps `requestAnimationFrame` (the runtime's template renderer calls it
// through the global) and keeps a loop of its own going, so every frame is seen: a frame
// begins at its first callback. A MutationObserver watches the document; after each
// wrapped callback its records are taken at once, so a change made in a frame's callbacks
// (where templates render) counts as shown in that frame, and a change made anywhere else
// (in the click's own task, a reply's) counts as shown in the next frame. A click's time
// to visible is then `frames`, the frames from the click to the one that shows it (1: the
// first frame after the click), and `ms`, from the event's timeStamp to the moment that
// frame began on the main thread (its paint follows within the same frame).

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** `latency.js`: a classic script (latency-instrument.js), loaded before /_mjolnir/mjolnir.js. */
export const INSTRUMENT = readFileSync(join(dirname(fileURLToPath(import.meta.url)), 'latency-instrument.js'), 'utf8');

/** The counter of the README's quick start. */
export const COUNTER_MIGRATION = `
CREATE TABLE counters (name text PRIMARY KEY, n integer NOT NULL);
INSERT INTO counters VALUES ('clicks', 0);
`;

/**
 * The README's counter (its button and template as printed), with ids to find them and a
 * second button whose handler only changes the page.
 */
export const COUNTER_PAGE = `<!doctype html>
<meta charset="utf-8">
<title>Mjölnir latency</title>
<script src="/latency.js"></script>
<script src="/_mjolnir/mjolnir.js"></script>
<p>Clicked <span id="count">{{ table('counters').find('clicks').n }}</span> times, by everyone.</p>
<button id="shared" onclick="mjolnir.table('counters').find('clicks').n += 1">Click</button>
<button id="local" onclick="var o = document.getElementById('local-count'); o.textContent = Number(o.textContent) + 1">Only here</button>
<span id="local-count">0</span>
`;

/** The app's files, for harness.makeApp(files, null). */
export const counterAppFiles = () => ({
  'migrations/0001_counter.sql': COUNTER_MIGRATION,
  'index.html': COUNTER_PAGE,
  'latency.js': INSTRUMENT,
});

/** Waits until the page is connected and shows the counter; returns { count }. */
export const ready = (page) => page.evaluate(() => window.latency.ready(30_000));

/** The count the page shows. */
export const shownCount = (page) => page.evaluate(() => window.latency.count());

/**
 * Clicks the shared counter `n` times, one at a time (each after the previous one is
 * visible and committed, then gapMs plus up to a frame), and returns each click's time to
 * visible: [{ frames, ms }], frames counted from the click (1: the first frame after it).
 */
export const clickTimes = (page, n, { gapMs = 30 } = {}) =>
  page.evaluate(([n, gapMs]) => window.latency.single(n, gapMs), [n, gapMs]);

/**
 * `n` clicks in one go, then (withLocal) one on the page-only handler: see `burst` in
 * INSTRUMENT. Returns { start, first, all, allFromLastClickMs, committedMs, local }.
 */
export const burst = (page, n, { withLocal = false, gapMs = 30 } = {}) =>
  page.evaluate(([n, withLocal, gapMs]) => window.latency.burst(n, withLocal, gapMs), [n, withLocal, gapMs]);

/** Commits per second under continuous clicking: see `sustain` in INSTRUMENT. */
export const sustain = (page, { seconds = 3, warmupMs = 500, maxOutstanding = 50 } = {}) =>
  page.evaluate(([s, w, m]) => window.latency.sustain(s, w, m), [seconds, warmupMs, maxOutstanding]);

/** The p-th percentile (0–100) of `values`, nearest rank. */
export function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}
