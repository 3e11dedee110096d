// The page half of latency-page.mjs, served to the counter page as /latency.js before the
// Mjölnir drop-in (a classic script, so that it runs before automatic mode patches the page).
// See latency-page.mjs for what it measures and how "visible" is decided.
(function () {
  'use strict';
  if (typeof window === 'undefined') return; // outside a page (loaded by node by mistake): nothing
  // Saved before the drop-in patches them: these never become transactions.
  var setTimeout_ = window.setTimeout.bind(window);
  var raf = window.requestAnimationFrame.bind(window);
  var now = function () { return performance.now(); };

  var frame = { n: 0, start: 0, ts: -1 };
  var frameStarts = []; // the last frames' starts, for the frame rate
  var watchers = [];    // { test, resolve, dueAfter } waiting for the DOM to show something
  var clicks = [];      // { id, timeStamp, frame }
  var commits = [];     // performance.now() of each commit event
  var aborts = [];      // { at, reason } of each abort event
  var commitWaiters = [];

  function settle(list, shownIn) {
    for (var i = 0; i < watchers.length; i++) {
      var w = watchers[i];
      if (w.dueAfter === null && w.test()) {
        if (shownIn === 'this frame') {
          w.resolve({ frame: frame.n, at: frame.start });
          watchers.splice(i--, 1);
        } else {
          w.dueAfter = frame.n; // shown by the next frame to begin
        }
      }
    }
  }
  function beginFrame(ts) {
    if (ts === frame.ts) return;
    frame = { n: frame.n + 1, start: now(), ts: ts };
    frameStarts.push(frame.start);
    if (frameStarts.length > 600) frameStarts.splice(0, 300);
    for (var i = 0; i < watchers.length; i++) {
      var w = watchers[i];
      if (w.dueAfter !== null && frame.n > w.dueAfter) {
        w.resolve({ frame: frame.n, at: frame.start });
        watchers.splice(i--, 1);
      }
    }
  }
  var observer = new MutationObserver(function (records) {
    if (records.length) settle(records, 'next frame');
  });
  observer.observe(document.documentElement, { subtree: true, childList: true, characterData: true, attributes: true });

  window.requestAnimationFrame = function (callback) {
    if (typeof callback !== 'function') return raf(callback);
    return raf(function (ts) {
      beginFrame(ts);
      try {
        callback(ts);
      } finally {
        var records = observer.takeRecords();
        if (records.length) settle(records, 'this frame');
      }
    });
  };
  (function loop() { window.requestAnimationFrame(loop); })();

  window.addEventListener('click', function (e) {
    clicks.push({ id: e.target && e.target.id, timeStamp: e.timeStamp, frame: frame.n });
  }, true);

  function sleep(ms) { return new Promise(function (r) { setTimeout_(r, ms); }); }
  function count() { return Number(document.getElementById('count').textContent); }
  function localCount() { return Number(document.getElementById('local-count').textContent); }
  /** Resolves { frame, at } once the DOM shows what test() checks (checked at each change). */
  function when(test) {
    return new Promise(function (resolve) { watchers.push({ test: test, resolve: resolve, dueAfter: null }); });
  }
  /** Resolves performance.now() at the commit event that makes `total` commits. */
  function commitsReach(total) {
    if (commits.length >= total) return Promise.resolve(commits[total - 1]);
    return new Promise(function (resolve) { commitWaiters.push({ total: total, resolve: resolve }); });
  }
  /** Clicks the element `id` (a real click event, dispatched at once); returns its stamp. */
  function click(id) {
    document.getElementById(id).click();
    return clicks[clicks.length - 1];
  }
  function measured(c, shown) { return { frames: shown.frame - c.frame, ms: shown.at - c.timeStamp }; }
  /** Waits until no transaction of the page is pending (at most limitMs). */
  async function idle(limitMs) {
    var deadline = now() + (limitMs || 60000);
    while (window.mjolnir.pending > 0) {
      if (now() > deadline) throw new Error('transactions still pending after ' + (limitMs || 60000) + ' ms');
      await sleep(1);
    }
  }
  /** A pause of base ms plus up to one frame, so clicks land at every phase of the frame. */
  function gap(base) { return sleep(base + Math.random() * 17); }

  window.latency = {
    clicks: clicks,
    commits: commits,
    aborts: aborts,
    count: count,
    localCount: localCount,
    idle: idle,

    /** Resolves once the runtime is connected and the counter shows a number. */
    ready: async function (limitMs) {
      var deadline = now() + (limitMs || 30000);
      while (!(window.mjolnir && window.mjolnir.ready)) {
        if (now() > deadline) throw new Error('no mjolnir global');
        await sleep(5);
      }
      var m = await window.mjolnir.ready;
      if (!window.latency.listening) {
        window.latency.listening = true;
        m.on('commit', function () {
          commits.push(now());
          for (var i = 0; i < commitWaiters.length; i++) {
            if (commits.length >= commitWaiters[i].total) {
              commitWaiters[i].resolve(commits[commitWaiters[i].total - 1]);
              commitWaiters.splice(i--, 1);
            }
          }
        });
        m.on('abort', function (e) { aborts.push({ at: now(), reason: e.reason }); });
      }
      while (!(m.connection === 'open' && Number.isFinite(count()))) {
        if (now() > deadline) throw new Error('not connected, or the counter not shown: ' + m.connection);
        await sleep(5);
      }
      return { count: count(), crossOriginIsolated: window.crossOriginIsolated };
    },

    /** The median interval between the last frames, in ms. */
    frameInterval: function () {
      var d = [];
      for (var i = 1; i < frameStarts.length; i++) d.push(frameStarts[i] - frameStarts[i - 1]);
      d.sort(function (a, b) { return a - b; });
      return d[Math.floor(d.length / 2)];
    },

    /**
     * n clicks on the shared counter, one at a time: each after the one before is visible
     * and committed, and a pause of gapMs plus up to a frame. Returns each one's
     * { frames, ms } to visible.
     */
    single: async function (n, gapMs) {
      var out = [];
      for (var i = 0; i < n; i++) {
        await idle();
        await gap(gapMs);
        var target = count() + 1;
        var shown = when(function () { return count() >= target; });
        var c = click('shared');
        out.push(measured(c, await shown));
      }
      await idle();
      return out;
    },

    /**
     * n clicks on the shared counter in one go (one task), then, if withLocal, one click on
     * a handler that only changes the page. Returns, from the first click: when its own
     * effect showed, when all n showed and when all n were committed; and the local
     * handler's time to visible from its own click.
     */
    burst: async function (n, withLocal, gapMs) {
      await idle();
      await gap(gapMs);
      var start = count();
      var committedBefore = commits.length;
      var firstShown = when(function () { return count() >= start + 1; });
      var allShown = when(function () { return count() >= start + n; });
      var localTarget = localCount() + 1;
      var localShown = withLocal ? when(function () { return localCount() >= localTarget; }) : null;
      var first = click('shared');
      var last = first;
      for (var i = 1; i < n; i++) last = click('shared');
      var local = withLocal ? click('local') : null;
      var all = measured(first, await allShown);
      var result = {
        start: start,
        first: measured(first, await firstShown),
        all: all,
        allFromLastClickMs: all.ms - (last.timeStamp - first.timeStamp),
        committedMs: (await commitsReach(committedBefore + n)) - first.timeStamp,
        local: withLocal ? measured(local, await localShown) : null,
      };
      await idle();
      return result;
    },

    /**
     * Clicks the shared counter as fast as the page takes them for warmupMs + seconds,
     * keeping at most maxOutstanding clicks not yet committed, and counts the commit
     * events of the last `seconds`. Waits for the backlog to commit before it returns.
     */
    sustain: async function (seconds, warmupMs, maxOutstanding) {
      await idle();
      var base = commits.length;
      var clicked = 0;
      var t0 = now();
      var from = t0 + warmupMs;
      var to = from + seconds * 1000;
      while (now() < to) {
        var outstanding = clicked - (commits.length - base);
        for (var k = 0; k < 8 && outstanding < maxOutstanding; k++, outstanding++) {
          click('shared');
          clicked++;
        }
        await sleep(1);
      }
      var inWindow = commits.slice(base).filter(function (t) { return t >= from && t < to; }).length;
      var drainStart = now();
      await idle(120000);
      return { clicked: clicked, commitsInWindow: inWindow, perSecond: inWindow / seconds, drainMs: now() - drainStart };
    },
  };
})();
