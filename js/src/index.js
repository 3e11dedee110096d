// The npm entry: `import { connect } from 'mjolnir-web'`.
//
// The wasm module is fetched from beside this file (`new URL(…, import.meta.url)`, which
// bundlers understand) the first time `connect` or `load` is called, never at import.
import init, { connect as open, Mjolnir } from '#wasm';

let loading = null;

/** Loads and instantiates the wasm runtime once; `wasm` overrides where it is fetched from. */
export function load(wasm) {
  loading ??= init({ module_or_path: wasm ?? new URL('./mjolnir_bg.wasm', import.meta.url) });
  return loading;
}

/** Loads the runtime and connects to the server (default: `/ws` on the page's origin). */
export async function connect(options = {}) {
  await load(options.wasm);
  return open(options.url, options.user);
}

export { Mjolnir };
