//! The nginx X-Accel-Redirect handler (SPEC 6).
