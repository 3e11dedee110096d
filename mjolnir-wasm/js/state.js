// `mjolnir.state`'s storage (see src/state.rs): the page's own globals, part of every
// transaction.
//
// It lives in JavaScript because a handler reads it far more often than it starts or ends a
// transaction: each read of `mjolnir.state.x` is a Map lookup in a Proxy trap, with no call
// into wasm. The runtime (wasm) opens an undo log when an attempt starts and closes it when
// the attempt ends; while it is open every write also records what the name held before.
// Undoing an attempt replays its log backwards, so a rollback costs as much as the attempt
// wrote, whatever the size of the state (the flat rollback the paper asks for, without
// copying anything on a write).
//
// Values are frozen when stored (`Object.freeze`): an object changed in place would change
// behind the log's back and could not be rolled back. Assign a new value instead.

export class PageState {
  /** `onChange()` is called after each write made outside any attempt. */
  constructor(onChange) {
    this.values = new Map();
    // The id of each name any attempt wrote (`footprint`).
    this.ids = new Map();
    this.onChange = onChange;
    // Whether an attempt is open, and its undo log: [name, had, old, name, had, old, …],
    // created at the attempt's first write (an attempt that writes nothing allocates none).
    this.open = false;
    this.log = null;
    const values = this.values;
    const store = this;
    this.proxy = new Proxy({}, {
      get: (_, name) => (typeof name === 'string' ? values.get(name) : undefined),
      set(_, name, value) {
        if (typeof name !== 'string') return false;
        if (typeof value === 'object' && value !== null) Object.freeze(value);
        store.write(name, value, true);
        return true;
      },
      deleteProperty(_, name) {
        if (typeof name === 'string' && values.has(name)) store.write(name, undefined, false);
        return true;
      },
      has: (_, name) => typeof name === 'string' && values.has(name),
      ownKeys: () => [...values.keys()],
      getOwnPropertyDescriptor(_, name) {
        if (typeof name !== 'string' || !values.has(name)) return undefined;
        return { value: values.get(name), writable: true, enumerable: true, configurable: true };
      },
    });
  }

  /** Sets (`present`) or deletes `name`, logging what it held if an attempt is open. */
  write(name, value, present) {
    const values = this.values;
    if (this.open) {
      (this.log ??= []).push(name, values.has(name), values.get(name));
    }
    if (present) values.set(name, value);
    else values.delete(name);
    if (!this.open) this.onChange();
  }

  /** The value of `name` (undefined if none), for templates. */
  get(name) {
    return this.values.get(name);
  }

  /** An attempt starts: log its writes from now on. */
  begin() {
    this.open = true;
    this.log = null;
  }

  /** The attempt ended: its undo log, or null if it wrote nothing. */
  end() {
    const log = this.log;
    this.open = false;
    this.log = null;
    return log;
  }

  /**
   * The ids of the names an attempt wrote, given its log: odd numbers, one per name for the
   * page's life (DOM nodes take the even ones, dom.js), so the engine can tell which
   * attempts changed the same entries.
   */
  footprint(log) {
    const ids = [];
    for (let i = 0; i < log.length; i += 3) {
      let id = this.ids.get(log[i]);
      if (id === undefined) {
        id = 2 * this.ids.size + 1;
        this.ids.set(log[i], id);
      }
      ids.push(id);
    }
    return ids;
  }

  /** Undoes an attempt's writes, given the log `end()` returned. */
  revert(log) {
    const values = this.values;
    for (let i = log.length - 3; i >= 0; i -= 3) {
      if (log[i + 1]) values.set(log[i], log[i + 2]);
      else values.delete(log[i]);
    }
  }
}
