//! Sliding sync extensions (MSC3885 to-device, MSC3884 e2ee, and the room-bound ones),
//! protocol-neutral: both wire dialects parse into [`ExtensionsRequest`] and serialize
//! [`ExtensionsResponse`], as MSC3575 and MSC4186 share the extension shapes.
//!
//! Every extension has `enabled`, `lists` and `rooms`, sticky across requests like lists
//! ([`Common`], merged into [`Sticky`]), and parameters of its own (a [`Params`]). A
//! room-bound extension covers the rooms in the current windows of the lists it names and
//! the rooms it names ([`Scope`]). Adding one is a module with its `Params`, response and
//! `step`, a field in [`ExtensionsRequest`], [`Extensions`] and [`ExtensionsResponse`],
//! and its wire form in `api/extensions.rs`.

pub mod account_data;
pub mod e2ee;
pub mod receipts;
pub mod to_device;
pub mod typing;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::conn::request::RoomResult;
use crate::store::devices::DeviceState;
use crate::store::room::RoomSnapshot;
use crate::store::users::{UserData, UserMembership};
use crate::store::Store;
use crate::types::RoomId;

/// What one request states of the fields every extension has; `None` keeps the sticky
/// value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Common {
    pub enabled: Option<bool>,
    /// List names, or `*` for every list.
    pub lists: Option<Vec<String>>,
    /// Room IDs, or `*` for every room subscription.
    pub rooms: Option<Vec<RoomId>>,
}

/// One extension as one request states it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtensionRequest<P> {
    pub common: Common,
    pub params: P,
}

/// An extension's own sticky parameters.
pub trait Params: Clone + Default + PartialEq {
    /// Takes what `newer` states, keeping the rest.
    fn merge(&mut self, newer: &Self);
}

impl Params for () {
    fn merge(&mut self, _: &Self) {}
}

/// The extensions one request states; `None`: unchanged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtensionsRequest {
    pub to_device: Option<ExtensionRequest<to_device::Params>>,
    pub e2ee: Option<ExtensionRequest<()>>,
    pub account_data: Option<ExtensionRequest<()>>,
    pub receipts: Option<ExtensionRequest<()>>,
    pub typing: Option<ExtensionRequest<()>>,
}

impl ExtensionsRequest {
    /// Merges a later request into this one (retried requests, see `conn`): what the
    /// later one states wins.
    pub fn merge(&mut self, later: &ExtensionsRequest) {
        merge_request(&mut self.to_device, &later.to_device);
        merge_request(&mut self.e2ee, &later.e2ee);
        merge_request(&mut self.account_data, &later.account_data);
        merge_request(&mut self.receipts, &later.receipts);
        merge_request(&mut self.typing, &later.typing);
    }
}

fn merge_request<P: Params>(
    into: &mut Option<ExtensionRequest<P>>,
    later: &Option<ExtensionRequest<P>>,
) {
    let Some(later) = later else {
        return;
    };
    let into = into.get_or_insert_with(ExtensionRequest::default);
    let common = &later.common;
    if common.enabled.is_some() {
        into.common.enabled = common.enabled;
    }
    if common.lists.is_some() {
        into.common.lists.clone_from(&common.lists);
    }
    if common.rooms.is_some() {
        into.common.rooms.clone_from(&common.rooms);
    }
    into.params.merge(&later.params);
}

/// An extension's sticky state on a connection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sticky<P> {
    pub enabled: bool,
    pub lists: Vec<String>,
    pub rooms: Vec<RoomId>,
    pub params: P,
    /// `lists`/`rooms` were set once: the `*` default applies only at the first enable.
    scoped: bool,
}

impl<P: Params> Sticky<P> {
    /// Applies what a request states. Returns whether this request turned it on, in
    /// which case it starts as if the connection were new (an extension enabled later
    /// gets its initial data too, which the Go proxy did not send).
    fn apply(&mut self, req: Option<&ExtensionRequest<P>>) -> bool {
        let Some(req) = req else {
            return false;
        };
        let was = self.enabled;
        if let Some(enabled) = req.common.enabled {
            self.enabled = enabled;
        }
        if let Some(lists) = &req.common.lists {
            self.lists.clone_from(lists);
        }
        if let Some(rooms) = &req.common.rooms {
            self.rooms.clone_from(rooms);
        }
        if self.enabled && !self.scoped {
            // Both default to everything on first enable, as in the Go proxy.
            if req.common.lists.is_none() {
                self.lists = vec![ALL.to_owned()];
            }
            if req.common.rooms.is_none() {
                self.rooms = vec![ALL.into()];
            }
            self.scoped = true;
        }
        self.params.merge(&req.params);
        self.enabled && !was
    }

