// The `mjolnir` object a named transaction's body sees on the server: the same calls as a
// handler's in the page (table(…).find/insert/delete and queries, kv, user), over the
// native functions `lib.rs` binds to one transaction attempt of the core. Evaluated in a
// fresh context before the app's declarations, once per run.
//
// The engine has no document, no window, no timers, no network and no file system.
// Math.random and Date.now are deterministic: seeded from the transaction, so a run and
// its re-run after a conflict draw the same numbers, and so do the page's prediction and
// the server's run of one call.
(function (native, user, seed, now) {
  'use strict';
  var declared = Object.create(null);

  // A read the attempt does not hold: the body stops here, the server fetches what was
  // missed and runs it again. A body that catches it only delays that: the miss is
  // recorded in the attempt whatever the body does next.
  function Missing() {
    this.message = 'not loaded yet';
  }

  function call(result) {
    var r = JSON.parse(result);
    if (r.miss) throw new Missing();
    return r;
  }

  // A row as find and queries give it: assigning a column writes it through.
  function row(table, pk, value) {
    if (value === null || typeof value !== 'object') return value;
    return new Proxy(value, {
      set: function (target, column, v) {
        var set = {};
        set[column] = v;
        native.write(JSON.stringify({ kind: 'row', table: table, pk: pk }),
          JSON.stringify({ op: 'update', set: set }));
        target[column] = v;
        return true;
      },
      deleteProperty: function () {
        throw new TypeError('a column cannot be deleted; set it to null');
      },
    });
  }

  var ops = { '==': 'eq', '===': 'eq', '!=': 'ne', '!==': 'ne', '<': 'lt', '<=': 'lte',
              '>': 'gt', '>=': 'gte', 'in': 'in' };

  function query(table, q) {
    function step(change) {
      var next = JSON.parse(JSON.stringify(q));
      change(next);
      return query(table, next);
    }
    function run(count) {
      var spec = JSON.parse(JSON.stringify(q));
      if (count) spec.count = true;
      return call(native.query(JSON.stringify(spec)));
    }
    return {
      where: function (column, op, value) {
        return step(function (n) {
          n.where = n.where || [];
          if (typeof column === 'object' && column !== null) {
            Object.keys(column).forEach(function (c) {
              var v = column[c];
              n.where.push(v === null ? { column: c, op: 'is_null' } : { column: c, op: 'eq', value: v });
            });
            return;
          }
          if (!(op in ops)) throw new TypeError('where() has no operator ' + JSON.stringify(op));
          if (value === null && ops[op] === 'eq') n.where.push({ column: column, op: 'is_null' });
          else if (value === null && ops[op] === 'ne') n.where.push({ column: column, op: 'not_null' });
          else n.where.push({ column: column, op: ops[op], value: value });
        });
      },
      orderBy: function (column, dir) {
        return step(function (n) {
          n.order = n.order || [];
          n.order.push({ column: column, desc: dir === 'desc' });
        });
      },
      limit: function (n) { return step(function (s) { s.limit = n; }); },
      search: function (column, text) {
        return step(function (s) { s.search = { column: column, text: text }; });
      },
      all: function () {
        return run(false).rows.map(function (r) { return row(table, r.pk, r.value); });
      },
      count: function () { return run(true).count; },
    };
  }

  function table(name) {
    var t = query(name, { table: name });
    t.find = function (pk) {
      var value = call(native.read(JSON.stringify({ kind: 'row', table: name, pk: pk }))).value;
      return value === null ? null : row(name, pk, value);
    };
    t.insert = function (values) {
      var r = call(native.insert(name, JSON.stringify(values)));
      return row(name, r.pk, r.row);
    };
    t.delete = function (pk) {
      native.write(JSON.stringify({ kind: 'row', table: name, pk: pk }), '{"op":"delete"}');
    };
    return t;
  }

  var kv = {
    get: function (key) {
      return call(native.read(JSON.stringify({ kind: 'kv', key: key }))).value;
    },
    set: function (key, value) {
      native.write(JSON.stringify({ kind: 'kv', key: key }),
        JSON.stringify({ op: 'put', value: value === undefined ? null : value }));
    },
    delete: function (key) {
      native.write(JSON.stringify({ kind: 'kv', key: key }), '{"op":"delete"}');
    },
  };

  // xorshift32, seeded from the transaction: deterministic, not secret.
  var state = (seed >>> 0) || 0x9e3779b9;
  Math.random = function () {
    state ^= state << 13; state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5; state >>>= 0;
    return state / 4294967296;
  };
  var RealDate = Date;
  Date.now = function () { return now; };
  globalThis.Date = new Proxy(RealDate, {
    construct: function (target, args) {
      return args.length ? new target(...args) : new target(now);
    },
    apply: function () { return new RealDate(now).toString(); },
  });

  globalThis.mjolnir = Object.freeze({
    user: user,
    table: table,
    kv: kv,
    // Declares a named transaction. `options.allow(user, ...args)` says who may run it.
    transaction: function (name, body, options) {
      if (typeof name !== 'string' || typeof body !== 'function') {
        throw new TypeError('mjolnir.transaction(name, function, options?)');
      }
      declared[name] = { body: body, allow: options && options.allow };
    },
  });

  return {
    // Runs `name` with `args` (a JSON array): its result as JSON, or a refusal.
    run: function (name, args) {
      var t = declared[name];
      if (!t) return JSON.stringify({ unknown: true });
      var list = JSON.parse(args);
      if (t.allow && !t.allow.apply(null, [user].concat(list))) {
        return JSON.stringify({ denied: true });
      }
      var out = t.body.apply(null, list);
      var text = JSON.stringify(out === undefined ? null : out);
      if (text === undefined) throw new TypeError('the transaction returned a value JSON cannot hold');
      return JSON.stringify({ value: JSON.parse(text) });
    },
    isMissing: function (e) { return e instanceof Missing; },
  };
})
