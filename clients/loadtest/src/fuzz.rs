//! The `fuzz` scenario: for a given time, calls every method of every
//! service a running API server offers (found through its reflection
//! service, as grpcurl finds them) with requests made wrong on purpose —
//! random bytes, messages whose fields hold boundary values, and valid
//! requests (earlier successes and the server's own objects) with some
//! fields replaced by such values — as an administrator, as a user RBAC
//! grants nothing, and with a token nobody issued.
//!
//! It reports the codes each method answered and fails on what a client
//! must never cause: INTERNAL, UNKNOWN, DATA_LOSS or UNIMPLEMENTED; an
//! INVALID_ARGUMENT that names no field; an error after which storage had
//! changed; a panic in the server's log; the server ending or not
//! answering. Storage changes are seen through the revision a consistent
//! list reports, so the server must have no other writers: by default this
//! tool starts its own (`skiff apiserver` with RBAC and static tokens).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args as ClapArgs;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value,
};
use skiff::client::{Credentials, ResourceClient, Transport, connect};
use skiff::testing::fuzz::{RawCodec, boundary_message, mutate};
use tonic::Code;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_types::StatusExt;

use crate::server::{ServerArgs, ServerUnderTest};
use crate::watch::parse_duration;

/// The administrator's token in the token file of a started server.
const ADMIN_TOKEN: &str = "fuzz-admin-token";
/// A user with no role bindings.
const NOBODY_TOKEN: &str = "fuzz-nobody-token";
/// Requests kept per method as seeds for mutation.
const CORPUS: usize = 32;

/// Flags of `skiff-loadtest fuzz`.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// How long to fuzz, e.g. 10m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seed of the generator (printed when chosen at random), to repeat a run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// With `--server` (a plaintext server, `skiff apiserver --plaintext`):
    /// an administrator's bearer token for it.
    #[arg(long)]
    pub token: Option<String>,
    /// With `--server`: a token of a user RBAC grants nothing (optional).
    #[arg(long)]
    pub nobody_token: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Who a request is sent as.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Caller {
    Admin,
    Nobody,
    Forged,
}

/// How a request was made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Made {
    Bytes,
    Boundary,
    Mutated,
}

/// A method to call: its path and request type.
struct Method {
    path: String,
    input: MessageDescriptor,
    /// Requests that succeeded as the administrator, to mutate.
    corpus: Vec<Vec<u8>>,
}

/// Something a client must never cause.
#[derive(Debug)]
struct Violation {
    method: String,
    what: String,
    request: String,
}