    /// The rooms a room-bound extension covers (see [`Scope`]).
    pub fn scope<'a>(&'a self, windows: &'a dyn Windows) -> Scope<'a> {
        Scope {
            lists: &self.lists,
            rooms: &self.rooms,
            windows,
        }
    }
}

/// `lists`/`rooms` entry meaning every list or every room subscription.
pub const ALL: &str = "*";

/// What a connection shows, for scoping: lists and their windows, and subscriptions.
pub trait Windows {
    /// Names of the connection's lists.
    fn list_names(&self) -> Vec<&str>;
    /// Rooms in the current window of a list.
    fn window(&self, list: &str) -> Vec<RoomId>;
    /// Rooms the connection is subscribed to.
    fn subscriptions(&self) -> Vec<RoomId>;
}

/// Which rooms a room-bound extension covers: those in the current windows of the lists
/// it names (`*`: all) and those it names (`*`: every subscription; a named room counts
/// without a subscription, as in the Go proxy). Only rooms the user is joined to count:
/// naming a room never shows anything of a room the user is not in.
pub struct Scope<'a> {
    lists: &'a [String],
    rooms: &'a [RoomId],
    windows: &'a dyn Windows,
}

impl Scope<'_> {
    pub fn rooms(&self, data: &UserData) -> BTreeSet<RoomId> {
        let mut out = BTreeSet::new();
        let names = self.windows.list_names();
        let all_lists = self.lists.iter().any(|l| l == ALL);
        for name in names {
            if all_lists || self.lists.iter().any(|l| l == name) {
                out.extend(self.windows.window(name));
            }
        }
        for room in self.rooms {
            if &**room == ALL {
                out.extend(self.windows.subscriptions());
            } else {
                out.insert(room.clone());
            }
        }
        out.retain(|room| matches!(data.membership(room), Some(UserMembership::Join { .. })));
        out
    }
}

/// What an extension's step may read: the user's and the device's data as of now.
pub struct Context<'a> {
    pub user_id: &'a str,
    pub device: &'a DeviceState,
    pub data: &'a UserData,
    pub room: &'a dyn Fn(&str) -> Option<Arc<RoomSnapshot>>,
    /// The connection's lists and subscriptions, for [`Sticky::scope`].
    pub windows: &'a dyn Windows,
    /// The connection's first response: extensions send their whole current data.
    pub initial: bool,
    /// The rooms this response carries (`initial` ones are new to the client), for
    /// extensions that send data of the rooms a response shows.
    pub response_rooms: &'a BTreeMap<RoomId, RoomResult>,
    /// Where device data is acknowledged, and rooms' receipts and typing are read.
    pub store: &'a Store,
}

/// A room-bound extension's response: something per room.
#[derive(Clone, Debug, PartialEq)]
pub struct PerRoom<T> {
    pub rooms: BTreeMap<RoomId, T>,
}

impl<T> Default for PerRoom<T> {
    fn default() -> Self {
        Self {
            rooms: BTreeMap::new(),
        }
    }
}

impl<T> PerRoom<T> {
    pub fn has_data(&self) -> bool {
        !self.rooms.is_empty()
    }
}

/// What a room-bound extension sent of each room in its scope, so that a step looks only
/// at rooms new to it and rooms whose user data changed, not at every room in scope.
/// Holds at most the rooms in scope: one leaving scope is forgotten, and sent whole if
/// it comes back.
#[derive(Debug, Default)]
pub struct RoomsSent {
    /// Room → how far its data was sent (a change counter; each extension says which).
    rooms: HashMap<RoomId, u64>,
    /// The user data version looked at last.
    version: u64,
}

impl RoomsSent {
    /// The rooms of `scope` to look at, each with how far it was sent, or `None` when
    /// it is to be sent whole: new to this extension, or sent `initial` in this
    /// response.
    pub fn to_look_at(
        &mut self,
        scope: &BTreeSet<RoomId>,
        ctx: &Context<'_>,
    ) -> Vec<(RoomId, Option<u64>)> {
        self.rooms.retain(|room, _| scope.contains(room));
        // Sorted: a binary search per room in scope.
        let changed = ctx.data.changed_since(self.version);
        self.version = ctx.data.version();
        scope
            .iter()
            .filter_map(|room| {
                let initial = ctx.response_rooms.get(room).is_some_and(|r| r.initial);
                match self.rooms.get(room) {
                    Some(_) if initial => Some((room.clone(), None)),
                    Some(&sent) => changed
                        .as_ref()
                        .is_none_or(|c| c.binary_search(room).is_ok())
                        .then(|| (room.clone(), Some(sent))),
                    None => Some((room.clone(), None)),
                }
            })
            .collect()
    }

    /// Records that the room's data was sent up to `upto`.
    pub fn sent(&mut self, room: RoomId, upto: u64) {
        self.rooms.insert(room, upto);
    }
}

