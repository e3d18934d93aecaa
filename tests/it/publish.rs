//! Publishing by Rust, the command line, HTTP (token and loopback rule) and a raw Redis client (SPEC 5).
