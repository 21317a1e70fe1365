//! Messages in and out of this daemon: `send` (address, seal, outbox), `receive` (open
//! envelopes into inbox rows) and `inbox` (reading, marking read, pushing to sessions,
//! receipts, the status of sent messages).

pub(crate) mod inbox;
pub(crate) mod receive;
pub(crate) mod send;

/// Longest message body accepted, in bytes.
pub const MAX_BODY: usize = 128 * 1024;