/// The extensions' sticky state on one connection.
#[derive(Default)]
pub struct Extensions {
    to_device: Sticky<to_device::Params>,
    e2ee: Sticky<()>,
    account_data: Sticky<()>,
    receipts: Sticky<()>,
    typing: Sticky<()>,
    account_data_sent: account_data::Sent,
    receipts_sent: RoomsSent,
    typing_sent: RoomsSent,
}

/// Each enabled extension's part of a response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtensionsResponse {
    pub to_device: Option<to_device::Response>,
    pub e2ee: Option<e2ee::Response>,
    pub account_data: Option<account_data::Response>,
    pub receipts: Option<receipts::Response>,
    pub typing: Option<typing::Response>,
}

impl ExtensionsResponse {
    /// Whether an extension has something new: a long-poll returns for it.
    pub fn has_data(&self) -> bool {
        self.to_device
            .as_ref()
            .is_some_and(to_device::Response::has_data)
            || self.e2ee.as_ref().is_some_and(e2ee::Response::has_data)
            || self
                .account_data
                .as_ref()
                .is_some_and(account_data::Response::has_data)
            || self
                .receipts
                .as_ref()
                .is_some_and(receipts::Response::has_data)
            || self.typing.as_ref().is_some_and(typing::Response::has_data)
    }
}

impl Extensions {
    /// Applies a request's extension parameters (once per request, before the first
    /// step).
    pub fn apply(&mut self, req: Option<&ExtensionsRequest>) -> Applied {
        Applied {
            to_device: self.to_device.apply(req.and_then(|r| r.to_device.as_ref())),
            e2ee: self.e2ee.apply(req.and_then(|r| r.e2ee.as_ref())),
            account_data: self
                .account_data
                .apply(req.and_then(|r| r.account_data.as_ref())),
            receipts: self.receipts.apply(req.and_then(|r| r.receipts.as_ref())),
            typing: self.typing.apply(req.and_then(|r| r.typing.as_ref())),
        }
    }

    /// Whether any enabled extension reads device data: then a change of it wakes the
    /// connection.
    pub fn wants_device(&self) -> bool {
        self.to_device.enabled || self.e2ee.enabled
    }

    /// Whether to-device messages are read: only stored ones are then read back.
    pub fn wants_to_device(&self) -> bool {
        self.to_device.enabled
    }

    /// Each enabled extension's response. `applied` says which this request turned on:
    /// those start as on a new connection.
    pub fn step(&mut self, applied: &Applied, ctx: &Context<'_>) -> ExtensionsResponse {
        let initial = |now_on: bool| ctx.initial || now_on;
        ExtensionsResponse {
            to_device: self
                .to_device
                .enabled
                .then(|| to_device::step(&self.to_device.params, ctx)),
            e2ee: self
                .e2ee
                .enabled
                .then(|| e2ee::step(initial(applied.e2ee), ctx)),
            account_data: self.account_data.enabled.then(|| {
                if initial(applied.account_data) {
                    self.account_data_sent = account_data::Sent::default();
                }
                let scope = self.account_data.scope(ctx.windows).rooms(ctx.data);
                account_data::step(&mut self.account_data_sent, &scope, ctx)
            }),
            receipts: self.receipts.enabled.then(|| {
                if initial(applied.receipts) {
                    self.receipts_sent = RoomsSent::default();
                }
                let scope = self.receipts.scope(ctx.windows).rooms(ctx.data);
                receipts::step(&mut self.receipts_sent, &scope, ctx)
            }),
            typing: self.typing.enabled.then(|| {
                if initial(applied.typing) {
                    self.typing_sent = RoomsSent::default();
                }
                let scope = self.typing.scope(ctx.windows).rooms(ctx.data);
                typing::step(&mut self.typing_sent, &scope, ctx)
            }),
        }
    }
}

