//! Every tunable of the client, in one place.

use std::time::Duration;

/// Largest incoming message (and frame) accepted. Generous on purpose: the server enforces
/// its own, smaller limit on what it accepts, and one `values` reply may carry many large
/// rows. This only stops a runaway server from exhausting our memory.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Frames of the raw API (`read`, `commit`, `send_raw`) queued for the writer task before
/// the next one waits: back-pressure for a caller that floods the connection, deep enough
/// that a pipelined burst of requests never waits on a healthy connection. The engine's
/// frames (`Client::run`) do not count: they are queued under its lock, where nothing may
/// wait, and there are only a few per transaction in progress.
pub(crate) const OUTGOING_QUEUE: usize = 4096;

/// Keys the engine's cache holds by default (`ClientOptions::cache_capacity`), the
/// browser's figure: enough for a working set, small enough that a long-lived client does
/// not end up subscribed to the whole database.
pub(crate) const DEFAULT_CACHE_CAPACITY: usize = mjolnir_core::cache::DEFAULT_CAPACITY;

/// Frames written before one flush. Batching a pipelined burst saves syscalls; the cap keeps
/// a steady stream of requests from postponing the flush forever.
pub(crate) const WRITE_BURST: usize = 256;

/// Pushes buffered per subscriber before it lags (and loses the oldest ones).
pub(crate) const PUSH_BUFFER: usize = 4096;

/// Unsolicited frames buffered for `next_unsolicited`; newer ones are dropped beyond that,
/// so a client that never asks cannot grow without bound.
pub(crate) const UNSOLICITED_BUFFER: usize = 1024;

/// Time allowed to open the socket, send the hello and receive the welcome.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the reader goes on after a failed write, and the writer after the connection
/// ended: long enough for a close frame already on its way (whose code tells the caller
/// why) and for our reply to the server's close; short enough that nothing waits on a dead
/// socket.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);
