//! The replay body sends its data and trailers once per copy, and every copy starts afresh.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::Body;
use http_body_util::BodyExt;

use super::{Replay, ReqBody};

#[tokio::test]
async fn a_replay_sends_data_then_trailers_and_restarts_fresh() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let original = Replay::new(Bytes::from_static(b"hello"), Some(trailers));
    for _ in 0..2 {
        let body = ReqBody::Replay(original.fresh());
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let collected = body.collect().await.expect("infallible");
        let t = collected.trailers().cloned();
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
        assert_eq!(
            t.and_then(|t| t.get("grpc-status").cloned()),
            Some(HeaderValue::from_static("0"))
        );
    }
}

#[tokio::test]
async fn an_empty_replay_is_at_its_end() {
    let body = ReqBody::Replay(Replay::default());
    assert!(body.is_end_stream());
    assert!(
        body.collect()
            .await
            .expect("infallible")
            .to_bytes()
            .is_empty()
    );
}
