//! Property-based fuzzing of what reaches the API server from the network:
//! page tokens and resource versions, and the request bytes of every method
//! of every service (random bytes, and valid requests whose fields hold
//! boundary values: empty, huge, negative, non-ASCII, names that exist and
//! names that do not), sent to a real server in this process.
//!
//! Invariants: never INTERNAL or UNKNOWN (a client's mistake is a client
//! error); an INVALID_ARGUMENT names its field (or says the bytes do not
//! decode); a refused request changes nothing in storage; the server keeps
//! answering. CI runs the default number of cases; `scripts/fuzz.sh` runs
//! more, keeping failing inputs in `tests/fuzz.proptest-regressions`.

use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use prost_reflect::MessageDescriptor;
use skiff::api::core::v1::Pod;
use skiff::client::ResourceClient;
use skiff::testing::fuzz::boundary_request;
use skiff_apiserver::object_store::{ContinueToken, ReadVersion};
use skiff_apiserver::testing::TestServer;
use tonic::Code;
use tonic_types::StatusExt;

fn config() -> ProptestConfig {
    ProptestConfig {
        // Relative to the package (where cargo runs its tests); committed.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn page_tokens_never_panic_and_round_trip(
        token in prop_oneof![
            any::<String>(),
            proptest::string::string_regex("[A-Za-z0-9_-]{0,64}").expect("regex"),
        ],
        revision in any::<i64>(),
        key in "/registry/pods/default/[a-z0-9.-]{0,20}",
    ) {
        if let Err(e) = ContinueToken::decode("Pod", &token, "/registry/pods/default/") {
            prop_assert!(e.to_string().contains("page_token"), "{}", e);
        }
        let issued = ContinueToken { revision, start_after: key };
        let decoded = ContinueToken::decode("Pod", &issued.encode(), "/registry/pods/default/");
        if revision > 0 {
            prop_assert_eq!(decoded.ok(), Some(issued));
        } else {
            // No server issues a token for a revision it cannot have.
            prop_assert!(decoded.is_err());
        }
    }

    #[test]
    fn resource_versions_never_panic_and_refusals_name_the_field(s in any::<String>()) {
        match ReadVersion::parse("Pod", "resource_version", &s) {
            Ok(ReadVersion::AtLeast(n)) => prop_assert!(n > 0 && n.to_string() == s.trim_start_matches('+')),
            Ok(_) => prop_assert!(s.is_empty() || s == "0"),
            Err(e) => prop_assert!(e.to_string().contains("resource_version"), "{}", e),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..config() })]

    #[test]
    fn every_method_answers_bad_bytes_and_boundary_values_with_a_client_error_and_changes_nothing(
        method in any::<prop::sample::Index>(),
        raw in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..96),
        choices in proptest::collection::vec(any::<u8>(), 0..48),
    ) {
        let fuzz = Fuzz::get();
        let (path, input) = method.get(&fuzz.methods).clone();
        let request = if raw { bytes } else { boundary_request(&input, &choices) };
        let (before, outcome, after, alive) = fuzz.runtime.block_on(async {
            let before = fuzz.server.storage.current_revision().await.expect("revision");
            let outcome = call(&fuzz.server, &path, request.clone()).await;
            let after = fuzz.server.storage.current_revision().await.expect("revision");
            let alive = Pod::get_in(fuzz.server.transport().await, skiff::params::GetParams {
                namespace: "default".into(),
                name: "keep".into(),
                ..Default::default()
            })
            .await
            .is_ok();
            (before, outcome, after, alive)
        });
        if std::env::var_os("FUZZ_SHOW").is_some() { eprintln!("{path} {:?}", outcome.as_ref().map_err(|s| (s.code(), s.message().chars().take(90).collect::<String>()))); }
        prop_assert!(alive, "the server stopped answering after {} {:x?}", path, request);
        if let Err(status) = outcome {
            prop_assert!(
                !matches!(
                    status.code(),
                    Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented
                ),
                "{} {:x?}: {:?}", path, request, status
            );
            if status.code() == Code::InvalidArgument {
                let named = status.message().contains("does not decode")
                    || status.get_details_bad_request().is_some_and(|b| {
                        !b.field_violations.is_empty()
                            && b.field_violations.iter().all(|v| !v.field.is_empty())
                    });
                prop_assert!(named, "{} {:x?}: no field named: {:?}", path, request, status);
            }
            prop_assert_eq!(before, after, "{} {:x?} was refused ({:?}) but changed storage", path, request, status);
        }
    }
}

/// The server every case talks to, with one pod that must survive.
struct Fuzz {
    runtime: tokio::runtime::Runtime,
    server: TestServer,
    _dir: tempfile::TempDir,
    /// Every method: its gRPC path and its request message.
    methods: Vec<(String, MessageDescriptor)>,
}

impl Fuzz {
    fn get() -> &'static Fuzz {
        static FUZZ: OnceLock<Fuzz> = OnceLock::new();
        FUZZ.get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let dir = tempfile::tempdir().expect("temp dir");
            let server = runtime.block_on(async {
                let server = TestServer::embedded(dir.path()).await;
                for name in ["keep", "fuzz-target"] {
                    Pod::create_in(
                        server.transport().await,
                        skiff::testing::pod("default", name),
                    )
                    .await
                    .expect("create");
                }
                server
            });
            let methods = skiff::descriptor::pool()
                .services()
                // Every service of the API (the kubelet's is served by
                // nodes), and health, generated with the API's codec.
                .filter(|s| {
                    (s.full_name().starts_with("skiff.")
                        && !s.full_name().starts_with("skiff.kubelet."))
                        || s.full_name() == "grpc.health.v1.Health"
                })
                .flat_map(|s| {
                    s.methods()
                        .map(|m| (format!("/{}/{}", s.full_name(), m.name()), m.input()))
                        .collect::<Vec<_>>()
                })
                .collect();
            Fuzz {
                runtime,
                server,
                _dir: dir,
                methods,
            }
        })
    }
}

/// Sends `request` as the one message of a call to `path`; the call's error,
/// or Ok once a first response (or the end of the stream) arrives.
async fn call(server: &TestServer, path: &str, request: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::try_from(path).expect("path");
    let call = grpc.streaming(
        tonic::Request::new(futures::stream::iter([request])),
        path,
        skiff_apiserver::testing::RawCodec,
    );
    let mut responses = match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(r) => r?.into_inner(),
        // A watch that has nothing to say yet: not an error.
        Err(_) => return Ok(()),
    };
    match tokio::time::timeout(Duration::from_secs(2), responses.message()).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Ok(()),
    }
}
