//! Malformed ZDS requests are rejected with clear errors and leak no
//! descriptor. Its own test binary, so no other test opens or closes
//! descriptors while they are counted.

use std::{fs::File, os::fd::AsFd};

use ambit_xds::{
    HandlerError, ZdsClient, ZdsError, ZdsHandler, ZdsListener, ZdsMessage,
    proto::istio::workload::zds::WorkloadRequest,
    zds::{MAX_PACKET, codec},
};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("proc").count()
}

/// Counts what reaches it; everything sent in this test is malformed
/// except the final keep.
#[derive(Default)]
struct Count(usize);

impl ZdsHandler for Count {
    async fn handle(&mut self, message: ZdsMessage) -> Result<(), HandlerError> {
        assert!(matches!(message, ZdsMessage::Keep { .. }), "{message:?}");
        self.0 += 1;
        Ok(())
    }
}

fn rejected(result: Result<(), ZdsError>) -> String {
    match result {
        Err(ZdsError::Rejected { error, .. }) => error,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_requests_are_rejected_without_leaks() {
    let dir = std::env::temp_dir().join(format!("ambit-xds-leaks-{}", std::process::id()));
    // Removed when the test ends, also on failure.
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let path = dir.join("ztunnel.sock");
    let listener = ZdsListener::bind(&path).expect("bind");
    let client_path = path.clone();
    let client = tokio::spawn(async move {
        let mut count = Count::default();
        let client = ZdsClient::connect(&client_path).await.expect("connect");
        client.run(&mut count).await.map(|()| count.0)
    });
    let mut conn = listener.accept().await.expect("accept");

    let before = open_fds();
    {
        let a = File::open("/dev/null").expect("open");
        let b = File::open("/dev/null").expect("open");

        let add = codec::add_request("uid-1", None);
        let error = rejected(conn.request(&add, &[]).await);
        assert_eq!(
            error,
            "invalid zds message: add uid-1: expected exactly one netns file descriptor, got 0"
        );

        let error = rejected(conn.request(&add, &[a.as_fd(), b.as_fd()]).await);
        assert!(error.ends_with("got 2"), "{error}");

        let keep = codec::keep_request("uid-2");
        let error = rejected(conn.request(&keep, &[a.as_fd()]).await);
        assert_eq!(
            error,
            "invalid zds message: keep uid-2 must not carry file descriptors (got 1)"
        );
        let error = rejected(
            conn.request(&codec::snapshot_sent_request(), &[a.as_fd()])
                .await,
        );
        assert!(error.contains("snapshot-sent must not carry"), "{error}");
        let error = rejected(conn.request(&codec::del_request("u"), &[b.as_fd()]).await);
        assert!(error.contains("del u must not carry"), "{error}");

        // Truncated: an add cut in the middle of its uid, with an fd.
        let bytes = codec::encode_request(&add);
        let error = rejected(conn.send_raw(&bytes[..4], &[a.as_fd()], "cut add").await);
        assert_eq!(error, "invalid zds workload request");

        // Garbage.
        let error = rejected(conn.send_raw(&[0xff; 7], &[], "garbage").await);
        assert_eq!(error, "invalid zds workload request");

        // A request with no payload (e.g. from a newer agent).
        let empty = WorkloadRequest { payload: None };
        let error = rejected(conn.request(&empty, &[a.as_fd()]).await);
        assert!(error.contains("without a payload"), "{error}");

        // Larger than any valid packet: the kernel truncates it.
        let big = vec![0u8; MAX_PACKET + 100];
        let error = rejected(conn.send_raw(&big, &[b.as_fd()], "oversized").await);
        assert!(error.contains("truncated"), "{error}");
    }
    // The connection still works after all that.
    conn.keep("uid-3").await.expect("a valid keep is acked");
    assert_eq!(
        open_fds(),
        before,
        "every descriptor sent with a rejected request was closed"
    );

    drop(conn);
    assert_eq!(client.await.expect("join").expect("client"), 1);
    drop(listener);
}