/// A small, fast, seeded generator (xorshift64*): runs repeat by seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let tokens = tempfile::NamedTempFile::new()?;
    std::fs::write(
        tokens.path(),
        format!(
            "{ADMIN_TOKEN},fuzz-admin,fuzz-admin,\"system:masters\"\n{NOBODY_TOKEN},fuzz-nobody,fuzz-nobody\n"
        ),
    )?;
    let (admin, nobody) = match &args.server.server {
        Some(_) => (
            args.token
                .clone()
                .context("--server needs --token: an administrator's bearer token")?,
            args.nobody_token.clone(),
        ),
        None => (ADMIN_TOKEN.to_owned(), Some(NOBODY_TOKEN.to_owned())),
    };
    let mut server = ServerUnderTest::start_with(&args.server, Some(tokens.path())).await?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!(
        "fuzzing {} for {:?} (seed {seed}; repeat with --seed {seed})",
        server.addr, args.duration
    );
    let channel = Channel::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", server.addr))?;
    let transport = connect(&server.addr, Credentials::bearer(&admin)?).await?;
    let pool = reflected_pool(channel.clone(), &admin).await?;
    let mut methods: Vec<Method> = pool
        .services()
        .flat_map(|s| {
            s.methods()
                .map(|m| Method {
                    path: format!("/{}/{}", s.full_name(), m.name()),
                    input: m.input(),
                    corpus: Vec::new(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if methods.is_empty() {
        bail!("the server's reflection lists no services");
    }
    // Objects that exist: a pod to read, update and delete, and one that
    // must survive (the server answering for it shows it is alive).
    for name in ["fuzz-target", "keep"] {
        let pod = skiff::testing::pod("default", name);
        match skiff::api::core::v1::Pod::create_in(transport.clone(), pod).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(e) => return Err(e).context("creating the fuzz pods"),
        }
    }
    let seeds = seed_objects(&channel, &admin, &methods).await;
    seed_corpus(&mut methods, &seeds);
    let services = pool.services().count();
    eprintln!(
        "{} methods of {services} services; valid objects of {} kinds to mutate",
        methods.len(),
        seeds.len()
    );

    let mut rng = Rng(seed.max(1));
    let mut table: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut violations: Vec<Violation> = Vec::new();
    let mut calls = 0u64;
    // Creates acknowledged, and those after which the revision moved: the
    // storage check sees writes (if the second stayed 0, it could not).
    let mut creates = (0u64, 0u64);
    // Revision moves after a refusal that changed no object.
    let mut bookkeeping = 0u64;
    let watches: Vec<(String, MessageDescriptor)> = methods
        .iter()
        .filter(|m| {
            m.path.starts_with("/skiff.")
                && m.path
                    .rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with("Watch") && n.len() > 5)
                && m.input.get_field_by_name("resource_version").is_some()
        })
        .map(|m| (m.path.clone(), m.input.clone()))
        .collect();
    let mut revision = revision(&transport).await?;
    let bar = crate::progress(args.duration.as_secs(), "fuzz");
    let started = Instant::now();
    while started.elapsed() < args.duration {
        bar.set_position(started.elapsed().as_secs());
        let m = rng.below(methods.len());
        let (made, request) = make_request(&methods[m], &mut rng);
        let (path, input) = (methods[m].path.clone(), methods[m].input.clone());
        let caller = match rng.below(100) {
            0..90 => Caller::Admin,
            90..98 if nobody.is_some() => Caller::Nobody,
            _ => Caller::Forged,
        };
        let token = match caller {
            Caller::Admin => admin.as_str(),
            Caller::Nobody => nobody.as_deref().unwrap_or(""),
            Caller::Forged => "forged-token-nobody-issued",
        };
        let outcome = call(&channel, token, &path, request.clone()).await;
        calls += 1;
        let code = match &outcome {
            Ok(()) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        *table
            .entry(path.clone())
            .or_default()
            .entry(code)
            .or_default() += 1;
        let describe = || describe_request(&input, &request, made, caller);
        let after = revision_with_retry(&transport).await;
        match (&outcome, after) {
            (_, Err(e)) => {
                violations.push(Violation {
                    method: path.clone(),
                    what: format!("the server stopped answering after this request: {e}"),
                    request: describe(),
                });
                break;
            }
            (Err(status), Ok(after)) => {
                if let Some(what) = client_caused(&path, status) {
                    violations.push(Violation {
                        method: path.clone(),
                        what,
                        request: describe(),
                    });
                }
                if after != revision {
                    // The server writes bookkeeping of its own (the watch
                    // cache's progress markers, which a consistent read such
                    // as this tool's probe may cause): only a changed object
                    // is the refused request's doing.
                    match changed_since(&channel, &admin, &watches, revision).await {
                        Some(kind) => violations.push(Violation {
                            method: path.clone(),
                            what: format!(
                                "refused ({:?}: {}) but storage changed: revision {revision} → {after}, an event on {kind}",
                                status.code(),
                                status.message()
                            ),
                            request: describe(),
                        }),
                        None => bookkeeping += 1,
                    }
                }
                revision = after;
            }
            (Ok(()), Ok(after)) => {
                if path
                    .rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with("Create"))
                {
                    creates.0 += 1;
                    creates.1 += u64::from(after != revision);
                }
                revision = after;
                if caller == Caller::Admin && made != Made::Bytes {
                    let corpus = &mut methods[m].corpus;
                    if corpus.len() < CORPUS {
                        corpus.push(request.clone());
                    } else {
                        let i = rng.below(CORPUS);
                        corpus[i] = request.clone();
                    }
                }
            }
        }
        let panicked: Vec<String> = std::mem::take(
            &mut *server
                .panics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for line in panicked {
            violations.push(Violation {
                method: path.clone(),
                what: format!("the server's log reports a panic: {line}"),
                request: describe(),
            });
        }
        if let Some(status) = server.exited() {
            violations.push(Violation {
                method: path.clone(),
                what: format!("the server ended ({status})"),
                request: String::new(),
            });
            break;
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    if bookkeeping > 0 {
        println!(
            "{bookkeeping} refusal(s) followed by a revision move that changed no object (the server's own progress markers)"
        );
    }
    print_report(&args, &table, &violations, calls, creates, elapsed, seed);
    if !violations.is_empty() {
        bail!(
            "{} violation(s) in {calls} calls; repeat with --seed {seed}",
            violations.len()
        );
    }
    Ok(())
}

/// The services' descriptors, asked of the server's reflection service
/// (v1) for every service it lists, dependencies included.
async fn reflected_pool(channel: Channel, token: &str) -> anyhow::Result<DescriptorPool> {
    let mut client = ServerReflectionClient::new(channel);
    let mut ask = async |request: MessageRequest| -> anyhow::Result<MessageResponse> {
        let mut req = tonic::Request::new(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }]));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let mut responses = client.server_reflection_info(req).await?.into_inner();
        let response = responses
            .message()
            .await?
            .context("reflection answered nothing")?;
        response
            .message_response
            .context("reflection answered an empty response")
    };
    let services = match ask(MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(l) => l.service,
        other => bail!("reflection answered {other:?} to ListServices"),
    };
    let mut files: HashMap<String, prost_types::FileDescriptorProto> = HashMap::new();
    let mut wanted: Vec<MessageRequest> = services
        .iter()
        .map(|s| MessageRequest::FileContainingSymbol(s.name.clone()))
        .collect();
    while let Some(request) = wanted.pop() {
        let MessageResponse::FileDescriptorResponse(found) = ask(request).await? else {
            bail!("reflection did not answer with file descriptors");
        };
        for bytes in found.file_descriptor_proto {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())?;
            for dep in &file.dependency {
                if !files.contains_key(dep) {
                    wanted.push(MessageRequest::FileByFilename(dep.clone()));
                }
            }
            files.insert(file.name().to_owned(), file);
        }
    }
    let set = prost_types::FileDescriptorSet {
        file: files.into_values().collect(),
    };
    DescriptorPool::from_file_descriptor_set(set).context("the reflected descriptors")
}

/// One valid object of each kind the server already holds, by message
/// name, from each service's List method.
async fn seed_objects(
    channel: &Channel,
    token: &str,
    methods: &[Method],
) -> HashMap<String, DynamicMessage> {
    let mut seeds = HashMap::new();
    for m in methods.iter().filter(|m| {
        m.path
            .rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with("List"))
    }) {
        let Some(output) = m
            .input
            .parent_pool()
            .services()
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .find(|x| format!("/{}/{}", x.parent_service().full_name(), x.name()) == m.path)
            .map(|x| x.output())
        else {
            continue;
        };
        let Ok(bytes) = first_response(channel, token, &m.path, Vec::new()).await else {
            continue;
        };
        let Ok(list) = DynamicMessage::decode(output.clone(), bytes.as_slice()) else {
            continue;
        };
        // The objects: the list's repeated message field (`pods`, …).
        let Some(items) = output
            .fields()
            .find(|f| f.is_list() && matches!(f.kind(), Kind::Message(_)))
        else {
            continue;
        };
        if let Value::List(items) = list.get_field(&items).as_ref()
            && let Some(Value::Message(first)) = items.first()
        {
            seeds.insert(first.descriptor().full_name().to_owned(), first.clone());
        }
    }
    seeds
}

