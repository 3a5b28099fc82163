use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[tokio::test]
async fn metered_counts_both_directions() {
    let (a, mut b) = tokio::io::duplex(64);
    let activity = Arc::new(Activity::default());
    let mut m = Metered::new(a, Some(activity.clone()));
    m.write_all(b"hello").await.expect("test setup");
    b.write_all(b"abc").await.expect("test setup");
    let mut buf = [0u8; 3];
    m.read_exact(&mut buf).await.expect("test setup");
    assert_eq!((activity.read(), activity.written()), (3, 5));
}

#[tokio::test]
async fn quiet_completes_without_traffic() {
    let activity = Activity::default();
    tokio::time::timeout(
        Duration::from_secs(10),
        quiet(&activity, Duration::from_millis(50)),
    )
    .await
    .expect("an idle stream is reported quiet");
}

#[tokio::test]
async fn traffic_spaced_below_the_timeout_keeps_it_open() {
    let (a, mut b) = tokio::io::duplex(64);
    let activity = Arc::new(Activity::default());
    let mut m = Metered::new(a, Some(activity.clone()));
    let writes = async {
        for _ in 0..10 {
            m.write_all(b"x").await.expect("test setup");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    };
    let drain = async {
        let mut sink = [0u8; 16];
        loop {
            if b.read(&mut sink).await.unwrap_or(0) == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = quiet(&activity, Duration::from_millis(600)) => panic!("quiet while bytes flowed"),
        _ = writes => {}
        _ = drain => panic!("the stream closed"),
    }
    assert_eq!(activity.written(), 10);
}

#[test]
fn zero_disables_and_none_is_one_hour() {
    assert_eq!(effective(None), Some(DEFAULT_IDLE_TIMEOUT));
    assert_eq!(effective(Some(Duration::ZERO)), None);
    assert_eq!(
        effective(Some(Duration::from_secs(5))),
        Some(Duration::from_secs(5))
    );
}
