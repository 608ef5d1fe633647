//! A length prefix of 4 GiB allocates nothing: the server refuses it from the prefix alone,
//! before and after authentication. Alone in its own test binary so that the resident set size
//! it measures belongs to this test only.

mod common;

use common::peer::*;
use letterlock::wire::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_prefix_4_gib_allocates_nothing() {
    case(|addr| async move {
        let before = common::rss_kib();
        let mut raw = raw(&addr).await;
        raw.w
            .write_raw(&[0xff, 0xff, 0xff, 0xff, 0x10])
            .await
            .unwrap();
        let m = refused(&mut raw, ErrorCode::Protocol).await;
        assert!(m.contains("over the limit"), "{m}");
        // Also after authenticating.
        let mut raw = authed(&addr).await;
        raw.w.write_raw(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        refused(&mut raw, ErrorCode::Protocol).await;
        assert!(
            common::rss_kib() < before + 64 * 1024,
            "4 GiB prefix cost memory"
        );
    })
    .await;
}
