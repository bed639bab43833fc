//! One module per subcommand.

pub mod author;
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

/// Ends a command refused by the engine: `error [code]: …` and the code's
/// exit status; a failure of Cairn's own (the store) is an error instead.
pub(crate) fn refused(e: cairn_runtime::RunError) -> anyhow::Result<std::process::ExitCode> {
    match e.code() {
        "internal" | "store-unavailable" => Err(e.into()),
        code => {
            eprintln!("error [{code}]: {e}");
            Ok(crate::codes::exit(code))
        }
    }
}

/// `NAME` or `NAME@VERSION`.
pub(crate) fn name_version(s: &str) -> anyhow::Result<(String, Option<u32>)> {
    match s.rsplit_once('@') {
        Some((n, v)) => match v.parse::<u32>() {
            Ok(v) => Ok((n.to_owned(), Some(v))),
            Err(_) => anyhow::bail!("`{s}`: the version after `@` must be a number, e.g. `{n}@2`"),
        },
        None => Ok((s.to_owned(), None)),
    }
}
