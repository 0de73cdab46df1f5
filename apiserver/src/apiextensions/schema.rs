//! A `ResourceDefinition`'s schema: its .proto sources compiled in the
//! server (with `protox`, a pure-Rust protobuf compiler, so nothing needs
//! `protoc`), each kind's message checked (field 1 is
//! `skiff.meta.v1.ObjectMeta metadata`), and each kind's service
//! synthesized in the kind's package with the shape of the API's own
//! services (`Create<Kind>`, `List<Plural>`, … and their messages).
//!
//! Owns compiling and checking; must not serve or store anything.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use prost_reflect::{
    Cardinality, DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, ServiceDescriptor,
};
use protox::file::{
    ChainFileResolver, DescriptorSetFileResolver, File, FileResolver, GoogleFileResolver,
};
use skiff::api::apiextensions::v1::ResourceDefinitionSpec;

use crate::error::FieldViolation;
use crate::registry::validation::{NameRule, check_name};

/// The message every kind's field 1 must be.
pub const OBJECT_META: &str = "skiff.meta.v1.ObjectMeta";

/// One kind of a compiled definition.
#[derive(Debug, Clone)]
pub struct KindSchema {
    /// Kind name (the message's name), e.g. "Widget".
    pub kind: String,
    /// Lower-case plural, e.g. "widgets".
    pub plural: String,
    /// The plural as in method names, e.g. "Widgets".
    pub plural_camel: String,
    /// API group.
    pub group: String,
    /// Version: the package's last part.
    pub version: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Command-line abbreviations.
    pub short_names: Vec<String>,
    /// The kind's message.
    pub message: MessageDescriptor,
    /// Its synthesized service.
    pub service: ServiceDescriptor,
    /// Number of its `status` field, when it has one.
    pub status_field: Option<u32>,
    /// Field paths field selectors may use (metadata's name and namespace too).
    pub selectable_fields: Vec<String>,
    /// `skiff get` columns: heading and field path.
    pub printer_columns: Vec<(String, String)>,
}

impl KindSchema {
    /// `apiVersion` in manifests.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// The key segment of its objects: `<plural>.<group>`.
    pub fn segment(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }
}

/// A definition compiled and checked.
#[derive(Debug, Clone)]
pub struct CompiledDefinition {
    /// Every descriptor: the definition's files, their imports, the services.
    pub pool: DescriptorPool,
    /// The definition's files and the synthesized service files, encoded as
    /// a `FileDescriptorSet` (imports left out).
    pub served_descriptor_set: Vec<u8>,
    /// Names of the files in `served_descriptor_set`.
    pub files: Vec<String>,
    /// The synthesized services' .proto sources, by path.
    pub service_files: BTreeMap<String, String>,
    /// The kinds.
    pub kinds: Vec<KindSchema>,
}

/// Groups the API's own kinds use, and the suffix reserved for them.
const RESERVED_GROUP_SUFFIX: &str = "skiff.dev";

