//! Identifiers shared by every stage.
//!
//! IDs are `Arc<str>`: they are cloned into many indexes (a room ID sits in every member's
//! sort index) and a clone must not allocate.

use std::sync::Arc;

/// A Matrix room ID, e.g. `!abc:example.org`.
pub type RoomId = Arc<str>;
/// A Matrix user ID, e.g. `@alice:example.org`.
pub type UserId = Arc<str>;
/// A device ID as the homeserver reports it from `/whoami`.
pub type DeviceId = Arc<str>;

/// The global, monotonic position the proxy gives every event it stores. Positions order
/// events within a room; across rooms they only say which arrived first.
pub type Position = u64;

/// A (user, device) pair: the unit a poller and a token belong to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    pub user_id: UserId,
    pub device_id: DeviceId,
}

impl DeviceKey {
    pub fn new(user_id: impl Into<UserId>, device_id: impl Into<DeviceId>) -> Self {
        Self {
            user_id: user_id.into(),
            device_id: device_id.into(),
        }
    }
}

impl std::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}|{}", self.user_id, self.device_id)
    }
}

/// Wall-clock milliseconds since the Unix epoch, as Matrix timestamps count them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
