//! The legacy pipe front: framing, parsing, execution against the registry, exact replies.

pub mod codec;
pub mod command;
pub mod execute;
pub mod reply;
pub mod server;

pub use server::{serve, PipeSettings};