/// Seeds each method's corpus with a request carrying a valid object of its
/// kind (with the name of the fuzz target) where the server held one.
fn seed_corpus(methods: &mut [Method], seeds: &HashMap<String, DynamicMessage>) {
    for m in methods {
        let mut request = DynamicMessage::new(m.input.clone());
        let mut seeded = false;
        for field in m.input.fields() {
            match field.kind() {
                Kind::Message(k) if !field.is_list() => {
                    if let Some(seed) = seeds.get(k.full_name()) {
                        let mut object = seed.clone();
                        if m.path
                            .rsplit('/')
                            .next()
                            .is_some_and(|n| n.starts_with("Create"))
                        {
                            as_new(&mut object);
                        }
                        request.set_field(&field, Value::Message(object));
                        seeded = true;
                    }
                }
                Kind::String if field.name() == "namespace" => {
                    request.set_field(&field, Value::String("default".into()));
                }
                Kind::String if field.name() == "name" => {
                    request.set_field(&field, Value::String("fuzz-target".into()));
                }
                _ => {}
            }
        }
        // Reads, lists, watches and deletes need no object to be valid.
        let name = m.input.full_name();
        let plain = ["Get", "List", "Watch", "Delete"]
            .iter()
            .any(|verb| name.rsplit('.').next().is_some_and(|n| n.starts_with(verb)));
        if seeded || plain {
            m.corpus.push(request.encode_to_vec());
        }
    }
}

