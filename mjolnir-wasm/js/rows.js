// Row objects (see src/rows.rs): a Proxy per row over a target holding the row's wasm half
// (its key and attempt) under a symbol, so no column name can meet it. Every row shares one
// handler, so finding a row makes no new functions; each trap is one call into wasm.
const ROW = Symbol('mjolnir.row');
const handler = {
  get: (t, name) => (typeof name === 'string' ? t[ROW].get(name) : undefined),
  set(t, name, value) {
    if (typeof name !== 'string') return false;
    t[ROW].set(name, value);
    return true;
  },
  ownKeys: (t) => t[ROW].keys(),
  getOwnPropertyDescriptor: (t, name) => (typeof name === 'string' ? t[ROW].descriptor(name) : undefined),
};

export function rowProxy(row) {
  return new Proxy({ [ROW]: row }, handler);
}
