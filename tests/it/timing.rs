//! Long polling and heartbeats, on tokio's paused clock where possible.
