//! MSC3884 end-to-end encryption data: one-time-key counts, unused fallback key types and
//! device-list changes. Device-scoped: `lists` and `rooms` do not apply.

use bytes::Bytes;

use super::Context;
use crate::store::devices::ListChange;
use crate::types::UserId;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    /// A JSON object, as the homeserver sent it; `None`: unchanged.
    pub otk_counts: Option<Bytes>,
    /// A JSON array; `[]` means the fallback key was used, unlike `None` (unchanged).
    pub fallback_types: Option<Bytes>,
    pub changed: Vec<UserId>,
    pub left: Vec<UserId>,
}

impl Response {
    pub fn has_data(&self) -> bool {
        self.otk_counts.is_some()
            || self.fallback_types.is_some()
            || !self.changed.is_empty()
            || !self.left.is_empty()
    }
}

/// An initial read sends the current key data and the device-list changes delivered
/// last, without acknowledging those (its client may never have processed them); a later
/// one sends what changed and delivers the changes not yet delivered.
pub fn step(initial: bool, ctx: &Context<'_>) -> Response {
    let keys = if initial {
        ctx.store.current_keys(ctx.device)
    } else {
        ctx.store.take_keys_update(ctx.device)
    };
    let mut out = Response {
        otk_counts: keys.otk_counts,
        fallback_types: keys.fallback_types,
        ..Response::default()
    };
    for (user, change) in keys.lists {
        match change {
            ListChange::Changed => out.changed.push(user),
            ListChange::Left => out.left.push(user),
        }
    }
    out
}
