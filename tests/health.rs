//! Standard gRPC health and reflection on real nodes: every node is SERVING
//! once it has a leader and is caught up; a leader that lost its quorum turns
//! NOT_SERVING and recovers when a follower returns; reflection lists txlog's
//! services (what `grpcurl` and `grpc_health_probe` rely on).

mod common;

use std::time::Duration;
use std::time::Instant;

use common::TestCluster;
use common::SERIAL;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

const WAIT: Duration = Duration::from_secs(30);

/// The status `address` reports for `service` (`""` is the whole server).
async fn health(cluster: &TestCluster, address: &str, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(cluster.channel(address).await?);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_string(),
    });
    request.set_timeout(Duration::from_secs(1));
    let response = client.check(request).await.ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

async fn wait_for_health(cluster: &TestCluster, id: u64, service: &str, expected: ServingStatus) {
    let address = cluster.node(id).address.clone();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = health(cluster, &address, service).await;
        if status == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} service {service:?}: {status:?}, expected {expected:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Service names reflection lists on `address`.
async fn reflected_services(cluster: &TestCluster, address: &str) -> Vec<String> {
    let mut client = ServerReflectionClient::new(cluster.channel(address).await.expect("connect"));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection call")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// Health follows leadership and quorum contact; reflection lists every service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start_with_ids(&[11, 22, 33], &[]);
    let leader = cluster.wait_for_leader(WAIT).await;
    for id in cluster.ids() {
        wait_for_health(&cluster, id, "", ServingStatus::Serving).await;
        wait_for_health(&cluster, id, "txlog.v1.LogService", ServingStatus::Serving).await;
        wait_for_health(&cluster, id, "txlog.v1.AdminService", ServingStatus::Serving).await;
    }
    assert_eq!(
        health(&cluster, &cluster.node(leader).address, "txlog.v1.NoSuchService").await,
        None,
        "an unknown service is an error (NOT_FOUND), not a status"
    );

    let services = reflected_services(&cluster, &cluster.node(leader).address).await;
    for expected in ["txlog.v1.LogService", "txlog.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == expected), "{expected} not in {services:?}");
    }

    // Without its followers the leader has no quorum: NOT_SERVING, AdminService still up.
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    for &id in &followers {
        cluster.kill(id);
    }
    wait_for_health(&cluster, leader, "", ServingStatus::NotServing).await;
    wait_for_health(&cluster, leader, "txlog.v1.LogService", ServingStatus::NotServing).await;
    wait_for_health(&cluster, leader, "txlog.v1.AdminService", ServingStatus::Serving).await;

    // One follower back gives a quorum again.
    cluster.start_node(followers[0]);
    let leader = cluster.wait_for_leader(WAIT).await;
    wait_for_health(&cluster, leader, "", ServingStatus::Serving).await;
    wait_for_health(&cluster, followers[0], "txlog.v1.LogService", ServingStatus::Serving).await;
}
