//! Graceful shutdown: SIGTERM ends streams with retry and exits 0 (SPEC 7, 8).
