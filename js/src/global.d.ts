// wasm-bindgen's classes are disposable (`using m = …`): Symbol.dispose.
/// <reference lib="esnext.disposable" />
// The global of the <script> drop-in, for pages type-checked with
// `/// <reference types="mjolnir-web/global" />`.
import type * as wasm from './wasm.js';
import type { Mjolnir } from './wasm.js';

declare global {
  /** The runtime once loaded; until then a placeholder whose `ready` resolves to it. */
  var mjolnir: Mjolnir & { ready: Promise<Mjolnir> };
  /** The runtime's types, for pages without imports: `@type {mjolnir.RowObject[]}`. */
  namespace mjolnir {
    type Table = wasm.Table;
    type Tx = wasm.Tx;
    type TxTable = wasm.TxTable;
    type QueryBuilder = wasm.QueryBuilder;
    type TxQueryBuilder = wasm.TxQueryBuilder;
    type QueryValue = wasm.QueryValue;
    type QueryOp = wasm.QueryOp;
    type RowObject = wasm.RowObject;
  }
}

export {};
