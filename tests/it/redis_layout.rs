//! The bytes our publisher leaves in Redis are exactly the gem's layout (SPEC 2).
