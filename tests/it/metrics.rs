//! GET /metrics and GET /health (SPEC 8).
