//! The integration tests: one binary, a module per topic, helpers in `support`.
//!
//! Tests that need Redis start their own `redis-server` on a free loopback port; they fail
//! with a clear message when `redis-server` is not installed.

mod endpoint;
mod support;
