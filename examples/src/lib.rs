//! Runnable Ambit programs live in this package as `[[example]]`s (see the
//! README); this library holds the topology code they and the end-to-end
//! tests share.
#![forbid(unsafe_code)]

pub mod httpapp;
pub mod localmesh;
