//! The tamper-evident hash chain: canonical bytes of a stored event and the
//! SHA-256 link to its predecessor. The encoding is specified in docs/events.md
//! so that anyone can check a log without Cairn.

use sha2::{Digest, Sha256};

/// `prev_hash` of the first event of every stream.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields of a stored event that the hash covers, as stored text.
#[derive(Debug, Clone, Copy)]
pub struct HashedFields<'a> {
    /// Stream id.
    pub stream_id: &'a str,
    /// Version in the stream.
    pub stream_version: u64,
    /// Event id text.
    pub event_id: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// Schema version.
    pub schema_version: u32,
    /// `recorded_at` text.
    pub recorded_at: &'a str,
    /// Metadata JSON text.
    pub metadata: &'a str,
    /// Payload JSON text.
    pub payload: &'a str,
}

/// Canonical bytes: every field, in this order, as a u64 big-endian byte
/// length followed by its UTF-8 bytes; integers as decimal ASCII.
pub fn canonical_bytes(f: &HashedFields<'_>) -> Vec<u8> {
    let version = f.stream_version.to_string();
    let schema = f.schema_version.to_string();
    let parts: [&[u8]; 8] = [
        f.stream_id.as_bytes(),
        version.as_bytes(),
        f.event_id.as_bytes(),
        f.event_type.as_bytes(),
        schema.as_bytes(),
        f.recorded_at.as_bytes(),
        f.metadata.as_bytes(),
        f.payload.as_bytes(),
    ];
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// `hex(SHA-256(raw prev_hash bytes ‖ canonical bytes))`. A `prev_hash` that
/// is not 64 hex digits hashes as its text bytes, so a forged link still
/// produces a (wrong) hash instead of an error.
pub fn event_hash(prev_hash: &str, fields: &HashedFields<'_>) -> String {
    let mut h = Sha256::new();
    match hex::decode(prev_hash) {
        Ok(raw) if raw.len() == 32 => h.update(&raw),
        _ => h.update(prev_hash.as_bytes()),
    }
    h.update(canonical_bytes(fields));
    hex::encode(h.finalize())
}