/// Compiles and checks the definition named `name`; every problem found is
/// a violation naming its field.
pub fn compile(
    name: &str,
    spec: &ResourceDefinitionSpec,
) -> Result<CompiledDefinition, Vec<FieldViolation>> {
    let mut v = Vec::new();
    check_group(&spec.group, &mut v);
    if spec.kinds.is_empty() {
        v.push(FieldViolation::new(
            "spec.kinds",
            "at least one kind is required",
        ));
    }
    if spec.proto_files.is_empty() && spec.file_descriptor_set.is_empty() {
        v.push(FieldViolation::new(
            "spec.protoFiles",
            "required: the .proto sources of the kinds (or spec.fileDescriptorSet)",
        ));
    }
    for path in spec.proto_files.keys() {
        if path.starts_with("skiff/") || path.starts_with("google/") || !path.ends_with(".proto") {
            v.push(FieldViolation::new(
                format!("spec.protoFiles[{path}]"),
                "a path ending in .proto outside skiff/ and google/ (those are the API's and Google's)",
            ));
        }
    }
    if let Some(first) = spec.kinds.first() {
        let expected = format!("{}.{}", first.plural, spec.group);
        if name != expected {
            v.push(FieldViolation::new(
                "metadata.name",
                format!("must be <plural>.<group> of the first kind: {expected:?}"),
            ));
        }
    }
    if !v.is_empty() {
        return Err(v);
    }
    let extra = if spec.file_descriptor_set.is_empty() {
        None
    } else {
        match prost_types::FileDescriptorSet::decode(&spec.file_descriptor_set[..]) {
            Ok(set) => Some(set),
            Err(e) => {
                return Err(vec![FieldViolation::new(
                    "spec.fileDescriptorSet",
                    format!("not a serialized google.protobuf.FileDescriptorSet: {e}"),
                )]);
            }
        }
    };
    let mut roots: Vec<String> = spec.proto_files.keys().cloned().collect();
    if let Some(set) = &extra {
        for f in &set.file {
            let n = f.name().to_owned();
            if n.starts_with("skiff/") || n.starts_with("google/") {
                continue;
            }
            if !roots.contains(&n) {
                roots.push(n);
            }
        }
    }
    // First the user's files alone: their messages are checked before any
    // service is written for them.
    let sources = spec.proto_files.clone();
    let pool = run_compiler(&sources, extra.as_ref(), &roots)
        .map_err(|e| vec![FieldViolation::new("spec.protoFiles", e)])?;
    let mut kinds = Vec::new();
    let mut services: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_plurals = Vec::new();
    for (i, k) in spec.kinds.iter().enumerate() {
        let at = format!("spec.kinds[{i}]");
        let Some(message) = pool.get_message_by_name(&k.message) else {
            v.push(FieldViolation::new(
                format!("{at}.message"),
                format!("no message {:?} in the definition's files", k.message),
            ));
            continue;
        };
        if let Err(why) = check_kind_message(&message) {
            v.push(FieldViolation::new(format!("{at}.message"), why));
            continue;
        }
        for problem in super::validate::check_rules(&message) {
            v.push(FieldViolation::new(format!("{at}.message"), problem));
        }
        if let Err(e) = check_name(NameRule::Label, &k.plural) {
            v.push(FieldViolation::new(format!("{at}.plural"), e));
        } else if k.plural.chars().any(|c| c.is_ascii_uppercase()) {
            v.push(FieldViolation::new(
                format!("{at}.plural"),
                "must be lower case",
            ));
        }
        if seen_plurals.contains(&k.plural) {
            v.push(FieldViolation::new(
                format!("{at}.plural"),
                "another kind has this plural",
            ));
        }
        seen_plurals.push(k.plural.clone());
        let namespaced = match k.scope.as_str() {
            "" | "Namespaced" => true,
            "Cluster" => false,
            other => {
                v.push(FieldViolation::new(
                    format!("{at}.scope"),
                    format!("{other:?} is not a scope; use Namespaced or Cluster"),
                ));
                true
            }
        };
        for (j, s) in k.short_names.iter().enumerate() {
            if check_name(NameRule::Label, s).is_err() || s.chars().any(|c| c.is_ascii_uppercase())
            {
                v.push(FieldViolation::new(
                    format!("{at}.shortNames[{j}]"),
                    "a lower-case DNS label",
                ));
            }
        }
        let package = message.package_name().to_owned();
        let version = package.rsplit('.').next().unwrap_or_default().to_owned();
        let reserved = |root: &str| {
            package == root
                || package
                    .strip_prefix(root)
                    .is_some_and(|p| p.starts_with('.'))
        };
        if package.is_empty() || reserved("skiff") || reserved("google") {
            v.push(FieldViolation::new(
                format!("{at}.message"),
                "the message needs a package of its own (not skiff.* or google.*), e.g. acme.v1",
            ));
            continue;
        }
        if message.parent_message().is_some() {
            v.push(FieldViolation::new(
                format!("{at}.message"),
                "a top-level message",
            ));
            continue;
        }
        let kind = message.name().to_owned();
        let plural_camel = plural_camel(&kind, &k.plural);
        let status_field = message
            .get_field_by_name("status")
            .filter(|f| matches!(f.kind(), Kind::Message(_)) && !f.is_list() && !f.is_map())
            .map(|f| f.number());
        let mut selectable = vec!["metadata.name".to_owned(), "metadata.namespace".to_owned()];
        for (j, path) in k.selectable_fields.iter().enumerate() {
            match scalar_path(&message, path) {
                Ok(_) => {
                    if !selectable.contains(path) {
                        selectable.push(path.clone());
                    }
                }
                Err(why) => v.push(FieldViolation::new(
                    format!("{at}.selectableFields[{j}]"),
                    why,
                )),
            }
        }
        let mut columns = Vec::new();
        for (j, c) in k.printer_columns.iter().enumerate() {
            if c.name.is_empty() {
                v.push(FieldViolation::new(
                    format!("{at}.printerColumns[{j}].name"),
                    "required",
                ));
            }
            match scalar_path(&message, &c.path) {
                Ok(_) => columns.push((c.name.clone(), c.path.clone())),
                Err(why) => v.push(FieldViolation::new(
                    format!("{at}.printerColumns[{j}].path"),
                    why,
                )),
            }
        }
        let file = message.parent_file();
        let service_file = format!(
            "{}/{}_service.proto",
            package.replace('.', "/"),
            snake(&kind)
        );
        if spec.proto_files.contains_key(&service_file) || roots.contains(&service_file) {
            v.push(FieldViolation::new(
                format!("spec.protoFiles[{service_file}]"),
                "this path is where the kind's service is synthesized; rename the file",
            ));
            continue;
        }
        let service_name = format!("{package}.{kind}Service");
        if pool.get_service_by_name(&service_name).is_some() {
            v.push(FieldViolation::new(
                format!("{at}.message"),
                format!("the files define {service_name} already; the server synthesizes it"),
            ));
            continue;
        }
        services.insert(
            service_file,
            service_source(
                &package,
                file.name(),
                &kind,
                &plural_camel,
                namespaced,
                status_field.is_some(),
            ),
        );
        kinds.push(Draft {
            message: message.full_name().to_owned(),
            kind,
            plural: k.plural.clone(),
            plural_camel,
            version,
            namespaced,
            short_names: k.short_names.clone(),
            status_field,
            selectable_fields: selectable,
            printer_columns: columns,
        });
    }
    if !v.is_empty() {
        return Err(v);
    }
    let mut all_sources = sources;
    all_sources.extend(services.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut all_roots = roots.clone();
    all_roots.extend(services.keys().cloned());
    let pool = run_compiler(&all_sources, extra.as_ref(), &all_roots).map_err(|e| {
        vec![FieldViolation::new(
            "spec.kinds",
            format!("the synthesized services do not compile: {e}"),
        )]
    })?;
    let mut out = Vec::new();
    for d in kinds {
        let message = pool.get_message_by_name(&d.message);
        let service_name = match &message {
            Some(m) => format!("{}.{}Service", m.package_name(), d.kind),
            None => d.message.clone(),
        };
        match (message, pool.get_service_by_name(&service_name)) {
            (Some(message), Some(service)) => out.push(KindSchema {
                kind: d.kind,
                plural: d.plural,
                plural_camel: d.plural_camel,
                group: spec.group.clone(),
                version: d.version,
                namespaced: d.namespaced,
                short_names: d.short_names,
                message,
                service,
                status_field: d.status_field,
                selectable_fields: d.selectable_fields,
                printer_columns: d.printer_columns,
            }),
            _ => {
                return Err(vec![FieldViolation::new(
                    "spec.kinds",
                    format!("{service_name} was not synthesized"),
                )]);
            }
        }
    }
    let served = prost_types::FileDescriptorSet {
        file: pool
            .files()
            .filter(|f| all_roots.iter().any(|r| r == f.name()))
            .map(|f| f.file_descriptor_proto().clone())
            .collect(),
    };
    Ok(CompiledDefinition {
        served_descriptor_set: served.encode_to_vec(),
        service_files: services,
        files: served.file.iter().map(|f| f.name().to_owned()).collect(),
        pool,
        kinds: out,
    })
}

/// A kind checked, before its service exists.
struct Draft {
    message: String,
    kind: String,
    plural: String,
    plural_camel: String,
    version: String,
    namespaced: bool,
    short_names: Vec<String>,
    status_field: Option<u32>,
    selectable_fields: Vec<String>,
    printer_columns: Vec<(String, String)>,
}

/// Checks a definition's group: a DNS subdomain with a dot, not the API's own.
fn check_group(group: &str, v: &mut Vec<FieldViolation>) {
    if group.is_empty() {
        v.push(FieldViolation::new(
            "spec.group",
            "required, e.g. acme.example.com",
        ));
    } else if check_name(NameRule::Subdomain, group).is_err() || !group.contains('.') {
        v.push(FieldViolation::new(
            "spec.group",
            "a DNS subdomain with at least one dot, e.g. acme.example.com",
        ));
    } else if group == RESERVED_GROUP_SUFFIX
        || group.ends_with(&format!(".{RESERVED_GROUP_SUFFIX}"))
    {
        v.push(FieldViolation::new(
            "spec.group",
            format!("groups under {RESERVED_GROUP_SUFFIX} are the API's own"),
        ));
    }
}

/// Why `message` cannot be a kind, if it cannot.
fn check_kind_message(message: &MessageDescriptor) -> Result<(), String> {
    let ok = message.get_field(1).is_some_and(|f| {
        f.name() == "metadata"
            && f.cardinality() != Cardinality::Repeated
            && matches!(f.kind(), Kind::Message(m) if m.full_name() == OBJECT_META)
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} must have `{OBJECT_META} metadata = 1;` as field 1",
            message.full_name()
        ))
    }
}

