//! The redisse binary: --help, options, exit statuses, the first log line (SPEC 7).
