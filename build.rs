//! Code generation from `proto/`: messages, gRPC server and client stubs, the
//! descriptor set served by reflection, and the per-kind glue that lets one
//! generic server and one generic client serve every kind.
//!
//! A message is an API kind when it carries the `(skiff.meta.v1.resource)`
//! option. For each kind this script checks the service shape DESIGN.md fixes
//! (`<Kind>Service` with Create/Get/List/Update/[UpdateStatus]/Delete/Watch)
//! and writes `glue.rs`: the `Resource` impl, field-selector accessors, the
//! adapter from the generated service trait to `ResourceService<K>`, and the
//! typed client calls. Methods beyond the standard seven (subresources such as
//! `BindPod`) are forwarded to a generated `<Kind>Subresources` trait.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_reflect::{
    Cardinality, DescriptorPool, ExtensionDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let mut protos = Vec::new();
    collect_protos(Path::new("proto"), &mut protos);
    protos.sort();
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    // Run protoc directly: decoding into prost-types would drop the custom
    // options (extensions) that mark kinds, and reflection should show them.
    let descriptor_path = out_dir.join("skiff_descriptor.bin");
    let status = std::process::Command::new(prost_build::protoc_from_env())
        .arg("--include_imports")
        .arg("--include_source_info")
        .arg("-Iproto")
        .arg("-o")
        .arg(&descriptor_path)
        .args(&protos)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run protoc ({e}); install it with `apt-get install -y protobuf-compiler`"
            )
        });
    assert!(status.success(), "protoc failed on proto/");
    let raw = std::fs::read(&descriptor_path).expect("read descriptor set");
    let fds =
        prost_types::FileDescriptorSet::decode(raw.as_slice()).expect("decode descriptor set");

    let pool = DescriptorPool::decode(raw.as_slice()).expect("descriptor pool");
    let ext = pool
        .get_extension_by_name("skiff.meta.v1.resource")
        .expect("skiff.meta.v1.resource extension");
    let kinds = find_kinds(&pool, &ext);

    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .btree_map(".")
        .codec_path("crate::wire::Codec")
        // The multiplexed watch packs objects as Any whose value is shared
        // `Bytes` (no copy per watcher); its errors are tonic-types' Status.
        .extern_path(".google.protobuf.Any", "crate::wire::Any")
        .extern_path(".google.rpc.Status", "::tonic_types::Status")
        .emit_rerun_if_changed(false)
        .out_dir(&out_dir);
    for k in &kinds {
        builder = builder
            .extern_path(
                format!(".{}.Watch{}Response", k.package, k.plural_camel),
                format!("crate::wire::WatchEvent<{}>", k.rust_type()),
            )
            .extern_path(
                format!(".{}.List{}Response", k.package, k.plural_camel),
                format!("crate::wire::ListResponse<{}>", k.rust_type()),
            );
    }
    // google.rpc details are only described (for reflection); tonic-types
    // provides the Rust side.
    let mut fds = fds;
    // (status.proto stays: its one message is extern, but the message graph
    // must know it.)
    fds.file
        .retain(|f| f.package() != "google.rpc" || f.name() == "google/rpc/status.proto");
    builder.compile_fds(fds).expect("generate gRPC code");

    let glue = generate_glue(&kinds);
    std::fs::write(out_dir.join("skiff_glue.rs"), glue).expect("write glue");
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read proto dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect_protos(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}

/// One API kind found in the descriptors.
struct KindSpec {
    kind: String,
    package: String,
    plural: String,
    plural_camel: String,
    group: String,
    version: String,
    namespaced: bool,
    has_status: bool,
    short_names: Vec<String>,
    /// Fields other than metadata and status (compared to bump generation).
    spec_fields: Vec<String>,
    /// (json path, rust expression yielding `Option<Cow<str>>`) for field selectors.
    selectable: Vec<(String, String)>,
    /// Methods beyond the standard ones.
    extras: Vec<ExtraMethod>,
    has_update_status: bool,
}

struct ExtraMethod {
    name: String,
    input: String,
    output: String,
    server_streaming: bool,
}

impl KindSpec {
    fn module(&self) -> String {
        package_module(&self.package)
    }
    fn rust_type(&self) -> String {
        format!("{}::{}", self.module(), self.kind)
    }
    fn obj_field(&self) -> String {
        snake(&self.kind)
    }
    fn service(&self) -> String {
        format!("{}Service", self.kind)
    }
}

