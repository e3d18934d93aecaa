//! The library API: an axum app with its own tower layers and channel function (SPEC 6).
