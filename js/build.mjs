// Builds the npm package into dist/: the wasm runtime (cargo, then the wasm-bindgen CLI
// pinned to the crate's version, then binaryen's wasm-opt), the TypeScript types of the wire
// protocol (generated from mjolnir-core), then the two entry points bundled by esbuild:
//   dist/index.js   ESM: `import { connect } from 'mjolnir-web'`
//   dist/mjolnir.js the <script> drop-in: global `mjolnir`, automatic mode and templates.
// Usage: node build.mjs [--debug]
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const build = join(here, 'build');
const dist = join(here, 'dist');
const debug = process.argv.includes('--debug');

function run(cmd, args, opts = {}) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  return execFileSync(cmd, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'], ...opts });
}

// The wasm-bindgen CLI must be the exact version of the crate in Cargo.lock, or the glue
// it writes does not match the module.
const lock = readFileSync(join(root, 'Cargo.lock'), 'utf8');
const wanted = /name = "wasm-bindgen"\nversion = "([^"]+)"/.exec(lock)?.[1];
let have = '';
try {
  have = execFileSync('wasm-bindgen', ['--version'], { encoding: 'utf8' }).trim().split(' ')[1];
} catch {
  // reported below
}
if (have !== wanted) {
  console.error(`wasm-bindgen CLI ${have || 'not found'}, but Cargo.lock has wasm-bindgen ${wanted}: ` +
    `run scripts/setup.sh (cargo install wasm-bindgen-cli --version ${wanted})`);
  process.exit(1);
}

const meta = JSON.parse(execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'],
  { cwd: root, encoding: 'utf8', maxBuffer: 1 << 26 }));
const profile = debug ? 'dev' : 'wasm-release';
run('cargo', ['build', '-p', 'mjolnir-wasm', '--lib', '--target', 'wasm32-unknown-unknown', '--profile', profile]);
const wasm = join(meta.target_directory, 'wasm32-unknown-unknown', debug ? 'debug' : profile, 'mjolnir_wasm.wasm');

rmSync(build, { recursive: true, force: true });
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });
run('wasm-bindgen', ['--target', 'web', '--remove-name-section', '--remove-producers-section', '--out-dir', join(build, 'wasm'), '--out-name', 'mjolnir', wasm]);
if (!debug) {
  // Binaryen's wasm-opt (the npm package `binaryen`, pinned in package.json) over what
  // wasm-bindgen wrote; it reads the wasm features rustc used from the module's
  // target_features section, then drops that section. -O2 rather than -Oz, and one-caller
  // inlining only of small functions (-ocimfs 20): measured by gzip -9 (js/bench/client.mjs),
  // inlining each function that has one caller makes the module smaller raw but about 10 KB
  // larger gzipped. See docs/client.md, "Shipped size".
  const wasmOpt = join(here, 'node_modules', '.bin', 'wasm-opt');
  const out = join(build, 'wasm', 'mjolnir_bg.wasm');
  run(wasmOpt, ['-O2', '-ocimfs', '20', '--strip-target-features', out, '-o', out]);
}
run('cargo', ['run', '-q', '-p', 'mjolnir-core', '--features', 'ts', '--example', 'typescript', '--',
  join(dist, 'protocol.d.ts')]);

// auto.js is imported by the wasm glue from wasm-bindgen's snippets folder (its path holds a
// hash) and by the drop-in, which installs it before the wasm has loaded.
const snippets = join(build, 'wasm', 'snippets');
const autoJs = readdirSync(snippets)
  .map((crate) => join(snippets, crate, 'js', 'auto.js'))
  .find((f) => existsSync(f));
const aliases = {
  name: 'mjolnir-aliases',
  setup(b) {
    b.onResolve({ filter: /^#auto$/ }, () => ({ path: autoJs }));
    b.onResolve({ filter: /^#wasm$/ }, () => ({ path: join(build, 'wasm', 'mjolnir.js') }));
  },
};
// The drop-in always passes its wasm URL, so the glue's import.meta.url default is unused.
const common = {
  bundle: true, minify: !debug, sourcemap: true, target: 'es2022', plugins: [aliases], logLevel: 'warning',
  // wasm-bindgen lists the one snippet module once per imported function: the same object.
  logOverride: { 'empty-import-meta': 'silent', 'duplicate-object-key': 'silent' },
};
await esbuild.build({ ...common, entryPoints: [join(here, 'src', 'index.js')], outfile: join(dist, 'index.js'), format: 'esm' });
await esbuild.build({ ...common, entryPoints: [join(here, 'src', 'script.js')], outfile: join(dist, 'mjolnir.js'), format: 'iife' });

copyFileSync(join(build, 'wasm', 'mjolnir_bg.wasm'), join(dist, 'mjolnir_bg.wasm'));
copyFileSync(join(build, 'wasm', 'mjolnir.d.ts'), join(dist, 'wasm.d.ts'));
for (const f of ['index.d.ts', 'global.d.ts']) copyFileSync(join(here, 'src', f), join(dist, f));
if (!existsSync(join(dist, 'mjolnir.js'))) throw new Error('esbuild wrote no drop-in');
console.log(`built ${dist}`);
