// Automatic mode's JavaScript half (see src/auto.rs): it patches the page's ways of
// registering handlers so that each handler runs through `run`, which makes it a
// transaction.
//
// The state lives on a global symbol, not in this module: the <script> drop-in installs
// the patches before its wasm has loaded (so listeners the page adds meanwhile are
// wrapped too) from its own copy of this file, and the runtime's copy attaches `run` later.

const STATE = Symbol.for('mjolnir.auto');

// install(run): patches the page once; a later call with a `run` attaches it. Handlers that
// fire before a `run` is attached are queued and run, as transactions, once it is.
export function install(run) {
  let s = globalThis[STATE];
  if (!s) {
    s = globalThis[STATE] = { run: null, queue: [] };
    patch(s);
  }
  if (run && !s.run) {
    s.run = run;
    for (const [f, self, args] of s.queue.splice(0)) run(f, self, args);
  }
}

// The runtime's own timers (retry delays, reconnects) must not become transactions: one
// would queue behind the very handler that waits for it. They use the unpatched function.
export function runtimeTimeout(callback, ms) {
  const s = globalThis[STATE];
  return ((s && s.setTimeout) || globalThis.setTimeout).call(globalThis, callback, ms);
}

function patch(s) {
  s.setTimeout = globalThis.setTimeout;
  const wrapped = new WeakMap();
  const ours = new WeakSet();
  function wrap(f) {
    // Async functions are left alone: their code after an await would run outside the
    // transaction. They become transactions with mjolnir.atomic(async tx => ...).
    if (typeof f !== 'function' || ours.has(f) || f.constructor.name === 'AsyncFunction') return f;
    let w = wrapped.get(f);
    if (!w) {
      w = function (...args) {
        if (s.run) return s.run(f, this, args);
        s.queue.push([f, this, args]);
        return undefined;
      };
      wrapped.set(f, w);
      ours.add(w);
    }
    return w;
  }
  function optedOut(target) {
    return typeof target.closest === 'function' && target.closest('[data-mjolnir="off"]') !== null;
  }
  const add = EventTarget.prototype.addEventListener;
  const remove = EventTarget.prototype.removeEventListener;
  EventTarget.prototype.addEventListener = function (type, listener, options) {
    const l = typeof listener === 'function' && !optedOut(this) ? wrap(listener) : listener;
    return add.call(this, type, l, options);
  };
  EventTarget.prototype.removeEventListener = function (type, listener, options) {
    return remove.call(this, type, (typeof listener === 'function' && wrapped.get(listener)) || listener, options);
  };
  for (const name of ['setTimeout', 'setInterval']) {
    const original = globalThis[name];
    globalThis[name] = function (callback, ...rest) {
      return original.call(this, typeof callback === 'function' ? wrap(callback) : callback, ...rest);
    };
  }
  function wrapInline(el) {
    if (!(el instanceof Element) || optedOut(el)) return;
    for (const attr of el.getAttributeNames()) {
      if (attr.startsWith('on') && typeof el[attr] === 'function' && !ours.has(el[attr])) {
        el[attr] = wrap(el[attr]);
      }
    }
  }
  function wrapTree(root) {
    wrapInline(root);
    if (root.querySelectorAll) root.querySelectorAll('*').forEach(wrapInline);
  }
  wrapTree(document.documentElement);
  new MutationObserver(function (records) {
    for (const r of records) {
      if (r.type === 'attributes') wrapInline(r.target);
      else r.addedNodes.forEach(wrapTree);
    }
  }).observe(document, { subtree: true, childList: true, attributes: true });
  // A form without an action would reload the page when submitted (the paper's Figure 3
  // submits one to run send()): on a Mjölnir page its handlers are the action, so the
  // reload, which would throw away the page and its pending transactions, is prevented.
  add.call(document, 'submit', function (event) {
    const form = event.target;
    if (form instanceof HTMLFormElement && !form.hasAttribute('action') && !optedOut(form)) {
      event.preventDefault();
    }
  }, true);
}
