//! Resume with Last-Event-ID: replay, history caps, missedevents and the lastEventId event (SPEC 4).