/// Makes a stored object one a create accepts: named `fuzz-target`, with
/// none of the fields the server sets.
fn as_new(object: &mut DynamicMessage) {
    let Some(Value::Message(meta)) = object.get_field_by_name_mut("metadata") else {
        return;
    };
    meta.set_field_by_name("name", Value::String("fuzz-target".into()));
    for set_by_server in [
        "uid",
        "resource_version",
        "creation_timestamp",
        "generation",
    ] {
        meta.clear_field_by_name(set_by_server);
    }
}

/// A request for `method`: a quarter random bytes, a third boundary
/// values, the rest a mutation of a request that worked.
fn make_request(method: &Method, rng: &mut Rng) -> (Made, Vec<u8>) {
    let roll = rng.below(12);
    if roll < 3 {
        let n = rng.below(128);
        return (Made::Bytes, rng.bytes(n));
    }
    let corpus = (roll >= 7 && !method.corpus.is_empty())
        .then(|| &method.corpus[rng.below(method.corpus.len())]);
    let mut picks = std::iter::from_fn(|| Some(rng.byte()));
    if let Some(valid) = corpus
        && let Ok(mut msg) = DynamicMessage::decode(method.input.clone(), valid.as_slice())
    {
        mutate(&mut msg, &mut picks);
        return (Made::Mutated, msg.encode_to_vec());
    }
    let msg = boundary_message(&method.input, &mut picks, 0);
    (Made::Boundary, msg.encode_to_vec())
}

/// What is wrong with `status` as the answer to a client's request to
/// `path`, if anything.
fn client_caused(path: &str, status: &tonic::Status) -> Option<String> {
    match status.code() {
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented => Some(format!(
            "{:?} for a client's request: {}",
            status.code(),
            status.message()
        )),
        // Reflection is tonic's, not the API's: its refusals name no field.
        Code::InvalidArgument if path.starts_with("/grpc.reflection.") => None,
        Code::InvalidArgument => {
            let named = status.message().contains("does not decode")
                || status.get_details_bad_request().is_some_and(|b| {
                    !b.field_violations.is_empty()
                        && b.field_violations.iter().all(|v| !v.field.is_empty())
                });
            (!named).then(|| format!("INVALID_ARGUMENT naming no field: {}", status.message()))
        }
        _ => None,
    }
}

