//! One module per subcommand.

pub mod demo;
pub mod events;
pub mod verify;
