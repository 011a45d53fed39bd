//! SPIFFE id parsing on arbitrary bytes: never panics, and whatever parses
//! is canonical (displays as the input) and re-parses to the same value.
#![no_main]

use ambit_identity::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = Identity::from_bytes(data) {
        assert_eq!(id.as_str().as_bytes(), data);
        let again: Identity = id.to_string().parse().expect("display re-parses");
        assert_eq!(again, id);
        let parts = Identity::new(id.trust_domain(), id.namespace(), id.service_account())
            .expect("parts rebuild the id");
        assert_eq!(parts, id);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<Identity>();
    }
});
