//! Redis goes away: open streams survive, refill from history, requests held during the outage (SPEC 9).
