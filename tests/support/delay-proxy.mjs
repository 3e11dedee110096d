// A TCP proxy that adds network latency, for tests and benchmarks that must see what a user
// far from the server sees. It runs inside the test process, listens on 127.0.0.1 and
// forwards every connection to one target (a `mjolnir dev` server): the page loads over it
// too, HTTP and WebSocket on the same port, so the page's origin is the proxy's and the
// server's Origin check (dev accepts loopback pages) passes.
//
// Each chunk is held for the delay of its direction and then written: a real delay per
// chunk, not a rate limit, so 50 ms each way is a 100 ms round trip whatever the sizes.
// Order and bytes are kept (one queue per direction, due times never decrease, so a delay
// changed mid-stream cannot reorder). A half-close (FIN) is passed on after the bytes
// before it, with the same delay; a reset or an error closes both sides at once.
//
//   const proxy = await startDelayProxy(server.port, { upMs: 50, downMs: 50 });
//   page.goto(proxy.url); ... await proxy.close();
import net from 'node:net';
import { performance } from 'node:perf_hooks';

const END = Symbol('end');

/**
 * One direction of one connection: chunks read from `from` are written to `to` no earlier
 * than `delayMs()` after they arrived.
 */
function pipeDelayed(from, to, delayMs) {
  const queue = []; // { due, chunk } in arrival order; `chunk` END for the half-close
  let timer = null;
  let lastDue = 0;
  let paused = false;

  function flush() {
    timer = null;
    const now = performance.now();
    while (queue.length && queue[0].due <= now) {
      const { chunk } = queue.shift();
      if (to.destroyed) return;
      if (chunk === END) {
        to.end();
      } else if (!to.write(chunk) && !paused) {
        // The reader is slow: stop reading until it drains. Bytes already queued keep
        // their due times.
        paused = true;
        from.pause();
        to.once('drain', () => {
          paused = false;
          from.resume();
        });
      }
    }
    schedule();
  }

  function schedule() {
    if (timer || !queue.length) return;
    // setTimeout may fire a fraction of a millisecond early: flush checks the clock and
    // comes back for what is not due yet.
    const wait = Math.max(0, Math.ceil(queue[0].due - performance.now()));
    timer = setTimeout(flush, wait);
  }

  function push(chunk) {
    lastDue = Math.max(lastDue, performance.now() + delayMs());
    queue.push({ due: lastDue, chunk });
    schedule();
  }

  from.on('data', push);
  from.on('end', () => push(END));
  return {
    cancel() {
      if (timer) clearTimeout(timer);
      timer = null;
      queue.length = 0;
    },
  };
}

/**
 * Starts a proxy to 127.0.0.1:`targetPort`. `upMs` delays what the client sends, `downMs`
 * what the server answers (both may be changed later through `proxy.delays`). It closes
 * itself after `limitMs` at the latest, so a test that forgets it cannot hang.
 * Resolves { port, url, delays, connections(), close() }.
 */
export function startDelayProxy(targetPort, { upMs = 50, downMs = 50, limitMs = 900_000 } = {}) {
  const delays = { upMs, downMs };
  const sockets = new Set();
  const pipes = new Set();
  let accepted = 0;

  const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
    accepted += 1;
    const upstream = net.connect({ port: targetPort, host: '127.0.0.1', allowHalfOpen: true, noDelay: true });
    sockets.add(client);
    sockets.add(upstream);
    const up = pipeDelayed(client, upstream, () => delays.upMs);
    const down = pipeDelayed(upstream, client, () => delays.downMs);
    pipes.add(up);
    pipes.add(down);
    // A side that errs or is reset takes the other with it; a clean close of both (each
    // having ended its half) needs nothing more.
    const teardown = () => {
      up.cancel();
      down.cancel();
      client.destroy();
      upstream.destroy();
    };
    client.on('error', teardown);
    upstream.on('error', teardown);
    for (const s of [client, upstream]) {
      s.on('close', (hadError) => {
        sockets.delete(s);
        if (hadError) teardown();
        // Both halves ended: nothing more can flow.
        if (client.destroyed && upstream.destroyed) {
          pipes.delete(up);
          pipes.delete(down);
        }
      });
    }
  });

  let closed = null;
  function close() {
    if (!closed) {
      closed = new Promise((resolve) => {
        clearTimeout(limit);
        for (const p of pipes) p.cancel();
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      });
    }
    return closed;
  }
  const limit = setTimeout(close, limitMs);
  limit.unref();

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolve({
        port,
        url: `http://127.0.0.1:${port}`,
        delays,
        connections: () => accepted,
        close,
      });
    });
  });
}
