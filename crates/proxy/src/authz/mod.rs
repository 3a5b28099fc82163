//! Authorization of inbound requests: [`normalize_path`] puts the request path in the one
//! form policies are written against, and a [`PolicySet`] (compiled from the service's
//! AuthorizationPolicy resources) decides each request from its [`RequestFacts`].
//!
//! Both are pure. The inbound layer runs them in this order: normalize (reject with 400 on
//! [`PathError`]), authenticate (crate::authn), then [`PolicySet::evaluate`] (403 on
//! [`Decision::Deny`]).

mod path;
mod policy;

pub use path::{MAX_PATH_LEN, PathError, is_normalized, normalize_path, path_only};
pub use policy::{DENIED_BY_POLICY, Decision, NOT_ALLOWED, PolicySet, RequestFacts};
