//! `istio.workload.Address` resources from arbitrary bytes: decoding never
//! panics, and whatever decodes re-encodes to bytes that decode to the same
//! value.
#![no_main]

use ambit_xds::{ADDRESS_TYPE_URL, decode_address, proto::protobuf::Any, to_any};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let any = Any {
        type_url: ADDRESS_TYPE_URL.to_owned(),
        value: data.to_vec(),
    };
    if let Ok(address) = decode_address("fuzz", &any) {
        let again = decode_address("fuzz", &to_any(&address)).expect("re-encoded address decodes");
        assert_eq!(again, address);
    }
});