/// The request as JSON where it decodes (else its bytes), and how it came.
fn describe_request(
    input: &MessageDescriptor,
    request: &[u8],
    made: Made,
    caller: Caller,
) -> String {
    let body = DynamicMessage::decode(input.clone(), request)
        .ok()
        .and_then(|m| serde_json::to_string(&m).ok())
        .unwrap_or_else(|| format!("bytes {request:02x?}"));
    let mut body: String = body.chars().take(600).collect();
    if body.len() >= 600 {
        body.push('…');
    }
    format!("{made:?} as {caller:?}: {body}")
}

/// The first kind (its watch method) with an event after `revision`, if
/// any: watches of every kind from that revision, each given 200 ms.
async fn changed_since(
    channel: &Channel,
    token: &str,
    watches: &[(String, MessageDescriptor)],
    revision: i64,
) -> Option<String> {
    for (path, input) in watches {
        let mut request = DynamicMessage::new(input.clone());
        request.set_field_by_name("resource_version", Value::String(revision.to_string()));
        match first_response(channel, token, path, request.encode_to_vec()).await {
            Ok(event) if event.is_empty() => {}
            // An event, or a watch that cannot start there: say so.
            Ok(_) => return Some(path.clone()),
            Err(e) => return Some(format!("{path} ({:?}: {})", e.code(), e.message())),
        }
    }
    None
}

/// The storage revision, as a consistent list reports it.
async fn revision(transport: &Transport) -> Result<i64, tonic::Status> {
    let list = skiff::api::core::v1::Namespace::list_in(
        transport.clone(),
        skiff::params::ListParams {
            page_size: 1,
            ..Default::default()
        },
    )
    .await?;
    Ok(list
        .metadata
        .map_or(0, |m| m.resource_version.parse().unwrap_or(0)))
}

/// [`revision`], retried for 30 s while the server is busy or restarting.
async fn revision_with_retry(transport: &Transport) -> Result<i64, tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match revision(transport).await {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Sends `request` as the one message of a call to `path` with `token`;
/// the call's error, or Ok once a first response (or the end of the
/// stream) arrives or a streaming call has been quiet for a moment.
async fn call(
    channel: &Channel,
    token: &str,
    path: &str,
    request: Vec<u8>,
) -> Result<(), tonic::Status> {
    first_response(channel, token, path, request)
        .await
        .map(|_| ())
}

/// The first response to a call of `path` with `request` (empty if the
/// stream ended or stayed quiet for 200 ms).
async fn first_response(
    channel: &Channel,
    token: &str,
    path: &str,
    request: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(path)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let mut req = tonic::Request::new(futures::stream::iter([request]));
    if !token.is_empty()
        && let Ok(v) = format!("Bearer {token}").parse()
    {
        req.metadata_mut().insert("authorization", v);
    }
    let call = grpc.streaming(req, path, RawCodec);
    let mut responses = match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(r) => r?.into_inner(),
        Err(_) => return Ok(Vec::new()),
    };
    match tokio::time::timeout(Duration::from_millis(200), responses.message()).await {
        Ok(r) => r.map(Option::unwrap_or_default),
        Err(_) => Ok(Vec::new()),
    }
}

