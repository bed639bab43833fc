//! Helpers shared by the binary's tests.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(dead_code, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

/// A `sqlite` and a `postgres` test of each `async fn NAME(url: &str)`, in
/// module `NAME`: a fresh database of each backend (PostgreSQL is required
/// under CI). Use it after `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("dir");
                super::$name(&format!("sqlite://{}", dir.path().join("cairn.db").display())).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(url) = crate::common::fresh_pg_url().await else { return };
                super::$name(&url).await;
            }
        }
    )*};
}

/// [`on_both`] on a multi-threaded runtime (two workers): for tests whose
/// servers and clients run beside each other.
#[allow(unused_macros)]
macro_rules! on_both_mt {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("dir");
                super::$name(&format!("sqlite://{}", dir.path().join("cairn.db").display())).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(url) = crate::common::fresh_pg_url().await else { return };
                super::$name(&url).await;
            }
        }
    )*};
}

/// Runs the README's shell block marked `marker` from the repository root
/// with `cairn` on the PATH, a fresh SQLite database in `dir`, its port
/// 8080 moved to a free one and `replace` applied, under `timeout`
/// seconds; every job it started is killed at the end. Its status and
/// output (stdout and stderr).
pub fn run_readme_block(
    marker: &str,
    dir: &Path,
    replace: &[(&str, &str)],
    timeout: u32,
) -> (std::process::ExitStatus, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut script = readme_block(marker).replace("8080", &port.to_string());
    for (from, to) in replace {
        script = script.replace(from, to);
    }
    let path = path_with_cairn(dir);
    let out_path = dir.join("out");
    let out = std::fs::File::create(&out_path).expect("out");
    let status = Command::new("timeout")
        .args([
            &timeout.to_string(),
            "bash",
            "-c",
            &format!("set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"),
        ])
        .current_dir(&root)
        .env("PATH", path)
        .env("CAIRN_DATABASE_URL", format!("sqlite://{}", dir.join("c.db").display()))
        .env("CAIRN_TOKEN_KEY", "readme-token-key-0123456789abcdef0123456789")
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .status()
        .expect("bash");
    (status, std::fs::read_to_string(&out_path).unwrap_or_default())
}

/// A workflow of one `echo` step of its input `n` (default 0).
pub const ECHO: &str = r#"
name: echo
inputs:
  type: object
  properties:
    n: { type: integer, default: 0 }
steps:
  - id: one
    task: echo
    with: { n: "{{ inputs.n }}" }
"#;

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

/// The shell script between `<!-- MARKER -->` and `<!-- /MARKER -->` in the
/// README, without its code fences.
pub fn readme_block(marker: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let block = readme
        .split(&format!("<!-- {marker} -->"))
        .nth(1)
        .and_then(|r| r.split(&format!("<!-- /{marker} -->")).next())
        .unwrap_or_else(|| panic!("the README's marked `{marker}` example"));
    block.lines().filter(|l| !l.starts_with("```")).collect::<Vec<_>>().join("\n")
}

/// A `PATH` on which `cairn` is the binary under test (a link in `dir/bin`).
pub fn path_with_cairn(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cairn"), bin.join("cairn")).expect("symlink");
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// Whether `script` (util-linux) is here to give a command a terminal;
/// under CI it must be.
pub fn have_script() -> bool {
    if Command::new("script").arg("--version").output().is_ok() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "`script` (util-linux) is needed under CI");
    eprintln!("SKIPPED: no `script` to make a terminal");
    false
}

/// Runs `cairn ARGS` on the database at `url` (SQLite or PostgreSQL).
pub fn cairn_url(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).env("CAIRN_DATABASE_URL", url).output().expect("run cairn")
}

/// A URL of a fresh PostgreSQL schema of the test server; `None` (with
/// SKIPPED printed) when it is unreachable outside CI, a panic under CI.
pub async fn fresh_pg_url() -> Option<String> {
    use sqlx::{AssertSqlSafe, Connection, Executor};
    let base = cairn_events::testing::pg_url();
    let mut admin = match sqlx::PgConnection::connect(&base).await {
        Ok(c) => c,
        Err(e) if cairn_events::testing::under_ci() => panic!("PostgreSQL unreachable under CI=true: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: PostgreSQL unreachable: {e}");
            return None;
        }
    };
    let schema = format!("cairn_cli_{}", uuid::Uuid::now_v7().simple());
    admin.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).await.expect("schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

/// Runs raw SQL on the database at `url` (SQLite or PostgreSQL), as a
/// tamperer or an operator with a shell would.
pub async fn run_sql(url: &str, statements: &[&str]) {
    use sqlx::{AssertSqlSafe, Connection, Executor};
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
        for s in statements {
            c.execute(AssertSqlSafe(*s)).await.expect(s);
        }
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("postgres");
        for s in statements {
            c.execute(AssertSqlSafe(*s)).await.expect(s);
        }
    }
}

/// HMAC-SHA-256 of `msg` under `key` (RFC 2104), hex: what a webhook
/// receiver or sender computes, written independently of Cairn's own.
pub fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(msg).finalize();
    hex::encode(Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize())
}
