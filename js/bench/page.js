// The benchmark page, bundled by client.mjs (esbuild) with the built package and Immer.
// It only measures; client.mjs drives it with page.evaluate and does the reporting.
//
// Timing: headless Chromium coarsens performance.now() (100 µs, 5 µs once the page is
// cross-origin isolated, which client.mjs arranges), so short calls are timed in batches
// long enough for the clock (>= minBatchMs) and divided; the figure kept is the median
// batch, after warm-up batches that let the JIT settle.
import { produce } from 'immer';
// The built npm package as published (js/dist), not its sources.
import { connect, load } from '../dist/index.js';

const ROWS = 1000; // entries of the state, and rows of the `items` table
const ROLLBACK = new Error('roll back'); // thrown to make a transaction abort
const noop = () => {};

// What call i of a handler touches: 10 keys spread over the 1,000, the first two written.
// Precomputed so that no variant pays for building key strings.
const PICKS = Array.from({ length: ROWS }, (_, i) =>
  Array.from({ length: 10 }, (_, j) => (i * 7 + j * 101) % ROWS));
const NAMES = PICKS.map((ks) => ks.map((k) => `k${k}`));
const PKS = PICKS.map((ks) => ks.map((k) => k + 1)); // items.id runs from 1 to 1,000
const entry = (k) => ({ f: k, g: k });

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/**
 * Microseconds per call of each `variants[name](i)`. Each variant's batch size doubles
 * until a batch takes `minBatchMs`; then rounds of one batch per variant (in a rotating
 * order, so no variant always follows the same one and drift hits all alike), the first
 * `warmup` rounds untimed. Each batch starts after a garbage collection and pays for the
 * garbage it makes itself.
 */
function perCall(variants, { minBatchMs, batches, warmup }) {
  const names = Object.keys(variants);
  const size = {};
  const calls = {}; // calls made so far: the next call's i
  const samples = {};
  const batch = (name) => {
    const once = variants[name];
    // Collect the garbage the previous batch left (untimed), so that no variant pays for
    // another's; client.mjs starts Chromium with --expose-gc for this.
    globalThis.gc?.();
    const t0 = performance.now();
    for (let k = 0; k < size[name]; k++) once(calls[name]++);
    return performance.now() - t0;
  };
  for (const name of names) {
    size[name] = 1;
    calls[name] = 0;
    samples[name] = [];
    while (batch(name) < minBatchMs) size[name] *= 2;
  }
  for (let round = -warmup; round < batches; round++) {
    for (let k = 0; k < names.length; k++) {
      const name = names[(k + round + warmup) % names.length];
      const ms = batch(name);
      if (round >= 0) samples[name].push((ms * 1000) / size[name]);
    }
  }
  const out = {};
  for (const name of names) {
    const xs = samples[name].sort((a, b) => a - b);
    out[name] = { us: median(xs), p10: xs[Math.floor(xs.length / 10)], p90: xs[Math.floor((xs.length * 9) / 10)], batch: size[name], batches };
  }
  return out;
}

let mjolnir;

/**
 * Part 1's handler over `mjolnir.state` (which must hold k0 … k999) as a transaction.
 * Values in the state are frozen, so a write assigns a new object, as docs/client.md asks.
 */
function stateHandler() {
  const st = mjolnir.state;
  return mjolnir.atomic((ks, i) => {
    const a = st[ks[0]];
    const b = st[ks[1]];
    let sum = a.f + b.f;
    for (let j = 2; j < 10; j++) sum += st[ks[j]].f;
    st[ks[0]] = { ...a, f: sum & 1023 };
    st[ks[1]] = { ...b, g: i };
  });
}

/** Connects, and loads the `items` rows into the client cache. */
async function setup() {
  mjolnir = await connect();
  // A transaction stops at its first missing key (fetched, then it runs again), so reading
  // 1,000 uncached rows in one would take 1,000 rounds. Reads outside a transaction start
  // loading instead; the transaction then waits for whatever is still missing.
  for (let pk = 1; pk <= ROWS; pk++) mjolnir.table('items').find(pk);
  await mjolnir.atomic(() => {
    for (let pk = 1; pk <= ROWS; pk++) mjolnir.table('items').find(pk);
  })();
  return { user: mjolnir.user, crossOriginIsolated, timerResolutionUs: timerResolution() };
}

/** The smallest step performance.now() takes, in µs. */
function timerResolution() {
  let best = Infinity;
  for (let k = 0; k < 50; k++) {
    const a = performance.now();
    let b;
    do b = performance.now(); while (b === a);
    best = Math.min(best, b - a);
  }
  return best * 1000;
}

