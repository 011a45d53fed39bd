//! Runnable Ambit programs live in this package as `[[example]]`s; see the README.
