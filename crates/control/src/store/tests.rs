//! The redb store: round trips, reopen, schema check and the single-writer lock.

use std::collections::BTreeMap;

use super::*;
use trellis_model::Protocol;

fn instance(service: &str, id: &str) -> StoredInstance {
    StoredInstance {
        registration: InstanceRegistration {
            service: service.to_string(),
            id: id.to_string(),
            address: "10.0.0.1".to_string(),
            port: 8080,
            protocol: Protocol::Grpc,
            labels: BTreeMap::from([("version".to_string(), "v2".to_string())]),
            zone: Some("z1".to_string()),
            weight: 3,
            ttl_ms: 5000,
            identity: None,
            check: None,
        },
        registered_at_ms: 1_700_000_000_000,
    }
}

const SERVICES: &str = "\
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: catalog
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: orders
";

#[tokio::test]
async fn writes_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(dir.path()).expect("open");
    store
        .put_instance(instance("catalog", "c1"))
        .await
        .expect("put");
    store
        .put_instance(instance("catalog", "c2"))
        .await
        .expect("put");
    assert!(
        store
            .delete_instance("catalog", "c2")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_instance("catalog", "c2")
            .await
            .expect("delete")
    );
    let resources = trellis_model::parse_documents("s.yaml", SERVICES).expect("parse");
    store.put_resources(resources.clone()).await.expect("put");
    assert!(
        store
            .delete_resource(Kind::Service, "orders")
            .await
            .expect("delete")
    );
    store.set_version_floor(42).await.expect("floor");
    drop(store);

    let store = RedbStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store.list_instances().await.expect("list"),
        vec![instance("catalog", "c1")]
    );
    assert_eq!(
        store.list_resources().await.expect("list"),
        vec![resources[0].clone()]
    );
    assert_eq!(store.version_floor().await.expect("floor"), 42);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(RedbStore::open(dir.path()).expect("open"));
    {
        let db = Database::create(dir.path().join(FILE_NAME)).expect("raw open");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(META_SCHEMA, 99)
            .expect("insert");
        txn.commit().expect("commit");
    }
    match RedbStore::open(dir.path()) {
        Err(e @ StoreError::UnknownSchema { found: 99, .. }) => {
            assert!(e.to_string().contains("schema version 99"), "{e}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[test]
fn second_open_is_refused_while_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = RedbStore::open(dir.path()).expect("open");
    match RedbStore::open(dir.path()) {
        Err(StoreError::Locked { .. }) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("the store must not open twice"),
    }
    drop(first);
    RedbStore::open(dir.path()).expect("open after the first closed");
}