/** 1. The same handler (10 reads, 2 writes over 1,000 entries) several ways. */
async function handlers(opts) {
  const variants = {};

  // (b) Plain mutable objects: the floor.
  const plain = {};
  for (let k = 0; k < ROWS; k++) plain[`k${k}`] = entry(k);
  variants.plain = (i) => {
    const ks = NAMES[i % ROWS];
    const a = plain[ks[0]];
    const b = plain[ks[1]];
    let sum = a.f + b.f;
    for (let j = 2; j < 10; j++) sum += plain[ks[j]].f;
    a.f = sum & 1023;
    b.g = i;
  };

  // (c) Hand-written immutable update: copies the 1,000-key object on every call.
  let spread = {};
  for (let k = 0; k < ROWS; k++) spread[`k${k}`] = entry(k);
  variants.spread = (i) => {
    const ks = NAMES[i % ROWS];
    const a = spread[ks[0]];
    const b = spread[ks[1]];
    let sum = a.f + b.f;
    for (let j = 2; j < 10; j++) sum += spread[ks[j]].f;
    spread = { ...spread, [ks[0]]: { ...a, f: sum & 1023 }, [ks[1]]: { ...b, g: i } };
  };

  // (d) Immer, with its defaults (auto-freeze on).
  let immer = {};
  for (let k = 0; k < ROWS; k++) immer[`k${k}`] = entry(k);
  variants.immer = (i) => {
    const ks = NAMES[i % ROWS];
    immer = produce(immer, (d) => {
      const a = d[ks[0]];
      const b = d[ks[1]];
      let sum = a.f + b.f;
      for (let j = 2; j < 10; j++) sum += d[ks[j]].f;
      a.f = sum & 1023;
      b.g = i;
    });
  };

  // (a) Mjölnir over mjolnir.state: the whole transaction runs and finishes inside the
  // call (nothing to send), so this is its full cost.
  const st = mjolnir.state;
  for (let k = 0; k < ROWS; k++) st[`k${k}`] = entry(k);
  const onState = stateHandler();
  variants.mjolnirState = (i) => onState(NAMES[i % ROWS], i);
  // What any transaction costs before the handler does anything.
  const empty = mjolnir.atomic(noop);
  variants.mjolnirEmpty = () => empty();

  // (a') Mjölnir over 1,000 cached rows of `items`: 10 finds, one column read of each,
  // 2 column writes. Such a transaction ends in a commit to the server, and the page's
  // next transaction waits for it; so the local part is timed two ways.
  const rowsHandler = (pks, i) => {
    const t = mjolnir.table('items');
    const a = t.find(pks[0]);
    const b = t.find(pks[1]);
    let sum = a.f + b.f;
    for (let j = 2; j < 10; j++) sum += t.find(pks[j]).f;
    a.f = sum & 1023;
    b.g = i;
  };
  // Batched: the handler throws at its end, so the attempt is rolled back locally and
  // nothing is sent: snapshot, reads, buffered writes, rollback; no commit message.
  const throwing = mjolnir.atomic((pks, i) => {
    rowsHandler(pks, i);
    throw ROLLBACK;
  });
  variants.mjolnirRowsRolledBack = (i) => throwing(PKS[i % ROWS], i).catch(noop);
  const out = perCall(variants, opts);
  for (let k = 0; k < ROWS; k++) delete st[`k${k}`];

  // One call at a time: from the call until it returns, by which time the attempt has run
  // and its commit message is built and sent; the commit is awaited before the next call
  // (untimed). Timed per call, so only meaningful with a fine clock (isolated page).
  const committing = mjolnir.atomic(rowsHandler);
  const syncPart = [];
  const roundTrip = [];
  for (let i = 0; i < opts.commits + 20; i++) {
    const t0 = performance.now();
    const p = committing(PKS[i % ROWS], i);
    const t1 = performance.now();
    await p;
    const t2 = performance.now();
    if (i >= 20) { syncPart.push((t1 - t0) * 1000); roundTrip.push((t2 - t0) * 1000); }
  }
  out.mjolnirRowsCommitted = { us: median(syncPart), roundTripUs: median(roundTrip), calls: syncPart.length };
  return out;
}

/** 2. Rollback: a handler that writes one entry and throws, with the state at each size. */
async function rollback(sizes, opts) {
  const st = mjolnir.state;
  const out = {};
  let filled = 0;
  for (const size of sizes) {
    for (; filled < size; filled++) st[`r${filled}`] = filled;
    const abort = mjolnir.atomic((i) => {
      st[`r${(i * 7919) % size}`] = -1;
      throw ROLLBACK;
    });
    out[size] = perCall({ abort: (i) => abort(i).catch(noop) }, opts).abort;
  }
  // The rollbacks really happened: the entry call 3 wrote (-1) before throwing still holds
  // the value it was filled with (its own number).
  for (const size of sizes) {
    const k = (7919 * 3) % size;
    if (st[`r${k}`] !== k) throw new Error(`r${k} was not rolled back`);
  }
  for (let k = 0; k < filled; k++) delete st[`r${k}`];
  return out;
}

/** 4a. `count` state-only transactions (the handler of part 1). */
let stateReady = false;
let done = 0;
function stateTransactions(count) {
  const st = mjolnir.state;
  if (!stateReady) {
    for (let k = 0; k < ROWS; k++) st[`k${k}`] = entry(k);
    stateReady = true;
  }
  const h = stateHandler();
  for (let k = 0; k < count; k++, done++) h(NAMES[done % ROWS], done).catch(noop);
  return mjolnir.pending;
}

/**
 * 4b. `count` transactions, each reading `per` rows of `big` that no earlier one read. The
 * async form fetches a transaction's missing rows together and goes on (the synchronous
 * form would stop and re-run at each missing row); the read-only commit then validates.
 */
let nextBig = 1;
async function distinctReads(count, per) {
  // An async handler is given only its `tx`, so it finds its first row in nextBig.
  const read = mjolnir.atomic(async (tx) => {
    const rows = await Promise.all(Array.from({ length: per }, (_, k) => tx.table('big').find(nextBig + k)));
    return rows.reduce((sum, row) => sum + row.v, 0);
  });
  for (let k = 0; k < count; k++, nextBig += per) await read();
  return nextBig - 1;
}

/** Bytes of the wasm linear memory (it grows, never shrinks: a high-water mark). */
async function wasmBytes() {
  return (await load()).memory.buffer.byteLength;
}

window.bench = { setup, handlers, rollback, stateTransactions, distinctReads, wasmBytes };
