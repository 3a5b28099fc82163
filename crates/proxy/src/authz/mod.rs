//! Authorization of inbound requests: [`normalize_path`] puts the request path in the one
//! form policies are written against, and a [`PolicySet`] (compiled from the service's
//! AuthorizationPolicy resources) decides each request from its [`RequestFacts`].
//!
//! Raw TCP connections (services with `protocol: tcp`) are decided once per connection by a
//! [`ConnectionPolicy`] (the inbound chain's network RBAC filters) from the caller's identity.
//!
//! All are pure. The inbound layer runs them in this order: normalize (reject with 400 on
//! [`PathError`]), authenticate (crate::authn), then [`PolicySet::evaluate`] (403 on
//! [`Decision::Deny`]).

mod connection;
mod path;
mod policy;

pub use connection::{ConnectionPolicy, NameMatch, Principal, RbacAction, RbacFilter, RbacPolicy};
pub use path::{MAX_PATH_LEN, PathError, is_normalized, normalize_path, path_only};
pub use policy::{DENIED_BY_POLICY, Decision, NOT_ALLOWED, PolicySet, RequestFacts};
