//! `istio.security.Authorization` resources from arbitrary bytes: decoding
//! never panics, and whatever decodes round-trips.
#![no_main]

use ambit_xds::{AUTHORIZATION_TYPE_URL, decode_authorization, proto::protobuf::Any, to_any};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let any = Any {
        type_url: AUTHORIZATION_TYPE_URL.to_owned(),
        value: data.to_vec(),
    };
    if let Ok(policy) = decode_authorization("fuzz", &any) {
        let again =
            decode_authorization("fuzz", &to_any(&policy)).expect("re-encoded policy decodes");
        assert_eq!(again, policy);
    }
});
