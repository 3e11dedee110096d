// wasm-bindgen's classes are disposable (`using m = …`): Symbol.dispose.
/// <reference lib="esnext.disposable" />
// Types of the npm entry. The runtime's classes (Mjolnir, Table, Kv, …) are declared by
// wasm-bindgen from the Rust source (wasm.d.ts; the query builders' types are written in
// mjolnir-wasm/src/query.rs); the wire types by mjolnir-core (protocol.d.ts). Only the two
// loader functions below are declared here.
import type { Mjolnir } from './wasm.js';

export { Mjolnir, Table, Kv } from './wasm.js';
export type {
  Tx, TxTable, TxKv, QueryBuilder, TxQueryBuilder, QuerySteps, QueryValue, QueryOp, RowObject,
} from './wasm.js';
export type * from './protocol.js';

/** Where the wasm module comes from: a URL, or the module itself. */
export type WasmSource = string | URL | Request | Response | BufferSource | WebAssembly.Module;

export interface ConnectOptions {
  /** The server's WebSocket URL. Default: `/ws` on the page's origin. */
  url?: string;
  /**
   * The user to claim. Only `mjolnir dev` believes a claim; behind `mjolnir serve` the
   * user comes from the authenticating proxy. Default: the page's `?user=` parameter.
   */
  user?: string;
  /** Where to fetch the wasm runtime. Default: `mjolnir_bg.wasm` beside this module. */
  wasm?: WasmSource;
}

/** Loads and instantiates the wasm runtime (once). */
export declare function load(wasm?: WasmSource): Promise<unknown>;

/** Loads the runtime and connects to the server. */
export declare function connect(options?: ConnectOptions): Promise<Mjolnir>;
