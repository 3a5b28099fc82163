//! Durable state of the control plane: registered instances, applied resources and (in
//! [`IdentityStore`]) the mesh CA's roots and join tokens.
//!
//! [`Store`] is the small contract the registry needs; [`RedbStore`] implements it on one
//! embedded redb file (`<data-dir>/trellis.redb`). Every write is one committed transaction, so
//! a crash (even `kill -9`) leaves either the old or the new state. The trait is async so that a
//! networked backend (etcd) can be added later; the redb calls run on the blocking pool.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use trellis_model::{InstanceRegistration, Kind, Resource};

mod identity;
pub use identity::{IdentityStore, StoredCa, StoredRoot, StoredToken};

/// The on-disk schema this build reads and writes.
pub const SCHEMA_VERSION: u64 = 1;
/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "trellis.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const INSTANCES: TableDefinition<&str, &str> = TableDefinition::new("instances");
const RESOURCES: TableDefinition<&str, &str> = TableDefinition::new("resources");
const META_SCHEMA: &str = "schema_version";
const META_VERSION_FLOOR: &str = "snapshot_version_floor";

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A registered instance as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredInstance {
    pub registration: InstanceRegistration,
    /// Unix time, milliseconds.
    pub registered_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store {path}: already opened by another process (or another control plane in this \
         one); stop it or use another --data-dir"
    )]
    Locked { path: PathBuf },
    #[error(
        "store {path}: schema version {found} is newer than this build understands \
         ({SCHEMA_VERSION}); upgrade trellis or use another --data-dir"
    )]
    UnknownSchema { path: PathBuf, found: u64 },
    #[error("store {path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("store: record `{key}` is not valid JSON: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("store: background task failed: {0}")]
    Task(String),
}

/// What the registry persists. Each method is one atomic write (or one consistent read).
pub trait Store: Send + Sync + 'static {
    fn put_instance(&self, instance: StoredInstance) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Returns whether the instance was stored.
    fn delete_instance(&self, service: &str, id: &str) -> BoxFuture<'_, Result<bool, StoreError>>;
    fn list_instances(&self) -> BoxFuture<'_, Result<Vec<StoredInstance>, StoreError>>;
    /// Writes every resource in one transaction: all or nothing.
    fn put_resources(&self, resources: Vec<Resource>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Returns whether the resource was stored.
    fn delete_resource(&self, kind: Kind, name: &str) -> BoxFuture<'_, Result<bool, StoreError>>;
    fn list_resources(&self) -> BoxFuture<'_, Result<Vec<Resource>, StoreError>>;
    /// The lowest snapshot version the next start may use (0 when never written).
    fn version_floor(&self) -> BoxFuture<'_, Result<u64, StoreError>>;
    fn set_version_floor(&self, floor: u64) -> BoxFuture<'_, Result<(), StoreError>>;
}

pub fn instance_key(service: &str, id: &str) -> String {
    format!("{service}/{id}")
}

pub fn resource_key(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.as_str())
}

/// The redb-backed store. Cheap to clone.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl RedbStore {
    /// Opens (or creates) `<data_dir>/trellis.redb` and checks its schema version.
    /// Blocking: call it before serving, or from the blocking pool.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked { path });
            }
            Err(e) => {
                return Err(StoreError::Open {
                    path,
                    source: e.into(),
                });
            }
        };
        let open_err = |e: redb::Error| StoreError::Open {
            path: path.clone(),
            source: e,
        };
        let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| open_err(e.into()))?;
            let found = meta
                .get(META_SCHEMA)
                .map_err(|e| open_err(e.into()))?
                .map(|g| g.value());
            match found {
                None => {
                    meta.insert(META_SCHEMA, SCHEMA_VERSION)
                        .map_err(|e| open_err(e.into()))?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(StoreError::UnknownSchema { path, found }),
            }
            txn.open_table(INSTANCES).map_err(|e| open_err(e.into()))?;
            txn.open_table(RESOURCES).map_err(|e| open_err(e.into()))?;
            txn.open_table(identity::CA)
                .map_err(|e| open_err(e.into()))?;
            txn.open_table(identity::TOKENS)
                .map_err(|e| open_err(e.into()))?;
        }
        txn.commit().map_err(|e| open_err(e.into()))?;
        Ok(RedbStore { db: Arc::new(db) })
    }

    /// Runs `f` on the blocking pool with the database.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        })
    }
}

