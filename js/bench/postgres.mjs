// A private PostgreSQL for the browser benchmarks (client.mjs, latency.mjs) when
// MJOLNIR_TEST_DATABASE_URL is not set: its own cluster in a directory of /tmp, listening
// on 127.0.0.1 only, stopped and removed when the process exits.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

/**
 * initdb + pg_ctl start (as `postgres` when root); resolves the admin URL. `say` reports
 * where it runs.
 */
export async function startPostgres(say = console.log) {
  const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => Number(a) - Number(b));
  const bin = join('/usr/lib/postgresql', versions.at(-1), 'bin');
  const dir = mkdtempSync('/tmp/mjolnir-client-bench-pg.');
  const root = process.getuid() === 0; // postgres refuses to run as root
  const asOwner = (cmd, args) => execFileSync(root ? 'runuser' : cmd, root ? ['-u', 'postgres', '--', cmd, ...args] : args, { stdio: 'pipe' });
  if (root) execFileSync('chown', ['postgres:postgres', dir]);
  asOwner(join(bin, 'initdb'), ['-D', `${dir}/data`, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-locale', '--no-sync']);
  const port = await new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const { port: p } = s.address(); s.close(() => resolve(p)); });
  });
  asOwner(join(bin, 'pg_ctl'), ['-D', `${dir}/data`, '-l', `${dir}/log`, '-w', '-t', '60', '-s', '-o',
    `-c listen_addresses=127.0.0.1 -c port=${port} -c unix_socket_directories=${dir}`, 'start']);
  process.on('exit', () => {
    try {
      asOwner(join(bin, 'pg_ctl'), ['-D', `${dir}/data`, '-m', 'immediate', '-w', '-s', 'stop']);
    } catch {
      // already stopped: a Ctrl-C reaches postgres too
    }
    rmSync(dir, { recursive: true, force: true });
  });
  say(`PostgreSQL ${versions.at(-1)} on 127.0.0.1:${port} (private, removed at exit)`);
  return `postgres://postgres@127.0.0.1:${port}/postgres`;
}
