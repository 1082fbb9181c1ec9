//! A homeserver's v2 `/sync` response, through the whole ingest path: `wire::clamp`,
//! `wire::parse_sync`, `wire::parse_event` on each event, and the store updates of
//! `ingest::v2::process`, with a [`Persist`] that discards writes (no I/O).

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use slidesync::ingest::metrics::PollerMetrics;
use slidesync::ingest::v2::process;
use slidesync::store::writer::WriteQueue;
use slidesync::store::Store;
use slidesync::types::{DeviceKey, UserId};

/// The user whose device polled; invites and leaves are read relative to them.
const ME: &str = "@a:x";

/// The benches' [`Persist`] that discards writes.
#[path = "../../benches/support/discard.rs"]
mod discard;
use discard::Discard;

/// One runtime and one writer for the whole run: starting a writer task per input would
/// cost more than most inputs. A current-thread runtime, so the writer runs only inside
/// `block_on` and each input's work is done when `block_on` returns. Timers for the
/// writer's idle check; it is woken, not timed, when there is work.
fn runtime() -> &'static (tokio::runtime::Runtime, WriteQueue) {
    static RT: OnceLock<(tokio::runtime::Runtime, WriteQueue)> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime");
        let (queue, _writer) = {
            let _in_rt = rt.enter();
            WriteQueue::spawn(Arc::new(Discard::default()), 1 << 20)
        };
        (rt, queue)
    })
}

fuzz_target!(|body: &[u8]| {
    let (rt, queue) = runtime();
    // A fresh store per input, so an input's outcome does not depend on the ones before.
    let store = Store::new(queue.clone(), 1);
    let user = store.user_or_insert(&UserId::from(ME));
    let metrics = PollerMetrics::default();
    rt.block_on(async {
        if process(&store, &user, &DeviceKey::new(ME, "DEV"), body, &metrics).await.is_ok() {
            // The same response again, as a second poller in the room delivers it:
            // every event is now a duplicate.
            process(&store, &user, &DeviceKey::new(ME, "DEV"), body, &metrics)
                .await
                .expect("a response that applied once applies again");
        }
        // Hands the credits back before the next input.
        store.queue().flush().await;
    });
});
