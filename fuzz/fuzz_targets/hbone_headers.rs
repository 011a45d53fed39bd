//! Fuzzes ambit-hbone's header codecs: `:authority` (strict and with
//! hostnames), `forwarded`, `baggage` and `traceparent`. None may panic,
//! and whatever parses must survive a render → parse round trip.
#![no_main]

use ambit_hbone::headers::{
    Authority, AuthorityOptions, Baggage, Forwarded, MAX_BAGGAGE_LEN, TraceParent,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for options in [AuthorityOptions::STRICT, AuthorityOptions::WITH_HOSTNAMES] {
        if let Ok(authority) = Authority::parse(data, options) {
            let again = Authority::parse(authority.to_string().as_bytes(), options)
                .expect("a rendered authority parses");
            assert_eq!(again, authority);
        }
    }
    if let Ok(forwarded) = Forwarded::parse(data) {
        let again = Forwarded::parse(forwarded.to_string().as_bytes())
            .expect("a rendered forwarded parses");
        assert_eq!(again, forwarded);
    }
    if let Ok(baggage) = Baggage::parse(data) {
        let rendered = baggage.to_string();
        if !baggage.is_empty() && rendered.len() <= MAX_BAGGAGE_LEN {
            let again = Baggage::parse(rendered.as_bytes()).expect("a rendered baggage parses");
            assert_eq!(again, baggage);
        }
    }
    if let Ok(traceparent) = TraceParent::parse(data) {
        let again = TraceParent::parse(traceparent.to_string().as_bytes())
            .expect("a rendered traceparent parses");
        assert_eq!(again, traceparent);
    }
});
