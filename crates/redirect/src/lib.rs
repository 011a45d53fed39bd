//! Traffic capture for a service mesh, programmed in the kernel.
#![deny(unsafe_code)]

mod error;
pub mod ipset;
pub mod mark;
mod nl;
pub mod route;

pub use self::error::{Error, Result};
