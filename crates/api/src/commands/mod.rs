//! One module per subcommand.

pub mod demo;
pub mod events;
pub mod read;
pub mod run;
pub mod runs;
pub mod validate;
pub mod verify;
