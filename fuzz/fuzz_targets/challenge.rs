//! What a hostile registry or token server sends the client: `WWW-Authenticate` challenges
//! and the token server's JSON answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_client::fuzzing::{challenges, token_answer};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        for (scheme, params) in challenges(s) {
            assert_eq!(scheme, scheme.to_ascii_lowercase());
            assert!(params.keys().all(|k| *k == k.to_ascii_lowercase()));
        }
    }
    if let Ok((token, valid_for)) = token_answer(data) {
        assert!(!token.is_empty());
        // The client adds this to `Instant::now()`: it must not overflow.
        let _ = std::time::Instant::now() + valid_for;
    }
});
