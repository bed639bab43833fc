//! The read side of Cairn: projection workers with transactional checkpoints
//! and the read models built from the event log. Depends on `cairn-events`
//! only; it never calls the engine.
