// wasm-bindgen's classes are disposable (`using m = …`): Symbol.dispose.
/// <reference lib="esnext.disposable" />
// The global of the <script> drop-in, for pages type-checked with
// `/// <reference types="mjolnir-web/global" />`.
import type { Mjolnir } from './wasm.js';

declare global {
  /** The runtime once loaded; until then a placeholder whose `ready` resolves to it. */
  var mjolnir: Mjolnir & { ready: Promise<Mjolnir> };
}

export {};
