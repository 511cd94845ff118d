//! The guest phone agent.
fn main() {}
