//! Durable identity state: the mesh CA's roots (certificates and private keys) and the join
//! tokens, in two more tables of the same redb file. The tables are additive, so the schema
//! version stays 1: an older store simply gains them on the next open.
//!
//! This is a trait of its own ([`IdentityStore`]) rather than more methods on
//! [`super::Store`], so the registry and its test doubles never see CA keys.

use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{BoxFuture, RedbStore, StoreError, to_json, write};

pub(super) const CA: TableDefinition<&str, &str> = TableDefinition::new("ca");
pub(super) const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("join_tokens");
const CA_STATE: &str = "state";

/// One trust-bundle root as stored. The private key is PEM (PKCS#8) in clear: the data
/// directory must be readable by the control plane only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoot {
    pub cert_pem: String,
    pub key_pem: String,
    /// Unix time, milliseconds.
    pub added_at_ms: u64,
}

/// The whole CA state: the roots of the trust bundle and which one signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCa {
    pub roots: Vec<StoredRoot>,
    /// SHA-256 fingerprint (lowercase hex of the DER) of the signing root.
    pub active: String,
}

/// A join token as stored: only the SHA-256 of the token text is kept (it is the table key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub spiffe_id: String,
    pub namespace: String,
    pub service: String,
    /// Unix time, milliseconds.
    pub created_at_ms: u64,
    /// Unix time, milliseconds.
    pub expires_at_ms: u64,
}

/// What the certificate authority persists. Each method is one atomic write or one read.
pub trait IdentityStore: Send + Sync + 'static {
    fn ca(&self) -> BoxFuture<'_, Result<Option<StoredCa>, StoreError>>;
    fn put_ca(&self, ca: StoredCa) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Stores a token under `hash` (lowercase hex SHA-256 of the token text).
    fn put_token(&self, hash: String, token: StoredToken) -> BoxFuture<'_, Result<(), StoreError>>;
    fn token(&self, hash: String) -> BoxFuture<'_, Result<Option<StoredToken>, StoreError>>;
    /// Deletes tokens that expired before `now_ms`; returns how many.
    fn delete_expired_tokens(&self, now_ms: u64) -> BoxFuture<'_, Result<usize, StoreError>>;
}

fn read_json<T: serde::de::DeserializeOwned>(
    db: &redb::Database,
    table: TableDefinition<&str, &str>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read().map_err(redb::Error::from)?;
    let t = txn.open_table(table).map_err(redb::Error::from)?;
    let Some(v) = t.get(key).map_err(redb::Error::from)? else {
        return Ok(None);
    };
    serde_json::from_str(v.value())
        .map(Some)
        .map_err(|source| StoreError::Corrupt {
            key: key.to_string(),
            source,
        })
}

fn put_json(
    db: &redb::Database,
    table: TableDefinition<'static, &'static str, &'static str>,
    key: &str,
    json: &str,
) -> Result<(), StoreError> {
    write(db, |txn| {
        let mut t = txn.open_table(table).map_err(redb::Error::from)?;
        t.insert(key, json).map_err(redb::Error::from)?;
        Ok(())
    })
}

impl IdentityStore for RedbStore {
    fn ca(&self) -> BoxFuture<'_, Result<Option<StoredCa>, StoreError>> {
        self.blocking(|db| read_json(db, CA, CA_STATE))
    }

    fn put_ca(&self, ca: StoredCa) -> BoxFuture<'_, Result<(), StoreError>> {
        self.blocking(move |db| {
            let json = to_json(CA_STATE, &ca)?;
            put_json(db, CA, CA_STATE, &json)
        })
    }

    fn put_token(&self, hash: String, token: StoredToken) -> BoxFuture<'_, Result<(), StoreError>> {
        self.blocking(move |db| {
            let json = to_json(&hash, &token)?;
            put_json(db, TOKENS, &hash, &json)
        })
    }

    fn token(&self, hash: String) -> BoxFuture<'_, Result<Option<StoredToken>, StoreError>> {
        self.blocking(move |db| read_json(db, TOKENS, &hash))
    }

    fn delete_expired_tokens(&self, now_ms: u64) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.blocking(move |db| {
            write(db, |txn| {
                let mut t = txn.open_table(TOKENS).map_err(redb::Error::from)?;
                let mut removed = 0;
                t.retain(|_, v| {
                    // An unreadable record is kept for an operator to inspect.
                    let expired = serde_json::from_str::<StoredToken>(v)
                        .is_ok_and(|tok| tok.expires_at_ms < now_ms);
                    removed += usize::from(expired);
                    !expired
                })
                .map_err(redb::Error::from)?;
                Ok(removed)
            })
        })
    }
}
