//! The retry loop's limits with no cluster behind it: every call gives up
//! after `attempts_max`, per-node calls are tried once, and a node that
//! accepts connections but never answers runs into the call's deadline.

use std::net::TcpListener;
use std::time::Duration;
use std::time::Instant;

use txlog_client::Client;
use txlog_client::ClientError;
use txlog_client::ClientOptions;

fn options(attempts_max: u32) -> ClientOptions {
    ClientOptions {
        rpc_timeout: Duration::from_millis(300),
        attempts_max,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(2),
        connect_timeout: Duration::from_millis(300),
    }
}

/// A port where nothing listens (bound, then released).
fn closed_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// A node that accepts TCP connections and never says a word; the listener
/// lives as long as the returned value.
fn silent_node() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    (listener, address)
}

/// Leader-bound log calls and membership calls to a down cluster both end
/// in `Exhausted` after exactly `attempts_max` attempts; a per-node call
/// fails after one.
#[tokio::test]
async fn calls_give_up_after_attempts_max() {
    let client = Client::new(&closed_address(), options(3)).unwrap();
    let err = client.read(1, 1, None, false).await.unwrap_err();
    assert!(matches!(err, ClientError::Exhausted { attempts: 3, .. }), "{err}");
    assert!(err.is_retryable());
    let err = client.remove_node(7).await.unwrap_err();
    assert!(matches!(err, ClientError::Exhausted { attempts: 3, .. }), "{err}");
    let err = client.node_status(&closed_address()).await.unwrap_err();
    assert!(matches!(err, ClientError::Status(_)), "{err}");
}

/// A silent node: a unary call, a stream opening and a per-node admin call
/// each end at their deadline instead of hanging.
#[tokio::test]
async fn silent_node_runs_into_deadlines() {
    let (_listener, address) = silent_node();
    let client = Client::new(&address, options(2)).unwrap();

    let started = Instant::now();
    let err = client.append_one("orders", b"t-1", b"p").await.unwrap_err();
    assert!(matches!(err, ClientError::Exhausted { attempts: 2, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    let started = Instant::now();
    let Err(err) = client.subscribe(1, None).await else {
        panic!("a stream from a silent node");
    };
    assert!(matches!(err, ClientError::Exhausted { attempts: 2, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    let started = Instant::now();
    let err = client.node_status(&address).await.unwrap_err();
    assert!(matches!(err, ClientError::Status(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
