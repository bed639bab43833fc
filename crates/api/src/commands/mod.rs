//! One module per subcommand.

pub mod demo;
pub mod events;
pub mod run;
pub mod runs;
pub mod validate;
pub mod verify;
