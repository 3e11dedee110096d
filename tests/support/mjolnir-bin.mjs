// Where the browser tests and benchmarks find the `mjolnir` binary: MJOLNIR_BIN (which
// scripts/test.sh and scripts/bench.sh set), else the debug build of this checkout.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export const mjolnirBin =
  process.env.MJOLNIR_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(repo, 'target'), 'debug', 'mjolnir');
