//! Streaming a phone whose VMM runs on another machine (or inside a VM): the host agent serves
//! the VMM's screen and input over TCP ([`server`]), and the control service keeps a copy of
//! the screen from it ([`client`]) that the encoder reads like a local framebuffer. The byte
//! format between the two is [`wire`].

pub(crate) mod client;
pub mod server;
pub mod wire;

pub use server::{authorized, routes, PhoneSockets, UNAUTHORIZED};

#[cfg(test)]
pub(crate) mod tests;
