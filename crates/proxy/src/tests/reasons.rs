//! Every reason the proxy answers with is one `trellis describe reason` can explain.

use crate::metrics::LOCAL_REASONS;

#[test]
fn every_local_reason_is_explained() {
    let rest = LOCAL_REASONS.iter().skip_while(|r| **r == "other");
    for token in rest.chain([&trellis_model::wire::RATE_LIMITED_REASON]) {
        assert!(
            trellis_model::reason::explain(token).is_some(),
            "`{token}` has no entry in trellis_model::reason::ALL"
        );
    }
}
