//! Messages in and out of this daemon: `send` (address, seal, outbox), `receive` (open
//! envelopes into inbox rows), `push` (the priority gate, and handing a message to a push
//! subscription as it is stored) and `inbox` (reading, marking read, the push
//! subscription, receipts, the status of sent messages).

pub(crate) mod inbox;
pub(crate) mod push;
pub(crate) mod receive;
pub(crate) mod send;

/// Longest message body accepted, in bytes.
pub const MAX_BODY: usize = 128 * 1024;
