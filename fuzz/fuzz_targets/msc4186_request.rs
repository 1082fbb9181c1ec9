//! A client's MSC4186 request body, in either of its shapes, as the handler parses it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use slidesync::api::msc4186;

fuzz_target!(|body: &[u8]| {
    if let Err(e) = msc4186::parse(body) {
        assert!(e.status.is_client_error(), "{e}");
    }
});
