//! How a command prints what it found: `--format text|json`.

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people (coloured on a terminal).
    Text,
    /// JSON, for tools.
    Json,
}
