//! The standalone server's first look at a plain connection: whatever bytes a client sends,
//! sorting them never panics, a stream request's head ends within them, and the decision on a
//! complete head does not change with the bytes that follow it (a pipelined request).
#![no_main]

use libfuzzer_sys::fuzz_target;
use redisse::fuzzing::request_head;

fuzz_target!(|bytes: &[u8]| {
    if let Some(Some(len)) = request_head(bytes) {
        assert!(len <= bytes.len());
        assert_eq!(request_head(&bytes[..len]), Some(Some(len)));
    }
});
