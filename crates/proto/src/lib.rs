//! The stagingd wire contract as Rust types: prost messages and tonic clients and
//! servers for the `Peer` and `Admin` services of `proto/stagingd/v1/stagingd.proto`
//! at the workspace root.
//!
//! Generated code lives only in this crate. It is produced by `build.rs` with the
//! pure-Rust compiler `protox`, so building needs nothing but cargo. The .proto file
//! is the documented contract; every item here carries its comment as rustdoc.
//! Other crates convert between these types and their own at their edges.

/// Package `stagingd.v1`: messages, enums, `peer_client`/`peer_server` and
/// `admin_client`/`admin_server`.
pub mod v1 {
    // Generated code passes today's clippy, but nobody can edit it to satisfy lints a
    // newer toolchain adds, so clippy is silenced here and only here.
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("stagingd.v1");
}

/// The encoded `google.protobuf.FileDescriptorSet` of the contract (source info
/// included), for gRPC server reflection, e.g.
/// `tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stagingd_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::FILE_DESCRIPTOR_SET;
    use super::v1::{SyncCounts, SyncEvent, SyncOutcome, TreeResult, sync_event};

    #[test]
    fn sync_event_round_trips() {
        let event = SyncEvent {
            event: Some(sync_event::Event::TreeResult(TreeResult {
                tree: "staging".into(),
                outcome: SyncOutcome::Refused.into(),
                plan_id: "0123456789abcdef".into(),
                guard: "delete-threshold".into(),
                message: "plan deletes 184935 of 184935 files".into(),
                hint: "stagingctl sync --from deploy2002 --tree staging --confirm 0123456789abcdef".into(),
                counts: Some(SyncCounts { deletes: 184_935, ..Default::default() }),
                sync_id: String::new(),
                root_before: vec![0xab; 32],
                root_after: vec![0xcd; 32],
            })),
        };
        let bytes = event.encode_to_vec();
        let decoded = SyncEvent::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded, event);
        let Some(sync_event::Event::TreeResult(result)) = decoded.event else { panic!("oneof lost") };
        assert_eq!(result.outcome(), SyncOutcome::Refused);
    }

    #[test]
    fn descriptor_set_has_both_services_and_comments() {
        let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
        let file = fds.file.iter().find(|f| f.package() == "stagingd.v1").expect("stagingd.v1 file");
        assert_eq!(file.name(), "stagingd/v1/stagingd.proto");
        assert_eq!(file.syntax(), "proto3");

        let methods = |name: &str| -> Vec<String> {
            let service = file.service.iter().find(|s| s.name() == name).unwrap_or_else(|| panic!("service {name}"));
            service.method.iter().map(|m| m.name().to_owned()).collect()
        };
        assert_eq!(methods("Peer"), ["Status", "ReadDir", "ReadDirs", "ReadChanges", "FetchContent", "WatchRoot"]);
        assert_eq!(
            methods("Admin"),
            ["SetPoolState", "GetStatus", "Sync", "History", "Rollback", "Verify", "SetReplication"]
        );

        // Comments are the contract's documentation: reflection clients see them.
        // Path [6, i] is `FileDescriptorProto.service[i]`.
        let peer = file.service.iter().position(|s| s.name() == "Peer").expect("Peer") as i32;
        let info = file.source_code_info.as_ref().expect("source info kept");
        let comment = info.location.iter().find(|l| l.path == [6, peer]).map(|l| l.leading_comments()).unwrap_or("");
        assert!(comment.to_lowercase().contains("read-only"), "Peer comment: {comment:?}");
    }

    #[test]
    fn every_enum_has_an_unspecified_zero() {
        let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
        let file = fds.file.iter().find(|f| f.package() == "stagingd.v1").expect("stagingd.v1 file");
        assert!(!file.enum_type.is_empty());
        for e in &file.enum_type {
            let zero = e.value.iter().find(|v| v.number() == 0).expect("zero value");
            assert!(zero.name().ends_with("_UNSPECIFIED"), "{}: zero value is {}", e.name(), zero.name());
        }
    }
}
