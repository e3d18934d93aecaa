//! A client that never reads is disconnected; others keep receiving (SPEC 9).
