//! cloudphone: control service, host agent and CLI.
fn main() {}
