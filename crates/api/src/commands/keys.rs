//! `cairn keys create|list|revoke`.

use crate::codes;
use std::process::ExitCode;

use crate::keys::{self, Keys, Role};

/// `cairn keys …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once (standard output) and kept only as a hash.
    Create {
        /// A name for people, unique among live keys.
        #[arg(long)]
        name: String,
        /// admin, operator, approver or viewer.
        #[arg(long)]
        role: String,
        /// The identity requests with the key act as (default: the name),
        /// e.g. an approver's identity.
        #[arg(long)]
        identity: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        /// `text` for people, `json` for tools.
        #[arg(long, value_enum, default_value = "text")]
        format: super::format::Format,
    },
    /// Say whose a key is (read from CAIRN_API_KEY or standard input, never
    /// an argument); exit 1 when it is unknown or revoked.
    Check,
    /// Revoke a key by id or name.
    Revoke {
        /// The key's id or name.
        key: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs `cairn keys …`.
pub async fn run(database: &str, setup: &super::setup::SetupArgs, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let store = cairn_events::open(database).await?;
    let by = setup
        .identity
        .clone()
        .unwrap_or_else(|| format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())));
    match cmd {
        KeysCommand::Create { name, role, identity } => {
            let Some(role) = Role::parse(&role) else {
                eprintln!("error: `{role}` is not a role; use one of {}", Role::NAMES);
                return Ok(codes::exit("unknown-role"));
            };
            let identity = identity.unwrap_or_else(|| name.clone());
            let (full, key) = keys::create(&store, &name, role, &identity, &by).await?;
            eprintln!(
                "created API key `{}` ({}, acts as {}), id {}; this is the only time it is shown: Cairn keeps its SHA-256 only.",
                key.name,
                key.role.name(),
                key.identity,
                key.key_id
            );
            eprintln!("send it as `Authorization: Bearer <key>`");
            out!("{full}");
        }
        KeysCommand::List { format } => {
            let keys = Keys::load(&store).await?;
            if format == super::format::Format::Json {
                let all: Vec<serde_json::Value> = keys
                    .all()
                    .map(|k| {
                        serde_json::json!({
                            "key_id": k.key_id, "name": k.name, "role": k.role.name(),
                            "identity": k.identity, "revoked": k.revoked,
                        })
                    })
                    .collect();
                out!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut any = false;
            for k in keys.all() {
                any = true;
                out!(
                    "{}  {:<20} {:<8} acts as {:<20} {}",
                    k.key_id,
                    k.name,
                    k.role.name(),
                    k.identity,
                    if k.revoked { "revoked" } else { "live" }
                );
            }
            if !any {
                out!("no API keys; `cairn keys create --name NAME --role operator` makes one");
            }
        }
        KeysCommand::Check => {
            let presented = match std::env::var("CAIRN_API_KEY") {
                Ok(k) if !k.trim().is_empty() => k,
                _ => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line
                }
            };
            let keys = Keys::load(&store).await?;
            match keys.authenticate(presented.trim()) {
                Some(k) => out!("live: `{}` ({}), role {}, acts as {}", k.name, k.key_id, k.role.name(), k.identity),
                None => {
                    eprintln!("error: not a live key (unknown, mistyped or revoked)");
                    return Ok(codes::exit("bad-key"));
                }
            }
        }
        KeysCommand::Revoke { key, reason } => match keys::revoke(&store, &key, &by, reason).await {
            Ok(k) => out!("revoked API key `{}` ({})", k.name, k.key_id),
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(codes::exit("unknown-key"));
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
