//! What every command that runs workflows shares: the config file
//! (providers, models, prices, email, people), the prompt templates, the
//! resume-token key, the identity the user acts as, and the engine built
//! from them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_runtime::Config;
use cairn_runtime::{Engine, TaskRegistry};

/// Global options about where Cairn runs.
#[derive(Debug, Clone, clap::Args)]
pub struct SetupArgs {
    /// The config file: AI providers and models with prices, email, people
    /// (default: ./cairn.yaml when it exists).
    #[arg(long, global = true, env = "CAIRN_CONFIG")]
    pub config: Option<PathBuf>,
    /// The directory of prompt templates, `ID@VERSION.yaml` (default:
    /// `prompts` beside the config file, else ./prompts).
    #[arg(long, global = true, env = "CAIRN_PROMPTS")]
    pub prompts: Option<PathBuf>,
    /// The identity to act as when submitting forms and deciding approvals
    /// (default: the config's `identity`).
    #[arg(long = "as", global = true, env = "CAIRN_IDENTITY", value_name = "IDENTITY")]
    pub identity: Option<String>,
}

impl SetupArgs {
    /// The identity to act as, if one is known.
    pub fn identity(&self, config: &Config) -> Option<String> {
        self.identity.clone().or_else(|| config.identity.clone())
    }
}

/// Reads the config, prompt templates and model overrides, and the token
/// key of `database` when one is given.
pub fn config(args: &SetupArgs, database: Option<&str>) -> anyhow::Result<Config> {
    let path = match &args.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from("cairn.yaml")).filter(|p| p.exists()),
    };
    let mut config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let prompts = match (&args.prompts, &path) {
        (Some(d), _) => d.clone(),
        (None, Some(p)) => p.parent().map_or_else(|| PathBuf::from("prompts"), |d| d.join("prompts")),
        (None, None) => PathBuf::from("prompts"),
    };
    config.load_prompts(&prompts)?;
    if let Some(db) = database {
        config.token_key = token_key(db)?;
    }
    Ok(config.with_overrides(std::env::vars()))
}

/// The key resume tokens are derived with: `CAIRN_TOKEN_KEY`, else a file
/// beside the SQLite database (`token.key`) or `.cairn/token.key` for
/// PostgreSQL, made with 32 random bytes the first time. Every process that
/// shows or checks tokens for a database must use the same key.
pub fn token_key(database: &str) -> anyhow::Result<Vec<u8>> {
    if let Ok(k) = std::env::var("CAIRN_TOKEN_KEY")
        && !k.trim().is_empty()
    {
        return Ok(k.trim().as_bytes().to_vec());
    }
    let path = match database.strip_prefix("sqlite://") {
        Some(rest) => {
            let file = rest.split('?').next().unwrap_or(rest);
            Path::new(file).parent().map_or_else(|| PathBuf::from("token.key"), |d| d.join("token.key"))
        }
        None => PathBuf::from(".cairn/token.key"),
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key = text.trim().as_bytes().to_vec();
        anyhow::ensure!(
            key.len() >= 32,
            "{} holds a key of {} bytes; delete it to make a new one",
            path.display(),
            key.len()
        );
        return Ok(key);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key: String = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].iter().map(|u| u.simple().to_string()).collect();
    write_private(&path, &key).with_context(|| format!("writing the token key {}", path.display()))?;
    // Read back: a process that made it first wins.
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().as_bytes().to_vec())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Ok(mut f) => f.write_all(text.as_bytes()),
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// An engine on `database` with the built-in tasks, the secrets and the config.
pub async fn engine(database: &str, args: &SetupArgs, secrets: cairn_runtime::Secrets) -> anyhow::Result<Engine> {
    let config = config(args, Some(database))?;
    let store = cairn_events::open(database).await?;
    let engine = Engine::new(store.clone(), TaskRegistry::builtin()).with_secrets(secrets).with_config(config);
    if let Some(id) = engine.worker_id() {
        WORKERS.lock().unwrap_or_else(|p| p.into_inner()).push((store, id.to_owned()));
    }
    Ok(engine)
}

/// The workers the engines of this command made, retired when it ends.
static WORKERS: std::sync::Mutex<Vec<(std::sync::Arc<dyn cairn_events::EventStore>, String)>> =
    std::sync::Mutex::new(Vec::new());

/// Retires the workers of this command's engines: a run one of them still
/// holds (a command cut short by an error) is free for another worker at
/// once instead of after the lease timeout.
pub async fn retire_workers() {
    let workers = std::mem::take(&mut *WORKERS.lock().unwrap_or_else(|p| p.into_inner()));
    for (store, id) in workers {
        if let Err(e) = store.retire(&id).await {
            tracing::debug!(worker = %id, error = %e, "cannot retire the worker; its leases expire");
        }
    }
}

/// Secrets from the environment and an optional file.
pub fn load_secrets(file: Option<&std::path::Path>) -> anyhow::Result<cairn_runtime::Secrets> {
    let mut secrets = cairn_runtime::Secrets::from_env();
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading secrets file {}", f.display()))?;
        secrets.add_file(&text).map_err(|e| anyhow::anyhow!("secrets file {}: {e}", f.display()))?;
    }
    Ok(secrets)
}
