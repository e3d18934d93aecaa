//! Bad input gets a clear answer, loses nothing, never panics (SPEC 9).
