// What the browser tests share: a fresh database per test file on the test PostgreSQL
// (MJOLNIR_TEST_DATABASE_URL, which scripts/test.sh starts), a real `mjolnir dev` server
// on 127.0.0.1, and Debian's Chromium driven by playwright-core (nothing is downloaded).
//
// Every process started here is stopped when the test process exits, however it exits.
import { spawn, execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';
import { mjolnirBin as bin, repo } from './mjolnir-bin.mjs';

export { repo };

const adminUrl = process.env.MJOLNIR_TEST_DATABASE_URL;
if (!adminUrl) {
  throw new Error(
    'MJOLNIR_TEST_DATABASE_URL is not set: run the browser tests with scripts/test.sh, or set it to what `mjolnir pg start DIR` prints',
  );
}

const children = new Set();
function stopAll() {
  for (const c of children) c.kill('SIGKILL');
}
process.on('exit', stopAll);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    stopAll();
    process.exit(1);
  });
}

/** Runs SQL on the database `db` of the test cluster and returns psql's unaligned output. */
export function sql(db, query) {
  const url = new URL(adminUrl);
  url.pathname = `/${db}`;
  return execFileSync('psql', [url.href, '-X', '-q', '-t', '-A', '-v', 'ON_ERROR_STOP=1', '-c', query], {
    encoding: 'utf8',
  }).trim();
}

/** (Re)creates the empty database `name` and returns its URL. */
export function freshDatabase(name) {
  sql('postgres', `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  sql('postgres', `CREATE DATABASE ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.href;
}

/**
 * A throwaway app directory: `files` (name → content) plus the migrations of the example
 * `migrationsOf` (a directory of examples/; none when null).
 */
export function makeApp(files, migrationsOf = 'bank') {
  const dir = mkdtempSync(join(tmpdir(), 'mjolnir-app-'));
  if (migrationsOf) {
    cpSync(join(repo, 'examples', migrationsOf, 'migrations'), join(dir, 'migrations'), { recursive: true });
  }
  for (const [name, content] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), content);
  }
  return dir;
}

/**
 * Starts `mjolnir dev APP_DIR` on `database` (a URL) and `port` (0: any free one); resolves
 * once it prints its URL. `args` are more options of `mjolnir dev`. The server is killed
 * after `limitMs` at the latest.
 */
export function startServer(appDir, database, { port = 0, limitMs = 600_000, args = [] } = {}) {
  const child = spawn(bin, ['dev', '--database-url', database, '--listen', '127.0.0.1', '--port', String(port), ...args, appDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
  });
  children.add(child);
  const limit = setTimeout(() => child.kill('SIGKILL'), limitMs);
  limit.unref();
  let log = '';
  child.stderr.on('data', (d) => { log += d; });
  const exited = new Promise((r) => child.once('exit', (code, signal) => {
    children.delete(child);
    clearTimeout(limit);
    r({ code, signal });
  }));
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in 60 s:\n${log}`)), 60_000);
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /open (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        const url = m[1].replace(/\/$/, '');
        resolvePromise({
          url,
          port: Number(new URL(url).port),
          log: () => log,
          /** Stops it the hard way, as a crash would. */
          kill: async () => { child.kill('SIGKILL'); await exited; },
          stop: async () => { child.kill('SIGTERM'); await exited; },
        });
      }
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${bin}: ${e.message}`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal}) before it started:\n${log}`));
    });
  });
}

/** Debian's Chromium, headless, with the flags it needs as root and then `args`. */
export function launchBrowser({ args = [] } = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', ...args],
  });
}

/** A page whose console errors and uncaught exceptions are collected in `page.problems`. */
export async function openPage(context, url) {
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/favicon/.test(m.location().url)) page.problems.push(`console: ${m.text()}`);
  });
  await page.goto(url);
  return page;
}

/** Polls `read` until `accept` holds for its value; returns the value. */
export async function until(read, accept, { timeoutMs = 10_000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await read();
    if (accept(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last value: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
