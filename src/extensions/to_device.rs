//! MSC3885 to-device messages: the device's queue, handed out in order and deleted once
//! the client acknowledges them with `since`.

use bytes::Bytes;

use super::{Context, Params as StickyParams};
use crate::types::Position;

/// Messages per response when the client names no `limit` (the MSC's example, and the
/// Go proxy's default).
pub const DEFAULT_LIMIT: usize = 100;
/// Larger `limit`s are lowered to this: a device holds at most this many in memory
/// (see `store::devices`).
pub const MAX_LIMIT: usize = crate::store::devices::TO_DEVICE_IN_MEMORY;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    /// The `next_batch` the client last received: acknowledges every message up to it.
    pub since: Option<Position>,
    pub limit: Option<usize>,
}

impl StickyParams for Params {
    fn merge(&mut self, newer: &Self) {
        if newer.since.is_some() {
            self.since = newer.since;
        }
        if newer.limit.is_some() {
            self.limit = newer.limit;
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    pub next_batch: Position,
    pub events: Vec<Bytes>,
}

impl Response {
    /// Only messages make a long-poll return; `next_batch` alone is no news.
    pub fn has_data(&self) -> bool {
        !self.events.is_empty()
    }
}

/// Acknowledges up to `since`, then hands out the oldest messages left. A client that
/// retries with an older `since` (it lost a response) gets the same messages again.
pub fn step(params: &Params, ctx: &Context<'_>) -> Response {
    if let Some(since) = params.since {
        ctx.store.ack_to_device(ctx.device, since);
    }
    let data = ctx.device.read();
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let events: Vec<_> = data.to_device.iter().take(limit).collect();
    let next_batch = match events.last() {
        Some(last) => {
            ctx.store.to_device_delivered(ctx.device, last.position);
            last.position
        }
        None => params.since.unwrap_or(data.acked),
    };
    Response {
        next_batch,
        events: events.into_iter().map(|m| m.json.clone()).collect(),
    }
}
