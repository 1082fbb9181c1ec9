//! Access tokens: from the `Authorization` header or the `access_token` query
//! parameter, and the encrypted copy read back from the database.

#![no_main]

use std::sync::OnceLock;

use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use slidesync::api::{auth, parse_query};
use slidesync::store::tokens::{token_hash, TokenCipher};

fn cipher() -> &'static TokenCipher {
    static CIPHER: OnceLock<TokenCipher> = OnceLock::new();
    CIPHER.get_or_init(|| TokenCipher::new("fuzz"))
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the rest goes, so one corpus covers all three inputs.
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            let mut headers = HeaderMap::new();
            // hyper refuses what is not a valid header value before the handler sees it.
            if let Ok(value) = HeaderValue::from_bytes(rest) {
                headers.insert(header::AUTHORIZATION, value);
            }
            check_token(&headers, &Default::default());
        }
        1 => {
            let query = parse_query(Some(&String::from_utf8_lossy(rest)));
            check_token(&HeaderMap::new(), &query);
        }
        _ => {
            // The database column is text; whatever is in it decrypts or errors.
            let text = String::from_utf8_lossy(rest);
            let _ = cipher().decrypt(&text);
            // And any token, read as one, is stored in a form that reads back.
            assert_eq!(
                cipher().decrypt(&cipher().encrypt(&text)).as_deref(),
                Ok(&*text)
            );
        }
    }
});

fn check_token(headers: &HeaderMap, query: &std::collections::HashMap<String, String>) {
    match auth::token(headers, query) {
        Ok(token) => {
            assert!(!token.is_empty());
            assert_eq!(token_hash(token).len(), 64);
        }
        Err(e) => assert!(e.status.is_client_error(), "{e}"),
    }
}