/// The scalar field a dotted path names in `message`, or why it names none.
pub fn scalar_path(message: &MessageDescriptor, path: &str) -> Result<FieldDescriptor, String> {
    let mut current = message.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let field = current
            .get_field_by_json_name(part)
            .or_else(|| current.get_field_by_name(part))
            .ok_or_else(|| format!("{} has no field {part:?}", current.full_name()))?;
        if field.is_list() || field.is_map() {
            return Err(format!("{part:?} is repeated; a path must name one value"));
        }
        let last = i + 1 == parts.len();
        match field.kind() {
            Kind::Message(m) if !last => current = m,
            Kind::Message(_) => {
                return Err(format!("{path:?} is a message; name a scalar field in it"));
            }
            _ if last => return Ok(field),
            _ => return Err(format!("{part:?} is a scalar; the path cannot go on")),
        }
    }
    Err("an empty path".to_owned())
}

pub use skiff::names::plural_camel;

/// `CamelCase` → `camel_case`.
pub fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The .proto source of a kind's service, shaped as the API's own.
pub fn service_source(
    package: &str,
    kind_file: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    status: bool,
) -> String {
    let obj = snake(kind);
    let objs = snake(plural);
    let ty = format!(".{package}.{kind}");
    let ns_field = if namespaced {
        "  // Namespace of the object.\n  string namespace = 1;\n"
    } else {
        ""
    };
    let list_ns = if namespaced {
        "  // Namespace to list; empty lists every namespace.\n  string namespace = 1;\n"
    } else {
        ""
    };
    let n = if namespaced { 2 } else { 1 };
    let mut w = String::new();
    let mut line = |s: String| {
        w.push_str(&s);
        w.push('\n');
    };
    line("syntax = \"proto3\";\n".into());
    line(format!("package {package};\n"));
    line(format!("import \"{kind_file}\";"));
    line("import \"skiff/meta/v1/meta.proto\";\n".into());
    line(format!(
        "// {kind}Service manages {kind} objects (synthesized by the API server)."
    ));
    line(format!("service {kind}Service {{"));
    line(format!("  // Creates a {kind}."));
    line(format!(
        "  rpc Create{kind}(Create{kind}Request) returns (Create{kind}Response);"
    ));
    line(format!("  // Reads one {kind} by name."));
    line(format!(
        "  rpc Get{kind}(Get{kind}Request) returns (Get{kind}Response);"
    ));
    line(format!(
        "  // Lists {plural}, filtered by selectors, a page at a time."
    ));
    line(format!(
        "  rpc List{plural}(List{plural}Request) returns (List{plural}Response);"
    ));
    line(format!(
        "  // Replaces a {kind}'s spec and metadata (compare-and-swap on resource_version)."
    ));
    line(format!(
        "  rpc Update{kind}(Update{kind}Request) returns (Update{kind}Response);"
    ));
    if status {
        line(format!("  // Replaces a {kind}'s status only."));
        line(format!(
            "  rpc Update{kind}Status(Update{kind}StatusRequest) returns (Update{kind}StatusResponse);"
        ));
    }
    line(format!(
        "  // Deletes a {kind} (or marks it for deletion while finalizers remain)."
    ));
    line(format!(
        "  rpc Delete{kind}(Delete{kind}Request) returns (Delete{kind}Response);"
    ));
    line(format!(
        "  // Streams changes to {plural} after a resource_version."
    ));
    line(format!(
        "  rpc Watch{plural}(Watch{plural}Request) returns (stream Watch{plural}Response);"
    ));
    line("}\n".into());
    let carry = |name: &str, doc: &str, field_doc: &str| {
        format!("// {name} {doc}\nmessage {name} {{\n  // {field_doc}\n  {ty} {obj} = 1;\n}}\n")
    };
    line(carry(
        &format!("Create{kind}Request"),
        &format!("carries the {kind} to create."),
        "The object; metadata.name or generate_name is required.",
    ));
    line(carry(
        &format!("Create{kind}Response"),
        &format!("returns the created {kind}."),
        "The object as stored.",
    ));
    line(format!(
        "// Get{kind}Request names the {kind} to read.\nmessage Get{kind}Request {{\n{ns_field}  // Name of the object.\n  string name = {n};\n  // Empty: latest; \"0\": any cached state; N: not older than N.\n  string resource_version = {};\n}}\n",
        n + 1
    ));
    line(carry(
        &format!("Get{kind}Response"),
        &format!("returns the {kind}."),
        "The object.",
    ));
    line(format!(
        "// List{plural}Request selects the {plural} to list.\nmessage List{plural}Request {{\n{list_ns}  // Label selector, Kubernetes syntax (\"app=web,tier!=db\").\n  string label_selector = {n};\n  // Field selector, Kubernetes syntax (\"spec.color=blue\").\n  string field_selector = {};\n  // Empty: consistent read; \"0\": any cached state; N: not older than N.\n  string resource_version = {};\n  // Maximum number of items to return; 0 means all.\n  int32 page_size = {};\n  // next_page_token of the previous page.\n  string page_token = {};\n}}\n",
        n + 1,
        n + 2,
        n + 3,
        n + 4
    ));
    line(format!(
        "// List{plural}Response returns a page of {plural}.\nmessage List{plural}Response {{\n  // Revision and paging of the list.\n  skiff.meta.v1.ListMeta metadata = 1;\n  // The objects.\n  repeated {ty} {objs} = 2;\n}}\n"
    ));
    line(carry(
        &format!("Update{kind}Request"),
        &format!("carries the new {kind}."),
        "The object; metadata.resource_version must be current if set.",
    ));
    line(carry(
        &format!("Update{kind}Response"),
        &format!("returns the updated {kind}."),
        "The object as stored.",
    ));
    if status {
        line(carry(
            &format!("Update{kind}StatusRequest"),
            &format!("carries the {kind} whose status is written."),
            "The object; only its status is written.",
        ));
        line(carry(
            &format!("Update{kind}StatusResponse"),
            &format!("returns the updated {kind}."),
            "The object as stored.",
        ));
    }
    line(format!(
        "// Delete{kind}Request names the {kind} to delete.\nmessage Delete{kind}Request {{\n{ns_field}  // Name of the object.\n  string name = {n};\n  // Conditions the object must meet.\n  skiff.meta.v1.Preconditions preconditions = {};\n  // Background (default), Foreground or Orphan.\n  string propagation_policy = {};\n  // Seconds before forced termination; unset uses the object's default.\n  optional int64 grace_period_seconds = {};\n}}\n",
        n + 1,
        n + 2,
        n + 3
    ));
    line(carry(
        &format!("Delete{kind}Response"),
        &format!("returns the deleted (or terminating) {kind}."),
        "The object as last stored.",
    ));
    line(format!(
        "// Watch{plural}Request selects the changes to stream.\nmessage Watch{plural}Request {{\n{list_ns}  // Label selector, Kubernetes syntax.\n  string label_selector = {n};\n  // Field selector, Kubernetes syntax.\n  string field_selector = {};\n  // Stream changes after this version; empty or \"0\": start with the current state.\n  string resource_version = {};\n  // Send periodic BOOKMARK events carrying the current resource_version.\n  bool allow_bookmarks = {};\n  // Send the current state first, then a BOOKMARK marking its end.\n  bool send_initial_events = {};\n  // End the stream cleanly after this many seconds; 0 means never.\n  int64 timeout_seconds = {};\n}}\n",
        n + 1,
        n + 2,
        n + 3,
        n + 4,
        n + 5
    ));
    line(format!(
        "// Watch{plural}Response is one change to a {kind}.\nmessage Watch{plural}Response {{\n  // What happened.\n  skiff.meta.v1.EventType type = 1;\n  // The object after the change (before it, for DELETED).\n  {ty} object = 2;\n}}"
    ));
    w
}

