//! One module per subcommand.

pub mod console;
pub mod demo;
pub mod events;
pub mod export;
pub mod format;
pub mod keys;
pub mod people;
pub mod read;
pub mod recovery;
pub mod report;
pub mod run;
pub mod runs;
pub mod schedules;
pub mod setup;
pub mod subscriptions;
pub mod triggers;
pub mod validate;
pub mod verify;
pub mod workflows;
