//! AuthorizationPolicy and RequestAuthentication in the registry: stored, reloaded after a
//! restart, and handed to exactly the services they apply to.

use std::sync::Arc;

use trellis_model::{Kind, Resource};

use super::*;
use crate::store::RedbStore;

const SECURITY: &str = r#"apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: catalog }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: orders }
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: deny-all }
spec: {}
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: catalog-readers }
spec:
  targetRef: { name: catalog }
  rules:
    - to: [{ methods: [GET] }]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: orders-no-delete }
spec:
  targetRef: { name: orders }
  action: DENY
  rules:
    - to: [{ methods: [DELETE] }]
---
apiVersion: trellis.dev/v1alpha1
kind: RequestAuthentication
metadata: { name: catalog-jwt }
spec:
  targetRef: { name: catalog }
  jwtRules:
    - issuer: https://issuer.example
      jwksUri: http://127.0.0.1:1/jwks.json
"#;

fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<&str> {
    items.iter().map(name).collect()
}

#[tokio::test(start_paused = true)]
async fn snapshots_carry_the_policies_that_apply_to_each_service() {
    let resources = trellis_model::parse_documents("s.yaml", SECURITY).expect("parse");
    let snap = build_snapshot(1, [].iter(), resources.iter());
    let catalog = &snap.services["catalog"];
    let orders = &snap.services["orders"];
    assert_eq!(
        names(&catalog.authorization, |p| &p.metadata.name),
        ["catalog-readers", "deny-all"]
    );
    assert_eq!(
        names(&orders.authorization, |p| &p.metadata.name),
        ["deny-all", "orders-no-delete"]
    );
    assert_eq!(
        names(&catalog.authentication, |a| &a.metadata.name),
        ["catalog-jwt"]
    );
    assert!(orders.authentication.is_empty());
}

#[tokio::test(start_paused = true)]
async fn policies_are_stored_published_and_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = || async {
        let store = RedbStore::open(dir.path()).expect("open store");
        Registry::start(
            Arc::new(store),
            RegistryConfig::default(),
            Arc::new(Metrics::new()),
        )
        .await
        .expect("start registry")
    };
    let (registry, tasks) = start().await;
    let mut rx = registry.subscribe();
    let applied = registry.apply("s.yaml", SECURITY).await.expect("apply");
    assert!(applied.iter().all(|a| a.action == Action::Created));
    rx.changed().await.expect("publish");
    assert_eq!(rx.borrow().services["catalog"].authorization.len(), 2);
    assert_eq!(registry.resources(Some(Kind::AuthorizationPolicy)).len(), 3);
    registry
        .delete_resource(Kind::AuthorizationPolicy, "deny-all")
        .await
        .expect("delete");
    rx.changed().await.expect("publish");
    assert_eq!(
        names(&rx.borrow().services["orders"].authorization, |p| &p
            .metadata
            .name),
        ["orders-no-delete"]
    );
    tasks.shutdown().await;
    drop(registry);

    let (registry, tasks) = start().await;
    let snap = registry.subscribe().borrow().clone();
    assert_eq!(snap.services["catalog"].authorization.len(), 1);
    assert_eq!(snap.services["catalog"].authentication.len(), 1);
    let Some(Resource::RequestAuthentication(a)) =
        registry.resource(Kind::RequestAuthentication, "catalog-jwt")
    else {
        panic!("the RequestAuthentication was not reloaded");
    };
    assert_eq!(a.spec.jwt_rules[0].issuer, "https://issuer.example");
    tasks.shutdown().await;
}