/// The user's sources, then a descriptor set they gave, then the API's
/// own files, then Google's well-known types.
struct Sources {
    files: BTreeMap<String, String>,
}

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.files.get(name) {
            Some(source) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Compiles `roots` with their imports; the error as protox tells it.
fn run_compiler(
    sources: &BTreeMap<String, String>,
    extra: Option<&prost_types::FileDescriptorSet>,
    roots: &[String],
) -> Result<DescriptorPool, String> {
    let mut chain = ChainFileResolver::new();
    chain.add(Sources {
        files: sources.clone(),
    });
    if let Some(set) = extra {
        chain.add(DescriptorSetFileResolver::new(set.clone()));
    }
    chain.add(api_files());
    chain.add(validate_files());
    chain.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler.include_imports(true).include_source_info(false);
    for r in roots {
        compiler.open_file(Path::new(r)).map_err(|e| describe(&e))?;
    }
    Ok(compiler.descriptor_pool())
}

/// The API's own files (meta.proto and what it imports).
fn api_files() -> DescriptorSetFileResolver {
    let set = prost_types::FileDescriptorSet::decode(skiff::descriptor::FILE_DESCRIPTOR_SET)
        .unwrap_or_default();
    DescriptorSetFileResolver::new(set)
}

/// `buf/validate/validate.proto`, for constraints written as options.
fn validate_files() -> DescriptorSetFileResolver {
    let file = prost_types::FileDescriptorProto::decode(super::validate::VALIDATE_PROTO)
        .unwrap_or_default();
    DescriptorSetFileResolver::new(prost_types::FileDescriptorSet { file: vec![file] })
}

/// A compiler error with its place in the file, when it has one.
fn describe(e: &protox::Error) -> String {
    match e.file() {
        Some(file) if !e.to_string().contains(file) => format!("{file}: {e}"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::api::apiextensions::v1::{DefinedKind, PrinterColumn};

    pub(crate) const WIDGET: &str = r#"
syntax = "proto3";
package acme.v1;
import "skiff/meta/v1/meta.proto";
message Widget { skiff.meta.v1.ObjectMeta metadata = 1; WidgetSpec spec = 2; WidgetStatus status = 3; }
message WidgetSpec { int32 size = 1; string color = 2; }
message WidgetStatus { string phase = 1; }
"#;

    fn spec(source: &str) -> ResourceDefinitionSpec {
        ResourceDefinitionSpec {
            group: "acme.example.com".into(),
            proto_files: [("acme/v1/widget.proto".to_owned(), source.to_owned())].into(),
            file_descriptor_set: Vec::new(),
            kinds: vec![DefinedKind {
                message: "acme.v1.Widget".into(),
                plural: "widgets".into(),
                scope: "Namespaced".into(),
                short_names: vec!["wd".into()],
                printer_columns: vec![PrinterColumn {
                    name: "Color".into(),
                    path: "spec.color".into(),
                }],
                selectable_fields: vec!["spec.color".into()],
            }],
        }
    }

    #[test]
    fn a_definition_compiles_and_its_service_is_synthesized_with_the_api_shape() {
        let c = compile("widgets.acme.example.com", &spec(WIDGET)).unwrap();
        let k = &c.kinds[0];
        assert_eq!(k.kind, "Widget");
        assert_eq!(k.api_version(), "acme.example.com/v1");
        assert_eq!(k.status_field, Some(3));
        assert_eq!(k.service.full_name(), "acme.v1.WidgetService");
        let methods: Vec<String> = k.service.methods().map(|m| m.name().to_owned()).collect();
        assert_eq!(
            methods,
            [
                "CreateWidget",
                "GetWidget",
                "ListWidgets",
                "UpdateWidget",
                "UpdateWidgetStatus",
                "DeleteWidget",
                "WatchWidgets"
            ]
        );
        let list = c
            .pool
            .get_message_by_name("acme.v1.ListWidgetsResponse")
            .unwrap();
        assert_eq!(list.get_field(2).unwrap().name(), "widgets");
        let create = c
            .pool
            .get_message_by_name("acme.v1.CreateWidgetRequest")
            .unwrap();
        assert_eq!(create.get_field(1).unwrap().name(), "widget");
        assert_eq!(
            c.files,
            ["acme/v1/widget.proto", "acme/v1/widget_service.proto"]
        );
        assert!(k.selectable_fields.contains(&"spec.color".to_owned()));
    }

    #[test]
    fn a_kind_without_object_meta_as_field_one_is_refused_with_the_reason() {
        let bad = WIDGET.replace(
            "skiff.meta.v1.ObjectMeta metadata = 1; WidgetSpec spec = 2;",
            "WidgetSpec spec = 1; skiff.meta.v1.ObjectMeta metadata = 2;",
        );
        let v = compile("widgets.acme.example.com", &spec(&bad)).unwrap_err();
        assert_eq!(v[0].field, "spec.kinds[0].message");
        assert!(v[0].description.contains("field 1"), "{v:?}");
    }

    #[test]
    fn a_definition_that_does_not_compile_names_the_file() {
        let v = compile(
            "widgets.acme.example.com",
            &spec("syntax = \"proto3\"; message {"),
        )
        .unwrap_err();
        assert_eq!(v[0].field, "spec.protoFiles");
        assert!(v[0].description.contains("acme/v1/widget.proto"), "{v:?}");
    }

    #[test]
    fn selectable_fields_and_columns_must_name_scalars_and_the_name_must_be_plural_dot_group() {
        let mut s = spec(WIDGET);
        s.kinds[0].selectable_fields = vec!["spec".into(), "spec.nope".into()];
        let v = compile("widgets.acme.example.com", &s).unwrap_err();
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.kinds[0].selectableFields[0]",
                "spec.kinds[0].selectableFields[1]"
            ]
        );
        let v = compile("gadgets.acme.example.com", &spec(WIDGET)).unwrap_err();
        assert_eq!(v[0].field, "metadata.name");
    }

    #[test]
    fn plurals_take_the_kinds_spelling() {
        assert_eq!(plural_camel("Widget", "widgets"), "Widgets");
        assert_eq!(plural_camel("Policy", "policies"), "Policies");
        assert_eq!(plural_camel("ConfigMap", "configmaps"), "ConfigMaps");
        assert_eq!(plural_camel("Mouse", "mice"), "Mice");
        assert_eq!(snake("ConfigMaps"), "config_maps");
    }
}