/// Prints the codes per method and the violations.
fn print_report(
    args: &Args,
    table: &BTreeMap<String, BTreeMap<String, u64>>,
    violations: &[Violation],
    calls: u64,
    creates: (u64, u64),
    elapsed: Duration,
    seed: u64,
) {
    if args.json {
        let out = serde_json::json!({
            "scenario": "fuzz",
            "seed": seed,
            "calls": calls,
            "creates_acknowledged": creates.0,
            "creates_seen_in_storage": creates.1,
            "seconds": elapsed.as_secs_f64(),
            "methods": table,
            "violations": violations.iter().map(|v| serde_json::json!({
                "method": v.method, "what": v.what, "request": v.request,
            })).collect::<Vec<_>>(),
        });
        println!("{out}");
        return;
    }
    let codes: Vec<&str> = {
        let mut all: HashSet<&str> = HashSet::new();
        for by_code in table.values() {
            all.extend(by_code.keys().map(String::as_str));
        }
        let mut v: Vec<&str> = all.into_iter().collect();
        v.sort_by_key(|c| (*c != "OK", *c));
        v
    };
    let short = |c: &str| -> String {
        match c {
            "InvalidArgument" => "INVALID".into(),
            "PermissionDenied" => "DENIED".into(),
            "Unauthenticated" => "UNAUTH".into(),
            "FailedPrecondition" => "PRECOND".into(),
            "ResourceExhausted" => "EXHAUST".into(),
            "AlreadyExists" => "EXISTS".into(),
            "DeadlineExceeded" => "DEADLINE".into(),
            "OutOfRange" => "RANGE".into(),
            other => other.to_uppercase(),
        }
    };
    print!("{:<62}", "method");
    for c in &codes {
        print!(" {:>8}", short(c));
    }
    println!();
    for (method, by_code) in table {
        let name = method.trim_start_matches('/');
        print!("{name:<62}");
        for c in &codes {
            match by_code.get(*c) {
                Some(n) => print!(" {n:>8}"),
                None => print!(" {:>8}", "·"),
            }
        }
        println!();
    }
    println!(
        "\n{calls} calls in {:.0} s ({:.0}/s) to {} methods, seed {seed}: {} violation(s)",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64().max(0.001),
        table.len(),
        violations.len()
    );
    println!(
        "{} creates acknowledged, {} of them seen to change storage (the others: dry runs, tokens)",
        creates.0, creates.1
    );
    // One example of each kind of violation per method, with its count.
    let mut kinds: BTreeMap<(&str, String), (usize, &Violation)> = BTreeMap::new();
    for v in violations {
        let kind: String = v.what.chars().take(60).collect();
        kinds.entry((&v.method, kind)).or_insert((0, v)).0 += 1;
    }
    for ((method, _), (n, v)) in kinds.iter().take(40) {
        println!("  {method} ({n}×): {}\n    e.g. {}", v.what, v.request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_unnamed_refusals_are_violations_other_refusals_are_not() {
        assert!(
            client_caused(
                "/skiff.core.v1.PodService/GetPod",
                &tonic::Status::internal("boom")
            )
            .is_some()
        );
        assert!(
            client_caused(
                "/skiff.core.v1.PodService/GetPod",
                &tonic::Status::unimplemented("no")
            )
            .is_some()
        );
        assert!(
            client_caused(
                "/skiff.core.v1.PodService/GetPod",
                &tonic::Status::invalid_argument("bad")
            )
            .is_some()
        );
        assert!(
            client_caused(
                "/skiff.core.v1.PodService/GetPod",
                &tonic::Status::invalid_argument("the message does not decode as protobuf: x")
            )
            .is_none()
        );
        let named = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "bad name",
            tonic_types::ErrorDetails::with_bad_request_violation("metadata.name", "too long"),
        );
        assert!(client_caused("/skiff.core.v1.PodService/GetPod", &named).is_none());
        for code in [
            Code::NotFound,
            Code::PermissionDenied,
            Code::FailedPrecondition,
        ] {
            assert!(
                client_caused(
                    "/skiff.core.v1.PodService/GetPod",
                    &tonic::Status::new(code, "x")
                )
                .is_none()
            );
        }
    }

    #[test]
    fn a_seed_repeats_its_requests() {
        let desc = skiff::descriptor::pool()
            .get_message_by_name("skiff.core.v1.CreatePodRequest")
            .expect("in the pool");
        let method = Method {
            path: "/skiff.core.v1.PodService/CreatePod".into(),
            input: desc,
            corpus: vec![],
        };
        let run = |seed| {
            let mut rng = Rng(seed);
            (0..50)
                .map(|_| make_request(&method, &mut rng).1)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