/// `skiff.core.v1` → `crate::api::core::v1`.
fn package_module(package: &str) -> String {
    let rest = package
        .strip_prefix("skiff.")
        .expect("packages start with skiff.");
    format!("crate::api::{}", rest.replace('.', "::"))
}

fn rust_path(package_and_name: &str) -> String {
    let (pkg, name) = package_and_name.rsplit_once('.').expect("qualified name");
    format!("{}::{}", package_module(pkg), name)
}

/// Same conversion tonic uses for method and module names.
fn snake(name: &str) -> String {
    let mut s = String::new();
    for (i, ch) in name.char_indices() {
        if i > 0 && ch.is_uppercase() {
            s.push('_');
        }
        s.push(ch.to_ascii_lowercase());
    }
    s
}

fn find_kinds(pool: &DescriptorPool, ext: &ExtensionDescriptor) -> Vec<KindSpec> {
    let mut kinds = Vec::new();
    for msg in pool.all_messages() {
        let opts = msg.options();
        if !opts.has_extension(ext) {
            continue;
        }
        let desc = opts.get_extension(ext);
        let desc = desc.as_message().expect("resource option is a message");
        let get_str = |name: &str| match desc.get_field_by_name(name).as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let plural = get_str("plural");
        let group = get_str("group");
        let scope = match desc.get_field_by_name("scope").as_deref() {
            Some(Value::EnumNumber(n)) => *n,
            _ => 0,
        };
        assert!(
            scope == 1 || scope == 2,
            "{}: resource option must set scope",
            msg.full_name()
        );
        let short_names = match desc.get_field_by_name("short_names").as_deref() {
            Some(Value::List(l)) => l
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        assert!(
            !plural.is_empty(),
            "{}: resource option needs plural",
            msg.full_name()
        );
        let package = msg.package_name().to_owned();
        let version = package.rsplit('.').next().unwrap_or("v1").to_owned();
        let kind = msg.name().to_owned();

        let meta = msg
            .get_field_by_name("metadata")
            .unwrap_or_else(|| panic!("{kind} needs a metadata field"));
        assert_eq!(meta.number(), 1, "{kind}.metadata must be field 1");
        let has_status = msg.get_field_by_name("status").is_some();
        let spec_fields = msg
            .fields()
            .filter(|f| f.name() != "metadata" && f.name() != "status")
            .map(|f| f.name().to_owned())
            .collect();

        let service_name = format!("{package}.{kind}Service");
        let service = pool
            .get_service_by_name(&service_name)
            .unwrap_or_else(|| panic!("{kind} is a resource but {service_name} is missing"));
        let list = service
            .methods()
            .find(|m| m.name().starts_with("List") && m.output().full_name().ends_with("Response"))
            .unwrap_or_else(|| panic!("{service_name} has no List method"));
        let plural_camel = list.name().trim_start_matches("List").to_owned();
        let standard: BTreeSet<String> = [
            format!("Create{kind}"),
            format!("Get{kind}"),
            format!("List{plural_camel}"),
            format!("Update{kind}"),
            format!("Update{kind}Status"),
            format!("Delete{kind}"),
            format!("Watch{plural_camel}"),
        ]
        .into_iter()
        .collect();
        for required in [
            format!("Create{kind}"),
            format!("Get{kind}"),
            format!("Update{kind}"),
            format!("Delete{kind}"),
            format!("Watch{plural_camel}"),
        ] {
            assert!(
                service.methods().any(|m| m.name() == required),
                "{service_name} lacks {required}"
            );
        }
        let has_update_status = service
            .methods()
            .any(|m| m.name() == format!("Update{kind}Status"));
        assert_eq!(
            has_update_status, has_status,
            "{service_name}: Update{kind}Status exists exactly when {kind} has a status"
        );
        check_list_and_watch(&service.methods().collect::<Vec<_>>(), &kind, &plural_camel);
        let extras = service
            .methods()
            .filter(|m| !standard.contains(m.name()))
            .map(|m| ExtraMethod {
                name: m.name().to_owned(),
                input: rust_path(m.input().full_name()),
                output: rust_path(m.output().full_name()),
                server_streaming: m.is_server_streaming(),
            })
            .collect();

        let mut selectable = Vec::new();
        selectable_fields(&msg, "", "self", 0, &mut selectable);

        kinds.push(KindSpec {
            kind,
            package,
            plural,
            plural_camel,
            group,
            version,
            namespaced: scope == 1,
            has_status,
            short_names,
            spec_fields,
            selectable,
            extras,
            has_update_status,
        });
    }
    kinds.sort_by(|a, b| (&a.group, &a.kind).cmp(&(&b.group, &b.kind)));
    kinds
}

fn check_list_and_watch(methods: &[MethodDescriptor], kind: &str, plural_camel: &str) {
    for m in methods {
        if m.name() == format!("List{plural_camel}") {
            let f = m.output().get_field(2).expect("list response field 2");
            assert!(
                f.is_list() && f.kind().as_message().is_some_and(|d| d.name() == kind),
                "List{plural_camel}Response field 2 must be `repeated {kind}`"
            );
        }
        if m.name() == format!("Watch{plural_camel}") {
            assert!(m.is_server_streaming(), "Watch{plural_camel} must stream");
            let f = m.output().get_field(2).expect("watch response field 2");
            assert!(
                f.kind().as_message().is_some_and(|d| d.name() == kind),
                "Watch{plural_camel}Response field 2 must be `{kind} object`"
            );
        }
    }
}

/// Collects scalar fields reachable through singular message fields, keyed by
/// their JSON path ("spec.nodeName"), as Rust expressions on `self`.
fn selectable_fields(
    msg: &MessageDescriptor,
    prefix: &str,
    expr: &str,
    depth: usize,
    out: &mut Vec<(String, String)>,
) {
    if depth > 3 {
        return;
    }
    for f in msg.fields() {
        if f.cardinality() == Cardinality::Repeated || f.is_map() {
            continue;
        }
        let path = if prefix.is_empty() {
            f.json_name().to_owned()
        } else {
            format!("{prefix}.{}", f.json_name())
        };
        let ident = rust_ident(f.name());
        let optional = f.supports_presence();
        match f.kind() {
            Kind::Message(sub) => {
                if sub.full_name().starts_with("google.protobuf.") {
                    continue;
                }
                // `expr` yields Option<&Parent>; step into the child.
                let child = if depth == 0 {
                    format!("self.{ident}.as_ref()")
                } else {
                    format!("{expr}.and_then(|m| m.{ident}.as_ref())")
                };
                selectable_fields(&sub, &path, &child, depth + 1, out);
            }
            Kind::String => {
                let value = if optional {
                    format!("m.{ident}.as_deref().map(::std::borrow::Cow::Borrowed)")
                } else {
                    format!("Some(::std::borrow::Cow::Borrowed(m.{ident}.as_str()))")
                };
                out.push((path, access(expr, depth, &value)));
            }
            Kind::Bool
            | Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64 => {
                let value = if optional {
                    format!("m.{ident}.map(|v| ::std::borrow::Cow::Owned(v.to_string()))")
                } else {
                    format!("Some(::std::borrow::Cow::Owned(m.{ident}.to_string()))")
                };
                out.push((path, access(expr, depth, &value)));
            }
            _ => {}
        }
    }
}

fn access(expr: &str, depth: usize, value: &str) -> String {
    if depth == 0 {
        format!("{{ let m = self; {value} }}")
    } else {
        format!("{expr}.and_then(|m| {value})")
    }
}

fn rust_ident(name: &str) -> String {
    match name {
        "type" | "ref" | "match" | "self" | "mod" | "use" | "in" | "fn" | "impl" | "loop"
        | "move" | "static" | "struct" | "trait" | "where" | "while" | "async" | "await" => {
            format!("r#{name}")
        }
        _ => name.to_owned(),
    }
}

fn generate_glue(kinds: &[KindSpec]) -> String {
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "// @generated by build.rs from proto/. Do not edit.").unwrap();
    writeln!(w, "use ::std::borrow::Cow;").unwrap();
    writeln!(w, "use ::std::sync::Arc;").unwrap();
    writeln!(w, "use ::tonic::{{Request, Response, Status}};").unwrap();
    writeln!(w, "use crate::resource::{{KindInfo, Resource}};").unwrap();
    writeln!(w, "use crate::server::{{KindServer, ResourceService}};").unwrap();
    writeln!(
        w,
        "use crate::params::{{DeleteParams, GetParams, ListParams, WatchParams}};"
    )
    .unwrap();
    writeln!(w).unwrap();

    // The table of every kind.
    writeln!(w, "/// Every kind the API defines, in a stable order.").unwrap();
    writeln!(w, "pub const KINDS: &[KindInfo] = &[").unwrap();
    for k in kinds {
        writeln!(w, "    <{} as Resource>::INFO,", k.rust_type()).unwrap();
    }
    writeln!(w, "];\n").unwrap();

    writeln!(
        w,
        "/// Calls `visitor.visit::<K>()` for every kind.\n\
         pub fn visit_kinds<V: KindVisitor>(visitor: &mut V) {{"
    )
    .unwrap();
    for k in kinds {
        writeln!(w, "    visitor.visit::<{}>();", k.rust_type()).unwrap();
    }
    writeln!(w, "}}\n").unwrap();
    writeln!(
        w,
        "/// Calls macro `$m` once with the path of every kind, comma-separated:\n\
         /// for code that must name each kind as a type (a visitor cannot\n\
         /// carry bounds beyond [`crate::client::ResourceClient`]).\n\
         #[macro_export]\n\
         macro_rules! for_each_kind {{\n    ($m:ident) => {{\n        $m!("
    )
    .unwrap();
    for k in kinds {
        writeln!(
            w,
            "            {},",
            k.rust_type().replacen("crate::", "$crate::", 1)
        )
        .unwrap();
    }
    writeln!(w, "        );\n    }};\n}}\n").unwrap();
    writeln!(
        w,
        "/// Something done once per kind, with the kind as a type.\n\
         pub trait KindVisitor {{\n    /// Called for each kind.\n    fn visit<K: crate::client::ResourceClient>(&mut self);\n}}\n"
    )
    .unwrap();

    for k in kinds {
        gen_resource(w, k);
        gen_server(w, k);
        gen_client(w, k);
    }
    s
}

