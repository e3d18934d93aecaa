//! Property tests: SSE framing, query parsing, id parsing.
