//! API keys: created and revoked as events of the `apikeys` stream (so
//! both are in the audit log), shown once, stored only as a SHA-256, and
//! compared in constant time. A key is `cairn_<id>_<secret>`: the id finds
//! the record, the hash of the whole key proves it.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use cairn_events::{
    API_KEYS_STREAM, ApiKeyCreated, ApiKeyRevoked, Event, EventStore, ExpectedVersion, Metadata, NewEvent,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Everything, keys included.
    Admin,
    /// Workflows and runs: publish, start, cancel, resume.
    Operator,
    /// Answer forms and approvals it is listed for, and read.
    Approver,
    /// Read only.
    Viewer,
    /// Poll task queues, heartbeat, complete and fail tasks, and nothing
    /// else (not even read): for external task workers.
    Worker,
}

impl Role {
    /// Every role's name.
    pub const NAMES: &'static str = "admin, operator, approver, viewer, worker";

    /// Whether a key of this role may call what needs `needed`: the task
    /// operations (`worker`) admit workers, operators and admins; the
    /// others, this role or a stronger one (admin > operator > approver >
    /// viewer), never a worker.
    pub fn may(self, needed: Role) -> bool {
        match (self, needed) {
            (_, Role::Worker) => matches!(self, Role::Admin | Role::Operator | Role::Worker),
            (Role::Worker, _) => false,
            _ => self <= needed,
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "approver" => Role::Approver,
            "viewer" => Role::Viewer,
            "worker" => Role::Worker,
            _ => return None,
        })
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Viewer => "viewer",
            Role::Worker => "worker",
        }
    }
}

/// A key as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Public id.
    pub key_id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The identity it acts as.
    pub identity: String,
    /// SHA-256 of the key.
    pub key_hash: String,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// Every key, folded from the `apikeys` stream.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: BTreeMap<String, Key>,
    version: u64,
}

fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl Keys {
    /// Reads the keys.
    pub async fn load(store: &Arc<dyn EventStore>) -> anyhow::Result<Keys> {
        let events = store.read_stream(API_KEYS_STREAM, 1).await?;
        let mut k = Keys { version: events.len() as u64, ..Keys::default() };
        for e in &events {
            match Event::decode(e)? {
                Event::ApiKeyCreated(c) => {
                    let role = Role::parse(&c.role).unwrap_or(Role::Viewer);
                    k.keys.insert(
                        c.key_id.clone(),
                        Key {
                            key_id: c.key_id,
                            name: c.name,
                            role,
                            identity: c.identity,
                            key_hash: c.key_hash,
                            revoked: false,
                        },
                    );
                }
                Event::ApiKeyRevoked(r) => {
                    if let Some(key) = k.keys.get_mut(&r.key_id) {
                        key.revoked = true;
                    }
                }
                _ => {}
            }
        }
        Ok(k)
    }

    /// Every key, revoked ones included.
    pub fn all(&self) -> impl Iterator<Item = &Key> {
        self.keys.values()
    }

    /// The live key a presented secret is, if any: the id picks the record,
    /// the SHA-256 of the whole key is compared in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<&Key> {
        let id = presented.strip_prefix("cairn_")?.split('_').next()?;
        let key = self.keys.get(id).filter(|k| !k.revoked)?;
        bool::from(sha256(presented).as_bytes().ct_eq(key.key_hash.as_bytes())).then_some(key)
    }

    /// The live key with this id or name.
    pub fn find(&self, id_or_name: &str) -> Option<&Key> {
        self.keys
            .get(id_or_name)
            .filter(|k| !k.revoked)
            .or_else(|| self.keys.values().find(|k| !k.revoked && k.name == id_or_name))
    }
}

/// Appends one event to the keys stream if it is still at `version` (a
/// conflict means another key changed meanwhile: the caller looks again).
async fn append(
    store: &Arc<dyn EventStore>,
    version: u64,
    event: Event,
    by: &str,
) -> Result<cairn_events::AppendResult, cairn_events::StoreError> {
    store
        .append(API_KEYS_STREAM, ExpectedVersion::Exact(version), vec![NewEvent::from_event(&event, Metadata::by(by))])
        .await
}

/// Creates a key; returns it (to show once) and its record.
pub async fn create(
    store: &Arc<dyn EventStore>,
    name: &str,
    role: Role,
    identity: &str,
    by: &str,
) -> anyhow::Result<(String, Key)> {
    anyhow::ensure!(
        !name.trim().is_empty() && name.len() <= 64,
        "a key needs a name of 1 to 64 characters, e.g. `--name ci-deploy`"
    );
    loop {
        let keys = Keys::load(store).await?;
        if let Some(k) = keys.all().find(|k| !k.revoked && k.name == name) {
            anyhow::bail!("a live key is already named `{name}` ({}); revoke it first or pick another name", k.key_id);
        }
        let key_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let secret: String =
            [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].iter().map(|u| u.simple().to_string()).collect();
        let full = format!("cairn_{key_id}_{secret}");
        let event = ApiKeyCreated {
            key_id: key_id.clone(),
            name: name.to_owned(),
            role: role.name().into(),
            identity: identity.to_owned(),
            key_hash: sha256(&full),
            created_by: by.to_owned(),
        };
        match append(store, keys.version, Event::ApiKeyCreated(event.clone()), by).await {
            Ok(_) => {
                let key = Key {
                    key_id,
                    name: event.name,
                    role,
                    identity: event.identity,
                    key_hash: event.key_hash,
                    revoked: false,
                };
                return Ok((full, key));
            }
            // Another key was created meanwhile: check the name again.
            Err(err) if err.is_conflict() => continue,
            Err(err) => return Err(err).context("recording the key"),
        }
    }
}

/// Revokes the live key with this id or name.
pub async fn revoke(
    store: &Arc<dyn EventStore>,
    id_or_name: &str,
    by: &str,
    reason: Option<String>,
) -> anyhow::Result<Key> {
    loop {
        let keys = Keys::load(store).await?;
        let Some(key) = keys.find(id_or_name).cloned() else {
            let live: Vec<String> =
                keys.all().filter(|k| !k.revoked).map(|k| format!("{} ({})", k.key_id, k.name)).collect();
            anyhow::bail!(
                "no live key `{id_or_name}`; live keys: {}",
                if live.is_empty() { "none".to_owned() } else { live.join(", ") }
            );
        };
        let e = Event::ApiKeyRevoked(ApiKeyRevoked {
            key_id: key.key_id.clone(),
            revoked_by: by.to_owned(),
            reason: reason.clone(),
        });
        match append(store, keys.version, e, by).await {
            Ok(_) => return Ok(Key { revoked: true, ..key }),
            Err(err) if err.is_conflict() => continue,
            Err(err) => return Err(err).context("recording the revocation"),
        }
    }
}