/// Which extensions a request turned on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Applied {
    pub to_device: bool,
    pub e2ee: bool,
    pub account_data: bool,
    pub receipts: bool,
    pub typing: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Shown;

    impl Windows for Shown {
        fn list_names(&self) -> Vec<&str> {
            vec!["a", "b"]
        }
        fn window(&self, list: &str) -> Vec<RoomId> {
            match list {
                "a" => vec!["!a1:x".into(), "!a2:x".into()],
                _ => vec!["!b1:x".into()],
            }
        }
        fn subscriptions(&self) -> Vec<RoomId> {
            vec!["!s:x".into()]
        }
    }

    fn joined(rooms: &[&str]) -> UserData {
        let mut data = UserData::default();
        for room in rooms {
            data.rooms.insert(
                (*room).into(),
                crate::store::users::UserRoom {
                    membership: UserMembership::Join { since: 1 },
                    notification_count: 0,
                    highlight_count: 0,
                    stamp: 0,
                    replaced: false,
                },
            );
        }
        data
    }

    fn enable(lists: Option<Vec<&str>>, rooms: Option<Vec<&str>>) -> ExtensionRequest<()> {
        ExtensionRequest {
            common: Common {
                enabled: Some(true),
                lists: lists.map(|l| l.into_iter().map(str::to_owned).collect()),
                rooms: rooms.map(|r| r.into_iter().map(Into::into).collect()),
            },
            params: (),
        }
    }

    /// A step looks at rooms new to the extension and rooms that changed, not at every
    /// room in scope.
    #[tokio::test]
    async fn a_room_bound_extension_looks_only_at_new_and_changed_rooms() {
        let store = crate::store::testing::store();
        let device = store.device(&crate::types::DeviceKey::new("@a:x", "D"));
        let mut data = joined(&["!a1:x", "!a2:x", "!b1:x"]);
        let room = |_: &str| None;
        let rooms = BTreeMap::new();
        let scope: BTreeSet<RoomId> = ["!a1:x", "!a2:x", "!b1:x"]
            .into_iter()
            .map(Into::into)
            .collect();
        let mut sent = RoomsSent::default();
        let look = |data: &UserData, sent: &mut RoomsSent| {
            let ctx = Context {
                user_id: "@a:x",
                device: &device,
                data,
                room: &room,
                windows: &Shown,
                initial: false,
                store: &store,
                response_rooms: &rooms,
            };
            let looked = sent.to_look_at(&scope, &ctx);
            for (room, _) in &looked {
                sent.sent(room.clone(), 1);
            }
            looked
        };
        assert_eq!(look(&data, &mut sent).len(), 3, "all new");
        assert!(look(&data, &mut sent).is_empty(), "nothing changed");
        data.touch(&"!a2:x".into());
        assert_eq!(
            look(&data, &mut sent),
            [(RoomId::from("!a2:x"), Some(1))],
            "only the changed room, with how far it was sent"
        );
    }

    #[test]
    fn lists_and_rooms_default_to_everything_on_first_enable_only() {
        let mut sticky = Sticky::<()>::default();
        assert!(sticky.apply(Some(&enable(None, None))));
        assert_eq!(sticky.lists, ["*"]);
        assert_eq!(sticky.rooms, [RoomId::from("*")]);
        // Narrowed later, then re-enabled without naming them: they stay narrowed.
        let narrow = ExtensionRequest {
            common: Common {
                lists: Some(vec!["a".into()]),
                rooms: Some(vec![]),
                ..Common::default()
            },
            params: (),
        };
        assert!(!sticky.apply(Some(&narrow)), "already on");
        sticky.apply(Some(&ExtensionRequest {
            common: Common {
                enabled: Some(false),
                ..Common::default()
            },
            params: (),
        }));
        assert!(sticky.apply(Some(&enable(None, None))), "on again");
        assert_eq!(sticky.lists, ["a"]);
        assert!(sticky.rooms.is_empty());
        assert!(!sticky.apply(None), "an omitted extension keeps its state");
        assert!(sticky.enabled);
    }

    #[test]
    fn scope_is_the_named_lists_windows_and_rooms_the_user_is_in() {
        let data = joined(&["!a1:x", "!a2:x", "!b1:x", "!s:x", "!named:x"]);
        let mut sticky = Sticky::<()>::default();
        sticky.apply(Some(&enable(None, None)));
        let all: Vec<RoomId> = sticky.scope(&Shown).rooms(&data).into_iter().collect();
        assert_eq!(all.len(), 4, "{all:?}");
        assert!(!all.contains(&RoomId::from("!named:x")));

        let mut sticky = Sticky::<()>::default();
        sticky.apply(Some(&enable(
            Some(vec!["b"]),
            Some(vec!["!named:x", "!not-mine:x"]),
        )));
        let scoped: Vec<RoomId> = sticky.scope(&Shown).rooms(&data).into_iter().collect();
        assert_eq!(
            scoped,
            [RoomId::from("!b1:x"), RoomId::from("!named:x")],
            "a named room the user is not in is not covered"
        );
    }

    #[test]
    fn retried_requests_merge_what_each_states() {
        let mut merged = ExtensionsRequest::default();
        merged.merge(&ExtensionsRequest {
            e2ee: Some(enable(Some(vec!["a"]), None)),
            ..ExtensionsRequest::default()
        });
        merged.merge(&ExtensionsRequest {
            e2ee: Some(ExtensionRequest {
                common: Common {
                    rooms: Some(vec!["!r:x".into()]),
                    ..Common::default()
                },
                params: (),
            }),
            ..ExtensionsRequest::default()
        });
        let e2ee = merged.e2ee.unwrap();
        assert_eq!(e2ee.common.enabled, Some(true));
        assert_eq!(e2ee.common.lists, Some(vec!["a".to_owned()]));
        assert_eq!(e2ee.common.rooms, Some(vec![RoomId::from("!r:x")]));
    }
}
