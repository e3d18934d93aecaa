//! Thousands of connect/disconnect cycles leave nothing behind.