fn gen_resource(w: &mut String, k: &KindSpec) {
    let ty = k.rust_type();
    let api_version = if k.group.is_empty() {
        k.version.clone()
    } else {
        format!("{}/{}", k.group, k.version)
    };
    let short: Vec<String> = k.short_names.iter().map(|s| format!("{s:?}")).collect();
    let spec_eq = if k.spec_fields.is_empty() {
        "true".to_owned()
    } else {
        k.spec_fields
            .iter()
            .map(|f| format!("self.{0} == other.{0}", rust_ident(f)))
            .collect::<Vec<_>>()
            .join(" && ")
    };
    let (copy_status, clear_status) = if k.has_status {
        ("self.status = other.status.clone();", "self.status = None;")
    } else {
        ("let _ = other;", "")
    };
    writeln!(
        w,
        r#"impl Resource for {ty} {{
    const INFO: KindInfo = KindInfo {{
        kind: "{kind}",
        plural: "{plural}",
        group: "{group}",
        version: "{version}",
        api_version: "{api_version}",
        namespaced: {namespaced},
        has_status: {has_status},
        short_names: &[{short}],
        message_name: "{package}.{kind}",
        service_name: "{package}.{kind}Service",
    }};
    fn meta(&self) -> &crate::api::meta::v1::ObjectMeta {{
        match self.metadata.as_ref() {{
            Some(m) => m,
            None => crate::resource::empty_meta(),
        }}
    }}
    fn meta_mut(&mut self) -> &mut crate::api::meta::v1::ObjectMeta {{
        self.metadata.get_or_insert_with(Default::default)
    }}
    fn spec_eq(&self, other: &Self) -> bool {{
        {spec_eq}
    }}
    fn copy_status_from(&mut self, other: &Self) {{
        {copy_status}
    }}
    fn clear_status(&mut self) {{
        {clear_status}
    }}
    fn field(&self, path: &str) -> Option<Cow<'_, str>> {{
        match path {{"#,
        kind = k.kind,
        plural = k.plural,
        group = k.group,
        version = k.version,
        namespaced = k.namespaced,
        has_status = k.has_status,
        short = short.join(", "),
        package = k.package,
    )
    .unwrap();
    for (path, expr) in &k.selectable {
        writeln!(
            w,
            "            {path:?} => Some({expr}.unwrap_or(Cow::Borrowed(\"\"))),"
        )
        .unwrap();
    }
    writeln!(w, "            _ => None,\n        }}\n    }}").unwrap();
    let paths: Vec<String> = k.selectable.iter().map(|(p, _)| format!("{p:?}")).collect();
    writeln!(
        w,
        "    const SELECTABLE_FIELDS: &'static [&'static str] = &[{}];\n}}\n",
        paths.join(", ")
    )
    .unwrap();
}

fn gen_server(w: &mut String, k: &KindSpec) {
    let ty = k.rust_type();
    let m = k.module();
    let kind = &k.kind;
    let pc = &k.plural_camel;
    let obj = k.obj_field();
    let svc = k.service();
    let svc_snake = snake(&svc);
    let ns = if k.namespaced {
        "m.namespace"
    } else {
        "String::new()"
    };

    // The subresource trait, if any.
    let sub_trait = format!("{kind}Subresources");
    if !k.extras.is_empty() {
        writeln!(
            w,
            "/// Server side of {kind}'s subresource methods.\n#[::tonic::async_trait]\npub trait {sub_trait}: Send + Sync + 'static {{"
        )
        .unwrap();
        for e in &k.extras {
            let method = snake(&e.name);
            if e.server_streaming {
                writeln!(
                    w,
                    "    /// Stream type of `{method}`.\n    type {name}Stream: ::futures::Stream<Item = Result<{out}, Status>> + Send + 'static;\n    /// Serves `{name}`.\n    async fn {method}(&self, request: Request<{input}>) -> Result<Response<Self::{name}Stream>, Status>;",
                    name = e.name,
                    out = e.output,
                    input = e.input
                )
                .unwrap();
            } else {
                writeln!(
                    w,
                    "    /// Serves `{name}`.\n    async fn {method}(&self, request: Request<{input}>) -> Result<Response<{out}>, Status>;",
                    name = e.name,
                    out = e.output,
                    input = e.input
                )
                .unwrap();
            }
        }
        writeln!(w, "}}\n").unwrap();
    }
    let bound = if k.extras.is_empty() {
        format!("S: ResourceService<{ty}>")
    } else {
        format!("S: ResourceService<{ty}> + {sub_trait}")
    };

    writeln!(
        w,
        r#"#[::tonic::async_trait]
impl<S> {m}::{svc_snake}_server::{svc} for KindServer<S>
where
    {bound},
{{
    async fn create_{obj}(&self, request: Request<{m}::Create{kind}Request>) -> Result<Response<{m}::Create{kind}Response>, Status> {{
        let request = crate::server::map_request(request, |m| m.{obj}.ok_or_else(|| crate::server::missing_field("{obj}")))?;
        let obj = self.0.create(request).await?;
        Ok(Response::new({m}::Create{kind}Response {{ {obj}: Some(obj) }}))
    }}
    async fn get_{obj}(&self, request: Request<{m}::Get{kind}Request>) -> Result<Response<{m}::Get{kind}Response>, Status> {{
        let request = crate::server::map_request(request, |m| Ok(GetParams {{ namespace: {ns}, name: m.name, resource_version: m.resource_version }}))?;
        let obj = self.0.get(request).await?;
        Ok(Response::new({m}::Get{kind}Response {{ {obj}: Some(obj) }}))
    }}
    async fn list_{plural_snake}(&self, request: Request<{m}::List{pc}Request>) -> Result<Response<crate::wire::ListResponse<{ty}>>, Status> {{
        let request = crate::server::map_request(request, |m| Ok(ListParams {{
            namespace: {ns},
            label_selector: m.label_selector,
            field_selector: m.field_selector,
            resource_version: m.resource_version,
            page_size: m.page_size,
            page_token: m.page_token,
        }}))?;
        Ok(Response::new(self.0.list(request).await?))
    }}
    async fn update_{obj}(&self, request: Request<{m}::Update{kind}Request>) -> Result<Response<{m}::Update{kind}Response>, Status> {{
        let request = crate::server::map_request(request, |m| m.{obj}.ok_or_else(|| crate::server::missing_field("{obj}")))?;
        let obj = self.0.update(request).await?;
        Ok(Response::new({m}::Update{kind}Response {{ {obj}: Some(obj) }}))
    }}
    async fn delete_{obj}(&self, request: Request<{m}::Delete{kind}Request>) -> Result<Response<{m}::Delete{kind}Response>, Status> {{
        let request = crate::server::map_request(request, |m| Ok(DeleteParams {{
            namespace: {ns},
            name: m.name,
            preconditions: m.preconditions,
            propagation_policy: m.propagation_policy,
            grace_period_seconds: m.grace_period_seconds,
        }}))?;
        let obj = self.0.delete(request).await?;
        Ok(Response::new({m}::Delete{kind}Response {{ {obj}: Some(obj) }}))
    }}
    type Watch{pc}Stream = crate::server::TonicWatchStream<{ty}>;
    async fn watch_{plural_snake}(&self, request: Request<{m}::Watch{pc}Request>) -> Result<Response<Self::Watch{pc}Stream>, Status> {{
        let request = crate::server::map_request(request, |m| Ok({plural_snake}_watch_params(m)))?;
        Ok(Response::new(crate::server::tonic_watch_stream(self.0.watch(request).await?)))
    }}"#,
        plural_snake = snake(pc),
    )
    .unwrap();
    if k.has_update_status {
        writeln!(
            w,
            r#"    async fn update_{obj}_status(&self, request: Request<{m}::Update{kind}StatusRequest>) -> Result<Response<{m}::Update{kind}StatusResponse>, Status> {{
        let request = crate::server::map_request(request, |m| m.{obj}.ok_or_else(|| crate::server::missing_field("{obj}")))?;
        let obj = self.0.update_status(request).await?;
        Ok(Response::new({m}::Update{kind}StatusResponse {{ {obj}: Some(obj) }}))
    }}"#
        )
        .unwrap();
    }
    for e in &k.extras {
        let method = snake(&e.name);
        if e.server_streaming {
            writeln!(
                w,
                "    type {name}Stream = <S as {sub_trait}>::{name}Stream;\n    async fn {method}(&self, request: Request<{input}>) -> Result<Response<Self::{name}Stream>, Status> {{\n        {sub_trait}::{method}(&*self.0, request).await\n    }}",
                name = e.name,
                input = e.input
            )
            .unwrap();
        } else {
            writeln!(
                w,
                "    async fn {method}(&self, request: Request<{input}>) -> Result<Response<{out}>, Status> {{\n        {sub_trait}::{method}(&*self.0, request).await\n    }}",
                input = e.input,
                out = e.output
            )
            .unwrap();
        }
    }
    writeln!(w, "}}\n").unwrap();

    let plural_snake = snake(pc);
    writeln!(
        w,
        r#"/// The parameters of a `Watch{pc}` request.
fn {plural_snake}_watch_params(m: {m}::Watch{pc}Request) -> WatchParams {{
    WatchParams {{
        namespace: {ns},
        label_selector: m.label_selector,
        field_selector: m.field_selector,
        resource_version: m.resource_version,
        allow_bookmarks: m.allow_bookmarks,
        send_initial_events: m.send_initial_events,
        timeout_seconds: m.timeout_seconds,
    }}
}}

impl<S> crate::server::ServeWith<S> for {ty}
where
    {bound},
{{
    fn add_service(routes: &mut ::tonic::service::RoutesBuilder, service: Arc<S>, limits: crate::server::MessageLimits) {{
        let kind_server = Arc::new(KindServer(service));
        let server = {m}::{svc_snake}_server::{svc}Server::from_arc(kind_server.clone())
            .max_decoding_message_size(limits.max_decoding)
            .max_encoding_message_size(limits.max_encoding);
        let call: crate::server::WatchCall<{ty}> = Arc::new(move |parts, message| {{
            let kind_server = kind_server.clone();
            Box::pin(async move {{
                let m = <{m}::Watch{pc}Request as ::prost::Message>::decode(message)
                    .map_err(|e| Status::invalid_argument(format!("the request does not decode: {{e}}")))?;
                let request = Request::from_http(::http::Request::from_parts(parts, m));
                kind_server.0.watch(request.map({plural_snake}_watch_params)).await
            }})
        }});
        routes.add_service(crate::server::FramedWatch::new(server, "Watch{pc}", call, limits.max_decoding));
    }}
}}
"#
    )
    .unwrap();
}

fn gen_client(w: &mut String, k: &KindSpec) {
    let ty = k.rust_type();
    let m = k.module();
    let kind = &k.kind;
    let pc = &k.plural_camel;
    let obj = k.obj_field();
    let svc = k.service();
    let svc_snake = snake(&svc);
    let plural_snake = snake(pc);
    let ns_field = if k.namespaced {
        "namespace: p.namespace,"
    } else {
        ""
    };
    let update_status = if k.has_update_status {
        format!(
            "let r = client.update_{obj}_status({m}::Update{kind}StatusRequest {{ {obj}: Some(obj) }}).await?.into_inner();\n            r.{obj}.ok_or_else(|| crate::client::missing_in_response(\"{obj}\"))"
        )
    } else {
        format!(
            "let _ = (client, obj);\n            Err(Status::unimplemented(\"{kind} has no status subresource\"))"
        )
    };
    writeln!(
        w,
        r#"impl crate::client::ResourceClient for {ty} {{
    fn create_in(transport: crate::client::Transport, obj: Self) -> impl ::std::future::Future<Output = Result<Self, Status>> + Send {{
        async move {{
            let mut client = {m}::{svc_snake}_client::{svc}Client::new(transport).max_decoding_message_size(usize::MAX);
            let r = client.create_{obj}({m}::Create{kind}Request {{ {obj}: Some(obj) }}).await?.into_inner();
            r.{obj}.ok_or_else(|| crate::client::missing_in_response("{obj}"))
        }}
    }}
    fn get_in(transport: crate::client::Transport, p: GetParams) -> impl ::std::future::Future<Output = Result<Self, Status>> + Send {{
        async move {{
            let mut client = {m}::{svc_snake}_client::{svc}Client::new(transport).max_decoding_message_size(usize::MAX);
            let r = client.get_{obj}({m}::Get{kind}Request {{ {ns_field} name: p.name, resource_version: p.resource_version }}).await?.into_inner();
            r.{obj}.ok_or_else(|| crate::client::missing_in_response("{obj}"))
        }}
    }}
    fn list_in(transport: crate::client::Transport, p: ListParams) -> impl ::std::future::Future<Output = Result<crate::wire::ListResponse<Self>, Status>> + Send {{
        async move {{
            let mut client = {m}::{svc_snake}_client::{svc}Client::new(transport).max_decoding_message_size(usize::MAX);
            Ok(client.list_{plural_snake}({m}::List{pc}Request {{
                {ns_field}
                label_selector: p.label_selector,
                field_selector: p.field_selector,
                resource_version: p.resource_version,
                page_size: p.page_size,
                page_token: p.page_token,
            }}).await?.into_inner())
        }}
    }}
    fn update_in(transport: crate::client::Transport, obj: Self) -> impl ::std::future::Future<Output = Result<Self, Status>> + Send {{
        async move {{
            let mut client = {m}::{svc_snake}_client::{svc}Client::new(transport).max_decoding_message_size(usize::MAX);
            let r = client.update_{obj}({m}::Update{kind}Request {{ {obj}: Some(obj) }}).await?.into_inner();
            r.{obj}.ok_or_else(|| crate::client::missing_in_response("{obj}"))
        }}
    }}
    fn update_status_in(transport: crate::client::Transport, obj: Self) -> impl ::std::future::Future<Output = Result<Self, Status>> + Send {{
        async move {{
            let mut client = {m}::{svc_snake}_client::{svc}Client::new(transport).max_decoding_message_size(usize::MAX);
            {update_status}
        }}
    }}
    fn delete_in(transport: crate::client::Transport, p: DeleteParams) -> impl ::std::future::Future<Output = Result<Self, Status>> + Send {{
        async move {{
            let mut client = {m}::{svc_snake}_client::{svc}Client::new(transport).max_decoding_message_size(usize::MAX);
            let r = client.delete_{obj}({m}::Delete{kind}Request {{
                {ns_field}
                name: p.name,
                preconditions: p.preconditions,
                propagation_policy: p.propagation_policy,
                grace_period_seconds: p.grace_period_seconds,
            }}).await?.into_inner();
            r.{obj}.ok_or_else(|| crate::client::missing_in_response("{obj}"))
        }}
    }}
    fn watch_in(transport: crate::client::Transport, p: WatchParams) -> impl ::std::future::Future<Output = Result<::tonic::Streaming<crate::wire::WatchEvent<Self>>, Status>> + Send {{
        async move {{
            let mut client = {m}::{svc_snake}_client::{svc}Client::new(transport).max_decoding_message_size(usize::MAX);
            Ok(client.watch_{plural_snake}({m}::Watch{pc}Request {{
                {ns_field}
                label_selector: p.label_selector,
                field_selector: p.field_selector,
                resource_version: p.resource_version,
                allow_bookmarks: p.allow_bookmarks,
                send_initial_events: p.send_initial_events,
                timeout_seconds: p.timeout_seconds,
            }}).await?.into_inner())
        }}
    }}
}}
"#
    )
    .unwrap();
}
