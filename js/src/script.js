// The <script> drop-in: `<script src="/_mjolnir/mjolnir.js"></script>` on a static page.
//
// It must run as a classic script before the page's own scripts: it patches the ways of
// registering handlers at once (so handlers the page adds before the wasm has loaded are
// wrapped too; any that fire meanwhile run as transactions once it has), then loads its
// wasm from beside itself, connects to the page's origin, turns on automatic mode and
// renders the page's {{ }} templates. Until then the global `mjolnir` is a placeholder
// whose `ready` promise resolves to the runtime.
//
// It also keeps `data-mjolnir-connection` on <html> (connecting, open, disconnected) for
// CSS to show.
//
// Options, as attributes of the script tag: data-url (the server's WebSocket URL),
// data-auto="off" (no automatic mode), data-templates="off".
import { install } from '#auto';
import init, { connect } from '#wasm';

const tag = document.currentScript;
const options = (tag && tag.dataset) || {};
const base = (tag && tag.src) || location.href;
// Registered before the patch, so it is not itself a transaction.
const parsed = new Promise((resolve) => {
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', resolve, { once: true });
  else resolve();
});
if (options.auto !== 'off') install(null);

const ready = (async () => {
  await init({ module_or_path: new URL('mjolnir_bg.wasm', base) });
  const mjolnir = connect(options.url || undefined, undefined);
  mjolnir.ready = ready;
  globalThis.mjolnir = mjolnir;
  // CSS can show the connection state: html[data-mjolnir-connection="disconnected"] ….
  const root = document.documentElement;
  root.dataset.mjolnirConnection = mjolnir.connection;
  mjolnir.on('connection', (e) => { root.dataset.mjolnirConnection = e.state; });
  if (options.auto !== 'off') mjolnir.auto();
  await parsed;
  if (options.templates !== 'off') mjolnir.templates();
  return mjolnir;
})();
ready.catch((e) => console.error('Mjölnir failed to start:', e));

globalThis.mjolnir = { connection: 'loading', ready };
