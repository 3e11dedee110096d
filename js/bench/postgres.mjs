// A private PostgreSQL for the browser benchmarks (client.mjs, latency.mjs) when
// MJOLNIR_TEST_DATABASE_URL is not set: `mjolnir pg start` (the cluster `mjolnir dev` runs,
// on a unix socket only) in a directory of /tmp, stopped and removed when the process exits.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { mjolnirBin } from '../../tests/support/mjolnir-bin.mjs';

/** Starts the cluster and resolves its admin URL. `say` reports where it runs. */
export async function startPostgres(say = console.log) {
  const dir = mkdtempSync('/tmp/mjolnir-bench-pg.');
  // As root the cluster belongs to `postgres`; it stays in `dir`, to be removed with it,
  // only if `postgres` can enter it.
  chmodSync(dir, 0o755);
  process.on('exit', () => {
    try {
      execFileSync(mjolnirBin, ['pg', 'stop', dir], { stdio: 'ignore' });
    } catch {
      // nothing left to stop
    }
    rmSync(dir, { recursive: true, force: true });
  });
  const url = execFileSync(mjolnirBin, ['pg', 'start', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  say(`PostgreSQL in ${dir} (private, removed at exit)`);
  return url;
}
