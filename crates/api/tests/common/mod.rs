//! Helpers shared by the binary's tests.
#![allow(dead_code, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `cairn ARGS` on the SQLite database `db`.
pub fn cairn(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("CAIRN_DATABASE_URL", format!("sqlite://{}", db.display()))
        .output()
        .expect("run cairn")
}

/// Stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The path of a file in examples/.
pub fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name).display().to_string()
}
