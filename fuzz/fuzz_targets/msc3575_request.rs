//! A client's MSC3575 request body, as the handler parses it: `msc3575::parse` checks the
//! nesting depth first, then deserializes and validates every limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use slidesync::api::msc3575;

fuzz_target!(|body: &[u8]| {
    // Anything a client sends is a request or a 4xx naming what is wrong, never a 500.
    if let Err(e) = msc3575::parse(body) {
        assert!(e.status.is_client_error(), "{e}");
    }
});
