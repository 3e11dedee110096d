//! Every tunable of the client, in one place.

use std::time::Duration;

/// Largest incoming message (and frame) accepted. Generous on purpose: the server enforces
/// its own, smaller limit on what it accepts, and one `values` reply may carry many large
/// rows. This only stops a runaway server from exhausting our memory.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Frames queued for the writer task before `read`, `commit` and `send_raw` start to wait:
/// the back-pressure a load generator needs, deep enough that a pipelined burst of requests
/// never waits on a healthy connection.
pub(crate) const OUTGOING_QUEUE: usize = 4096;

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