fn write<T>(
    db: &Database,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let txn = db.begin_write().map_err(redb::Error::from)?;
    let out = f(&txn)?;
    txn.commit().map_err(redb::Error::from)?;
    Ok(out)
}

fn to_json<T: Serialize>(key: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

fn list_table<T: serde::de::DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &str>,
) -> Result<Vec<T>, StoreError> {
    let txn = db.begin_read().map_err(redb::Error::from)?;
    let table = txn.open_table(table).map_err(redb::Error::from)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(redb::Error::from)? {
        let (k, v) = row.map_err(redb::Error::from)?;
        let item = serde_json::from_str(v.value()).map_err(|source| StoreError::Corrupt {
            key: k.value().to_string(),
            source,
        })?;
        out.push(item);
    }
    Ok(out)
}

fn delete_key(
    db: &Database,
    table: TableDefinition<'static, &'static str, &'static str>,
    key: String,
) -> Result<bool, StoreError> {
    write(db, |txn| {
        let mut t = txn.open_table(table).map_err(redb::Error::from)?;
        let removed = t.remove(key.as_str()).map_err(redb::Error::from)?.is_some();
        Ok(removed)
    })
}

impl Store for RedbStore {
    fn put_instance(&self, instance: StoredInstance) -> BoxFuture<'_, Result<(), StoreError>> {
        self.blocking(move |db| {
            let r = &instance.registration;
            let key = instance_key(&r.service, &r.id);
            let json = to_json(&key, &instance)?;
            write(db, |txn| {
                let mut t = txn.open_table(INSTANCES).map_err(redb::Error::from)?;
                t.insert(key.as_str(), json.as_str())
                    .map_err(redb::Error::from)?;
                Ok(())
            })
        })
    }

    fn delete_instance(&self, service: &str, id: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = instance_key(service, id);
        self.blocking(move |db| delete_key(db, INSTANCES, key))
    }

    fn list_instances(&self) -> BoxFuture<'_, Result<Vec<StoredInstance>, StoreError>> {
        self.blocking(|db| list_table(db, INSTANCES))
    }

    fn put_resources(&self, resources: Vec<Resource>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.blocking(move |db| {
            let mut rows = Vec::with_capacity(resources.len());
            for r in &resources {
                let key = resource_key(r.kind(), r.name());
                let json = to_json(&key, r)?;
                rows.push((key, json));
            }
            write(db, |txn| {
                let mut t = txn.open_table(RESOURCES).map_err(redb::Error::from)?;
                for (k, v) in &rows {
                    t.insert(k.as_str(), v.as_str())
                        .map_err(redb::Error::from)?;
                }
                Ok(())
            })
        })
    }

    fn delete_resource(&self, kind: Kind, name: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = resource_key(kind, name);
        self.blocking(move |db| delete_key(db, RESOURCES, key))
    }

    fn list_resources(&self) -> BoxFuture<'_, Result<Vec<Resource>, StoreError>> {
        self.blocking(|db| list_table(db, RESOURCES))
    }

    fn version_floor(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(redb::Error::from)?;
            let meta = txn.open_table(META).map_err(redb::Error::from)?;
            let v = meta.get(META_VERSION_FLOOR).map_err(redb::Error::from)?;
            Ok(v.map(|g| g.value()).unwrap_or(0))
        })
    }

    fn set_version_floor(&self, floor: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.blocking(move |db| {
            write(db, |txn| {
                let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
                meta.insert(META_VERSION_FLOOR, floor)
                    .map_err(redb::Error::from)?;
                Ok(())
            })
        })
    }
}

#[cfg(test)]
mod tests;
