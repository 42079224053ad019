//! The network port: generic gRPC clients work against it (health, reflection),
//! it offers no way to change anything, and SIGTERM ends even a never-ending
//! stream within the grace period.

use std::time::Duration;

use futures::StreamExt;
use proto::v1 as pb;
use stagingd_tests::{Daemon, TestTree, free_port, wait_until};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1 as reflection;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn channel(daemon: &Daemon) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(daemon.url()).unwrap().connect().await.unwrap()
}

fn sample() -> TestTree {
    let tree = TestTree::new();
    tree.write("a.php", "<?php\n").write("big.bin", vec![7u8; 3 << 20]);
    tree
}

#[test]
fn health_answers_and_reflection_lists_only_read_only_services() {
    let tree = sample();
    let daemon = Daemon::start("deploy1002", tree.path(), free_port(), &[]);
    runtime().block_on(async {
        let channel = channel(&daemon).await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        for service in ["", "stagingd.v1.Peer"] {
            let answer = health
                .check(tonic_health::pb::HealthCheckRequest { service: service.to_owned() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(answer.status(), ServingStatus::Serving, "health of {service:?}");
        }

        let mut client = reflection::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let request = reflection::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(reflection::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut responses = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
        let response = responses.next().await.unwrap().unwrap();
        let Some(reflection::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            response.message_response
        else {
            panic!("unexpected reflection answer: {response:?}");
        };
        let mut services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        services.sort();
        assert_eq!(services, ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "stagingd.v1.Peer"]);

        // The admin service is not on the network port: a state change sent there is
        // answered UNIMPLEMENTED and changes nothing.
        let mut admin = pb::admin_client::AdminClient::new(channel.clone());
        let error = admin
            .set_pool_state(pb::SetPoolStateRequest {
                state: pb::PoolState::Serve.into(),
                bootstrap: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unimplemented);
    });
    let json = daemon.status_json().unwrap();
    assert_eq!(json["node"]["pool"]["state"], "receive-only");
}

#[test]
fn read_dir_and_fetch_content_serve_the_manifest() {
    let tree = sample();
    let daemon = Daemon::start("deploy1002", tree.path(), free_port(), &[]);
    let local = tree.manifest();
    runtime().block_on(async {
        let mut peer = pb::peer_client::PeerClient::new(channel(&daemon).await);
        let root = peer
            .read_dir(pb::ReadDirRequest {
                tree: String::new(),
                target: Some(pb::read_dir_request::Target::Path(Vec::new())),
                path_hint: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(root.hash, local.root_hash().as_bytes());
        let names: Vec<&[u8]> = root.entries.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [&b"a.php"[..], b"big.bin"]);
        // By hash, with a right, a wrong and a malformed path hint: the same directory.
        for hint in [&b""[..], b"a.php", b"no/such/dir", b"../x"] {
            let by_hash = peer
                .read_dir(pb::ReadDirRequest {
                    tree: String::new(),
                    target: Some(pb::read_dir_request::Target::DirHash(root.hash.clone())),
                    path_hint: hint.to_vec(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(by_hash, root, "hint {hint:?}");
        }

        // A small and a big blob, and one the peer does not have.
        let unknown = [9u8; 32].to_vec();
        let hashes = vec![root.entries[0].hash.clone(), root.entries[1].hash.clone(), unknown.clone()];
        let mut stream = peer
            .fetch_content(pb::FetchContentRequest { tree: "staging".into(), hashes, path_hints: Vec::new() })
            .await
            .unwrap()
            .into_inner();
        let mut blobs: std::collections::HashMap<Vec<u8>, (Vec<u8>, bool)> = Default::default();
        while let Some(chunk) = stream.next().await {
            for blob in chunk.unwrap().blobs {
                let entry = blobs.entry(blob.hash.to_vec()).or_default();
                assert_eq!(blob.offset as usize, entry.0.len(), "pieces arrive in order");
                entry.0.extend_from_slice(&blob.data);
                entry.1 = blob.missing;
            }
        }
        assert_eq!(blobs[&root.entries[0].hash].0, b"<?php\n");
        assert_eq!(blobs[&root.entries[1].hash].0, vec![7u8; 3 << 20]);
        assert!(blobs[&unknown].1, "unknown content is reported missing");

        // Path hints, right ones and a wrong one, change nothing in what is sent.
        let hashes = vec![root.entries[0].hash.clone(), root.entries[1].hash.clone()];
        for path_hints in [vec![b"a.php".to_vec(), b"big.bin".to_vec()], vec![b"big.bin".to_vec(), b"x".to_vec()]] {
            let mut stream = peer
                .fetch_content(pb::FetchContentRequest { tree: "staging".into(), hashes: hashes.clone(), path_hints })
                .await
                .unwrap()
                .into_inner();
            let mut received: std::collections::HashMap<Vec<u8>, Vec<u8>> = Default::default();
            while let Some(chunk) = stream.next().await {
                for blob in chunk.unwrap().blobs {
                    assert!(!blob.missing);
                    received.entry(blob.hash.to_vec()).or_default().extend_from_slice(&blob.data);
                }
            }
            assert_eq!(received[&root.entries[0].hash], b"<?php\n");
            assert_eq!(received[&root.entries[1].hash], vec![7u8; 3 << 20]);
        }
    });
}

#[test]
fn read_changes_tells_what_changed_since_an_earlier_root() {
    let tree = sample();
    tree.write("keep/same.php", "<?php // unchanged\n");
    let daemon = Daemon::start("deploy1002", tree.path(), free_port(), &[]);
    let earlier = tree.manifest().root_hash();
    let daemon_root =
        || daemon.status_json().expect("status")["trees"][0]["root"].as_str().unwrap_or_default().to_owned();
    assert_eq!(daemon_root(), earlier.to_hex());
    tree.write("a.php", "<?php // changed\n").write("new/b.php", "<?php // new\n");
    std::fs::remove_file(tree.path().join("big.bin")).unwrap();
    let now = tree.manifest();
    wait_until("the daemon's manifest has the changes", Duration::from_secs(10), || {
        daemon_root() == now.root_hash().to_hex()
    });
    runtime().block_on(async {
        let mut peer = pb::peer_client::PeerClient::new(channel(&daemon).await);
        let request = |since: Vec<u8>| pb::ReadChangesRequest { tree: "staging".into(), since_root: since };
        let mut stream = peer.read_changes(request(earlier.as_bytes().to_vec())).await.unwrap().into_inner();
        let mut changes = Vec::new();
        while let Some(message) = stream.next().await {
            let message = message.unwrap();
            assert_eq!(message.from_root, earlier.as_bytes());
            assert_eq!(message.to_root, now.root_hash().as_bytes());
            changes.extend(message.changes);
        }
        let paths: Vec<String> = changes.iter().map(|c| String::from_utf8_lossy(&c.path).into_owned()).collect();
        let expected = ["a.php", "big.bin", "new", "new/b.php"];
        assert_eq!(paths.iter().filter(|p| !p.is_empty()).collect::<Vec<_>>(), expected, "the root may come first");
        let entry = |path: &str| changes.iter().find(|c| c.path == path.as_bytes()).unwrap().entry.clone();
        assert_eq!(entry("a.php").unwrap().hash, manifest::Hash::of_content(b"<?php // changed\n").as_bytes());
        assert_eq!(entry("big.bin"), None, "gone");
        assert_eq!(entry("new").unwrap().kind(), pb::EntryKind::Dir);

        let unknown = peer.read_changes(request([5u8; 32].to_vec())).await.map(|_| ()).unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
        assert!(unknown.message().contains("walk it with ReadDirs"), "{unknown:?}");
        let malformed = peer.read_changes(request(vec![1, 2, 3])).await.map(|_| ()).unwrap_err();
        assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    });
}

#[test]
fn sigterm_during_a_streaming_call_shuts_down_cleanly_within_the_grace_period() {
    let tree = sample();
    let mut daemon = Daemon::start("deploy1002", tree.path(), free_port(), &[]);
    // A client whose connection keeps being driven (as a peer daemon's is) while
    // this thread waits for the daemon to exit.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut stream = rt.block_on(async {
        let mut peer = pb::peer_client::PeerClient::new(channel(&daemon).await);
        let mut stream = peer.watch_root(pb::WatchRootRequest { tree: String::new() }).await.unwrap().into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.tree, "staging");
        stream
    });
    // The daemon is started with a 3 s grace period; allow scheduling slack on top.
    let status = daemon.terminate(Duration::from_secs(8));
    assert!(status.success(), "clean exit after SIGTERM: {status}\n{}", daemon.log());
    let end = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), stream.next()).await });
    match end {
        Ok(None) | Ok(Some(Err(_))) => {}
        other => panic!("the watch stream should have ended, got {other:?}"),
    }
    let log = daemon.log();
    assert!(log.contains("SIGTERM: shutting down") && log.contains("stopped"), "{log}");
    assert!(!log.contains("did not finish within the grace period"), "streams end on shutdown:\n{log}");
    assert!(!daemon.socket.exists(), "the admin socket is removed on a clean exit");
}
