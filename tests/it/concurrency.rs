//! Exactly-once under load: concurrent publishers while clients connect, leave and resume.
