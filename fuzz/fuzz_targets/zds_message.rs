//! ZDS packets from arbitrary bytes, as each side receives them. The first
//! byte picks how many descriptors arrive with a request (0–2); the rules
//! (an add has exactly one, nothing else has any) must hold for whatever
//! decodes, and nothing panics.
#![no_main]

use std::{fs::File, os::fd::OwnedFd};

use ambit_xds::{
    ZdsMessage,
    zds::codec::{decode_ack, decode_hello, decode_request},
};
use libfuzzer_sys::fuzz_target;

fn fds(n: u8) -> Vec<OwnedFd> {
    (0..n % 3)
        .filter_map(|_| File::open("/dev/null").ok().map(OwnedFd::from))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let count = fds(first).len();
    match decode_request(body, fds(first)) {
        Ok(ZdsMessage::Add { uid, .. }) => {
            assert_eq!(count, 1);
            assert!(!uid.is_empty());
        }
        Ok(_) => assert_eq!(count, 0),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = decode_ack(body, Vec::new());
    let _ = decode_hello(body, Vec::new());
});
