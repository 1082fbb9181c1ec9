//! A sliding sync request's query string: percent-decoding, then `pos` and `timeout`
//! as the handler reads them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use slidesync::api::{parse_query, sync_params};

fuzz_target!(|query: &str| {
    let query = parse_query(Some(query));
    match sync_params(&query, std::time::Duration::from_secs(10)) {
        Ok((_, timeout)) => assert!(timeout.as_secs() <= 120, "{timeout:?}"),
        Err(e) => assert!(e.status.is_client_error(), "{e}"),
    }
});
