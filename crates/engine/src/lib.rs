//! The write side of Cairn: the workflow language, validation, the pure
//! decider and the durable runner. Depends on `cairn-events` only; it never
//! reads a projection.
