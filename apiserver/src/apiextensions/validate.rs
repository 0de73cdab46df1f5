//! Constraints written in a defined kind's .proto as `protovalidate`
//! options (`(buf.validate.field)`): checked when the definition is
//! registered (each rule fits its field, patterns compile, only rules this
//! server enforces), then enforced on every create and update, each
//! violation named in `google.rpc.BadRequest` with protovalidate's rule id.
//!
//! Enforced: `required`; numbers' `const`, `lt`, `lte`, `gt`, `gte`, `in`,
//! `not_in`; strings' `const`, `len`, `min_len`, `max_len`, `pattern`,
//! `prefix`, `suffix`, `contains`, `not_contains`, `in`, `not_in`; bytes'
//! `min_len`, `max_len`; enums' `const`, `defined_only`, `in`, `not_in`;
//! repeated fields' `min_items`, `max_items`, `unique` and `items`; maps'
//! `min_pairs`, `max_pairs`; bools' `const`; and CEL rules on fields and
//! messages (see [`super::cel`]: their cost is bounded at registration,
//! and they run on objects that pass the other rules).
//!
//! The descriptor of `buf/validate/validate.proto` is Buf's (Apache-2.0),
//! as published in the `protovalidate` package.

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    ReflectMessage, Value,
};

use super::cel;
use crate::error::FieldViolation;

/// `buf/validate/validate.proto` as an encoded `FileDescriptorProto`.
pub const VALIDATE_PROTO: &[u8] = include_bytes!("buf_validate.binpb");

/// Rule groups by field kind, as `FieldRules` names them.
fn group_of(field: &FieldDescriptor) -> &'static str {
    match field.kind() {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Enum(_) => "enum",
        Kind::Message(_) => "message",
    }
}

const NUMBER_RULES: &[&str] = &["const", "lt", "lte", "gt", "gte", "in", "not_in", "example"];
const STRING_RULES: &[&str] = &[
    "const",
    "len",
    "min_len",
    "max_len",
    "pattern",
    "prefix",
    "suffix",
    "contains",
    "not_contains",
    "in",
    "not_in",
    "example",
];

fn supported(group: &str, rule: &str) -> bool {
    match group {
        "string" => STRING_RULES.contains(&rule),
        "bytes" => ["min_len", "max_len", "example"].contains(&rule),
        "enum" => ["const", "defined_only", "in", "not_in", "example"].contains(&rule),
        "repeated" => ["min_items", "max_items", "unique", "items"].contains(&rule),
        "map" => ["min_pairs", "max_pairs"].contains(&rule),
        "bool" => ["const", "example"].contains(&rule),
        _ => NUMBER_RULES.contains(&rule),
    }
}

fn extension(pool: &DescriptorPool, name: &str) -> Option<ExtensionDescriptor> {
    pool.get_extension_by_name(name)
}

/// The rules set on `field`, if any.
pub(super) fn rules_of(field: &FieldDescriptor) -> Option<DynamicMessage> {
    let ext = extension(field.parent_pool(), "buf.validate.field")?;
    let options = field.options();
    if !options.has_extension(&ext) {
        return None;
    }
    options.get_extension(&ext).as_message().cloned()
}

/// The set fields of a message, by name.
fn set_fields(m: &DynamicMessage) -> Vec<(String, Value)> {
    m.fields()
        .map(|(f, v)| (f.name().to_owned(), v.clone()))
        .collect()
}

/// Problems with the rules of `message` and the messages it holds, each
/// as "path: what".
pub fn check_rules(message: &MessageDescriptor) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    check_message(message, "", &mut out, &mut seen);
    out
}

fn check_message(
    message: &MessageDescriptor,
    path: &str,
    out: &mut Vec<String>,
    seen: &mut Vec<String>,
) {
    if seen.iter().any(|s| s == message.full_name()) {
        return;
    }
    seen.push(message.full_name().to_owned());
    if let Some(ext) = extension(message.parent_pool(), "buf.validate.message") {
        let options = message.options();
        if options.has_extension(&ext)
            && let Some(rules) = options.get_extension(&ext).as_message()
        {
            let at = if path.is_empty() {
                message.full_name()
            } else {
                path
            };
            for (name, _) in set_fields(rules) {
                if name != "cel" {
                    out.push(format!(
                        "{at}: message rule {name} is not supported by this server"
                    ));
                }
            }
            for rule in cel::rules_in(rules) {
                if let Err(e) = cel::check(&rule, cel::Ty::Message(message.clone())) {
                    out.push(format!("{at}: {e}"));
                }
            }
        }
    }
    for field in message.fields() {
        let at = join(path, field.name());
        if let Some(rules) = rules_of(&field) {
            check_field_rules(&field, &rules, &at, out);
        }
        if let Kind::Message(m) = field.kind()
            && !m.full_name().starts_with("google.protobuf.")
        {
            check_message(&m, &at, out, seen);
        }
    }
}

fn check_field_rules(
    field: &FieldDescriptor,
    rules: &DynamicMessage,
    at: &str,
    out: &mut Vec<String>,
) {
    for rule in cel::rules_in(rules) {
        if let Err(e) = cel::check(&rule, cel::ty_of_field(field)) {
            out.push(format!("{at}: {e}"));
        }
    }
    for (name, value) in set_fields(rules) {
        match name.as_str() {
            "required" | "ignore" | "cel" | "cel_expression" => {}
            group => {
                let expected = if field.is_map() {
                    "map"
                } else if field.is_list() {
                    "repeated"
                } else {
                    group_of(field)
                };
                if group != expected {
                    out.push(format!("{at}: {group} rules on a {expected} field"));
                    continue;
                }
                let Some(group_rules) = value.as_message() else {
                    continue;
                };
                for (rule, v) in set_fields(group_rules) {
                    if !supported(group, &rule) {
                        out.push(format!(
                            "{at}: {group}.{rule} is not supported by this server"
                        ));
                    }
                    if group == "string"
                        && rule == "pattern"
                        && let Some(p) = v.as_str()
                        && let Err(e) = regex::Regex::new(p)
                    {
                        out.push(format!("{at}: string.pattern does not compile: {e}"));
                    }
                    if group == "repeated"
                        && rule == "items"
                        && let Some(item_rules) = v.as_message()
                    {
                        // Each item's rules are those of a singular field.
                        check_item_rules(field, item_rules, &format!("{at}[]"), out);
                    }
                }
            }
        }
    }
}

fn check_item_rules(
    field: &FieldDescriptor,
    rules: &DynamicMessage,
    at: &str,
    out: &mut Vec<String>,
) {
    for (name, value) in set_fields(rules) {
        if name == "required" {
            continue;
        }
        let expected = group_of(field);
        if name != expected {
            out.push(format!("{at}: {name} rules on {expected} items"));
            continue;
        }
        if let Some(group_rules) = value.as_message() {
            for (rule, _) in set_fields(group_rules) {
                if !supported(&name, &rule) {
                    out.push(format!(
                        "{at}: {name}.{rule} is not supported by this server"
                    ));
                }
            }
        }
    }
}

/// Calls `visit` with each message a field's `value` holds (itself, each
/// item, each map value) and its path.
fn for_each_message(value: &Value, at: &str, mut visit: impl FnMut(&DynamicMessage, &str)) {
    match value {
        Value::Message(inner) => visit(inner, at),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Value::Message(inner) = item {
                    visit(inner, &format!("{at}[{i}]"));
                }
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                if let Value::Message(inner) = v {
                    visit(inner, &format!("{at}[{k:?}]"));
                }
            }
        }
        _ => {}
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Every violation of `object`'s rules (and of the messages it holds).
pub fn validate(object: &DynamicMessage) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    validate_message(object, "", &mut out);
    // CEL rules assume the bounds the other rules set.
    if out.is_empty() {
        cel_message(object, "", &mut out);
    }
    out
}

/// The violations of CEL rules on `m`, its fields and the messages it holds.
fn cel_message(m: &DynamicMessage, path: &str, out: &mut Vec<FieldViolation>) {
    let desc = m.descriptor();
    if let Some(ext) = extension(desc.parent_pool(), "buf.validate.message")
        && desc.options().has_extension(&ext)
        && let Some(rules) = desc.options().get_extension(&ext).as_message()
    {
        let rules = cel::rules_in(rules);
        if !rules.is_empty() {
            let this = cel::message_to_cel(m);
            for rule in rules {
                if let Some(message) = cel::evaluate(&rule, &this) {
                    out.push(FieldViolation::new(
                        path,
                        format!("{message} ({})", rule.id),
                    ));
                }
            }
        }
    }
    for field in desc.fields() {
        let at = join(path, field.json_name());
        let present = m.has_field(&field);
        let singular_message =
            matches!(field.kind(), Kind::Message(_)) && !field.is_list() && !field.is_map();
        if let Some(rules) = rules_of(&field)
            && (present || !singular_message)
        {
            let rules = cel::rules_in(&rules);
            if !rules.is_empty() {
                let this = cel::to_cel(&m.get_field(&field));
                for rule in rules {
                    if let Some(message) = cel::evaluate(&rule, &this) {
                        out.push(FieldViolation::new(
                            at.clone(),
                            format!("{message} ({})", rule.id),
                        ));
                    }
                }
            }
        }
        if !present {
            continue;
        }
        for_each_message(&m.get_field(&field), &at, |inner, at| {
            cel_message(inner, at, out)
        });
    }
}

/// The violations of the rules of `object`'s `status` (what a status
/// update writes).
pub fn validate_status(object: &DynamicMessage) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    if object.has_field_by_name("status")
        && let Some(Value::Message(status)) =
            object.get_field_by_name("status").map(|v| v.into_owned())
    {
        validate_message(&status, "status", &mut out);
        if out.is_empty() {
            cel_message(&status, "status", &mut out);
        }
    }
    out
}

fn validate_message(m: &DynamicMessage, path: &str, out: &mut Vec<FieldViolation>) {
    let desc = m.descriptor();
    for field in desc.fields() {
        let at = join(path, field.json_name());
        let rules = rules_of(&field);
        let present = m.has_field(&field);
        if let Some(rules) = &rules {
            if rules
                .get_field_by_name("required")
                .and_then(|v| v.as_bool())
                == Some(true)
                && !present
            {
                out.push(FieldViolation::new(
                    at.clone(),
                    "value is required (required)",
                ));
                continue;
            }
            // A message field left unset has nothing to check.
            let skip = matches!(field.kind(), Kind::Message(_))
                && !field.is_list()
                && !field.is_map()
                && !present;
            if !skip {
                check_value(&field, rules, &m.get_field(&field), &at, out);
            }
        }
        if !present {
            continue;
        }
        for_each_message(&m.get_field(&field), &at, |inner, at| {
            validate_message(inner, at, out)
        });
    }
}

fn check_value(
    field: &FieldDescriptor,
    rules: &DynamicMessage,
    value: &Value,
    at: &str,
    out: &mut Vec<FieldViolation>,
) {
    for (group, group_value) in set_fields(rules) {
        let Some(r) = group_value.as_message() else {
            continue;
        };
        match (group.as_str(), value) {
            ("repeated", Value::List(items)) => {
                check_repeated(field, r, items, at, out);
            }
            ("map", Value::Map(entries)) => {
                let n = entries.len() as u64;
                if let Some(min) = r.get_field_by_name("min_pairs").and_then(|v| v.as_u64())
                    && r.has_field_by_name("min_pairs")
                    && n < min
                {
                    out.push(FieldViolation::new(
                        at,
                        format!("map must be at least {min} entries (map.min_pairs)"),
                    ));
                }
                if let Some(max) = r.get_field_by_name("max_pairs").and_then(|v| v.as_u64())
                    && r.has_field_by_name("max_pairs")
                    && n > max
                {
                    out.push(FieldViolation::new(
                        at,
                        format!("map must be at most {max} entries (map.max_pairs)"),
                    ));
                }
            }
            (g, v) => check_scalar(field, g, r, v, at, out),
        }
    }
}

fn check_repeated(
    field: &FieldDescriptor,
    r: &DynamicMessage,
    items: &[Value],
    at: &str,
    out: &mut Vec<FieldViolation>,
) {
    let n = items.len() as u64;
    if r.has_field_by_name("min_items")
        && let Some(min) = r.get_field_by_name("min_items").and_then(|v| v.as_u64())
        && n < min
    {
        out.push(FieldViolation::new(
            at,
            format!("value must contain at least {min} item(s) (repeated.min_items)"),
        ));
    }
    if r.has_field_by_name("max_items")
        && let Some(max) = r.get_field_by_name("max_items").and_then(|v| v.as_u64())
        && n > max
    {
        out.push(FieldViolation::new(
            at,
            format!("value must contain no more than {max} item(s) (repeated.max_items)"),
        ));
    }
    if r.get_field_by_name("unique").and_then(|v| v.as_bool()) == Some(true) {
        for (i, item) in items.iter().enumerate() {
            if items.get(..i).is_some_and(|before| before.contains(item)) {
                out.push(FieldViolation::new(
                    format!("{at}[{i}]"),
                    "repeated value must contain unique items (repeated.unique)",
                ));
            }
        }
    }
    if r.has_field_by_name("items")
        && let Some(item_rules) = r
            .get_field_by_name("items")
            .and_then(|v| v.as_message().cloned())
    {
        for (i, item) in items.iter().enumerate() {
            for (g, gv) in set_fields(&item_rules) {
                if let Some(gr) = gv.as_message() {
                    check_scalar(field, &g, gr, item, &format!("{at}[{i}]"), out);
                }
            }
        }
    }
}

/// A number as f64 for comparisons (exact for every integer a rule and a
/// value share a type with, up to 2^53).
fn number(v: &Value) -> Option<f64> {
    Some(match v {
        Value::I32(n) => f64::from(*n),
        Value::I64(n) => *n as f64,
        Value::U32(n) => f64::from(*n),
        Value::U64(n) => *n as f64,
        Value::F32(n) => f64::from(*n),
        Value::F64(n) => *n,
        Value::EnumNumber(n) => f64::from(*n),
        _ => return None,
    })
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Bool(b) => b.to_string(),
        other => number(other).map_or_else(|| format!("{other:?}"), |n| n.to_string()),
    }
}

fn list_of(r: &DynamicMessage, name: &str) -> Option<Vec<Value>> {
    if !r.has_field_by_name(name) {
        return None;
    }
    match r.get_field_by_name(name)?.into_owned() {
        Value::List(items) => Some(items),
        _ => None,
    }
}

fn check_scalar(
    field: &FieldDescriptor,
    group: &str,
    r: &DynamicMessage,
    value: &Value,
    at: &str,
    out: &mut Vec<FieldViolation>,
) {
    let mut fail = |rule: &str, what: String| {
        out.push(FieldViolation::new(at, format!("{what} ({group}.{rule})")));
    };
    let get = |name: &str| -> Option<Value> {
        r.has_field_by_name(name)
            .then(|| r.get_field_by_name(name).map(|v| v.into_owned()))
            .flatten()
    };
    if let Some(c) = get("const")
        && c != *value
        && !(number(&c).is_some() && number(&c) == number(value))
    {
        fail("const", format!("value must equal {}", shown(&c)));
    }
    if let Some(allowed) = list_of(r, "in")
        && !allowed
            .iter()
            .any(|a| a == value || (number(a).is_some() && number(a) == number(value)))
    {
        let list: Vec<String> = allowed.iter().map(shown).collect();
        fail("in", format!("value must be in list [{}]", list.join(", ")));
    }
    if let Some(denied) = list_of(r, "not_in")
        && denied
            .iter()
            .any(|a| a == value || (number(a).is_some() && number(a) == number(value)))
    {
        let list: Vec<String> = denied.iter().map(shown).collect();
        fail(
            "not_in",
            format!("value must not be in list [{}]", list.join(", ")),
        );
    }
    match group {
        "string" => {
            let s = value.as_str().unwrap_or_default();
            let chars = s.chars().count() as u64;
            let num = |n: &str| get(n).and_then(|v| v.as_u64());
            if let Some(n) = num("len")
                && chars != n
            {
                fail("len", format!("value length must be {n} characters"));
            }
            if let Some(n) = num("min_len")
                && chars < n
            {
                fail(
                    "min_len",
                    format!("value length must be at least {n} characters"),
                );
            }
            if let Some(n) = num("max_len")
                && chars > n
            {
                fail(
                    "max_len",
                    format!("value length must be at most {n} characters"),
                );
            }
            let text = |n: &str| get(n).and_then(|v| v.as_str().map(str::to_owned));
            if let Some(p) = text("pattern")
                && let Ok(re) = regex::Regex::new(&p)
                && !re.is_match(s)
            {
                fail(
                    "pattern",
                    format!("value does not match regex pattern {p:?}"),
                );
            }
            if let Some(p) = text("prefix")
                && !s.starts_with(&p)
            {
                fail("prefix", format!("value does not have prefix {p:?}"));
            }
            if let Some(p) = text("suffix")
                && !s.ends_with(&p)
            {
                fail("suffix", format!("value does not have suffix {p:?}"));
            }
            if let Some(p) = text("contains")
                && !s.contains(&p)
            {
                fail(
                    "contains",
                    format!("value does not contain substring {p:?}"),
                );
            }
            if let Some(p) = text("not_contains")
                && s.contains(&p)
            {
                fail("not_contains", format!("value contains substring {p:?}"));
            }
        }
        "bytes" => {
            let n = value.as_bytes().map_or(0, |b| b.len() as u64);
            if let Some(min) = get("min_len").and_then(|v| v.as_u64())
                && n < min
            {
                fail(
                    "min_len",
                    format!("value length must be at least {min} bytes"),
                );
            }
            if let Some(max) = get("max_len").and_then(|v| v.as_u64())
                && n > max
            {
                fail(
                    "max_len",
                    format!("value length must be at most {max} bytes"),
                );
            }
        }
        "enum" => {
            if get("defined_only").and_then(|v| v.as_bool()) == Some(true)
                && let (Kind::Enum(e), Value::EnumNumber(n)) = (field.kind(), value)
                && e.get_value(*n).is_none()
            {
                fail(
                    "defined_only",
                    "value must be one of the defined enum values".to_owned(),
                );
            }
        }
        "bool" => {}
        _ => {
            let Some(v) = number(value) else { return };
            let bound = |n: &str| get(n).as_ref().and_then(number);
            if let Some(b) = bound("gt")
                && v <= b
            {
                fail("gt", format!("value must be greater than {b}"));
            }
            if let Some(b) = bound("gte")
                && v < b
            {
                fail("gte", format!("value must be greater than or equal to {b}"));
            }
            if let Some(b) = bound("lt")
                && v >= b
            {
                fail("lt", format!("value must be less than {b}"));
            }
            if let Some(b) = bound("lte")
                && v > b
            {
                fail("lte", format!("value must be less than or equal to {b}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::compile;
    use super::*;
    use skiff::api::apiextensions::v1::{DefinedKind, ResourceDefinitionSpec};

    const RULED: &str = r#"
syntax = "proto3";
package acme.v1;
import "skiff/meta/v1/meta.proto";
import "buf/validate/validate.proto";
message Widget { skiff.meta.v1.ObjectMeta metadata = 1; WidgetSpec spec = 2 [(buf.validate.field).required = true]; }
message WidgetSpec {
  int32 size = 1 [(buf.validate.field).int32 = {gte: 1, lte: 10}];
  string color = 2 [(buf.validate.field).string = {in: ["red", "blue"]}];
  string code = 3 [(buf.validate.field).string = {pattern: "^[a-z]+$", max_len: 8}];
  repeated string tags = 4 [(buf.validate.field).repeated = {max_items: 2, unique: true}];
  Mode mode = 5 [(buf.validate.field).enum = {defined_only: true, not_in: [2]}];
}
enum Mode { MODE_UNSPECIFIED = 0; FAST = 1; SLOW = 2; }
"#;

    fn spec(source: &str) -> ResourceDefinitionSpec {
        ResourceDefinitionSpec {
            group: "acme.example.com".into(),
            proto_files: [("acme/v1/widget.proto".to_owned(), source.to_owned())].into(),
            file_descriptor_set: Vec::new(),
            kinds: vec![DefinedKind {
                message: "acme.v1.Widget".into(),
                plural: "widgets".into(),
                ..Default::default()
            }],
        }
    }

    fn widget(json: serde_json::Value) -> Vec<String> {
        let c = compile("widgets.acme.example.com", &spec(RULED)).unwrap();
        let m = DynamicMessage::deserialize(c.kinds[0].message.clone(), json).unwrap();
        validate(&m)
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect()
    }

    #[test]
    fn a_valid_object_has_no_violations() {
        let v = widget(
            serde_json::json!({"spec": {"size": 3, "color": "red", "code": "abc", "tags": ["a", "b"], "mode": "FAST"}}),
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn each_broken_rule_is_named_with_its_field_and_rule_id() {
        let v = widget(
            serde_json::json!({"spec": {"size": 11, "color": "green", "code": "ABC", "tags": ["a", "a", "b"], "mode": 2}}),
        );
        let joined = v.join("\n");
        for want in [
            "spec.size: value must be less than or equal to 10 (int32.lte)",
            "spec.color: value must be in list [\"red\", \"blue\"] (string.in)",
            "spec.code: value does not match regex pattern \"^[a-z]+$\" (string.pattern)",
            "spec.tags: value must contain no more than 2 item(s) (repeated.max_items)",
            "spec.tags[1]: repeated value must contain unique items (repeated.unique)",
            "spec.mode: value must not be in list [2] (enum.not_in)",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
        let missing = widget(serde_json::json!({}));
        assert_eq!(missing, ["spec: value is required (required)"]);
    }

    #[test]
    fn cel_rules_on_fields_and_messages_are_enforced_after_the_others() {
        let source = RULED
            .replace(
                "[(buf.validate.field).int32 = {gte: 1, lte: 10}]",
                "[(buf.validate.field).int32 = {gte: 1, lte: 10}, (buf.validate.field).cel = {id: \"even\", message: \"size must be even\", expression: \"this % 2 == 0\"}]",
            )
            .replace(
                "message WidgetSpec {",
                "message WidgetSpec {\n  option (buf.validate.message).cel = {id: \"tags_fit\", expression: \"size(this.tags) <= this.size ? '' : 'more tags than size'\"};",
            );
        let c = compile("widgets.acme.example.com", &spec(&source)).unwrap();
        let check = |json| {
            let m = DynamicMessage::deserialize(c.kinds[0].message.clone(), json).unwrap();
            validate(&m)
                .into_iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
        };
        assert!(check(serde_json::json!({"spec": {"size": 2, "tags": ["a"], "color": "red", "code": "abc"}})).is_empty());
        assert_eq!(
            check(serde_json::json!({"spec": {"size": 3, "color": "red", "code": "abc"}})),
            ["spec.size: size must be even (even)"]
        );
        assert_eq!(
            check(
                serde_json::json!({"spec": {"size": 2, "tags": ["a", "b"], "color": "red", "code": "x"}})
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            check(
                serde_json::json!({"spec": {"size": 4, "tags": ["a", "b", "c"], "color": "red", "code": "abc"}})
            ),
            // max_items fails first: CEL runs only on objects that pass the rest.
            ["spec.tags: value must contain no more than 2 item(s) (repeated.max_items)"]
        );
        let c2 = compile(
            "widgets.acme.example.com",
            &spec(&source.replace("max_items: 2", "max_items: 5")),
        )
        .unwrap();
        let m = DynamicMessage::deserialize(
            c2.kinds[0].message.clone(),
            serde_json::json!({"spec": {"size": 2, "tags": ["a", "b", "c"], "color": "red", "code": "abc"}}),
        )
        .unwrap();
        let v: Vec<_> = validate(&m)
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        assert_eq!(v, ["spec: more tags than size (tags_fit)"]);
    }

    #[test]
    fn rules_that_do_not_fit_or_are_not_enforced_are_refused_at_registration() {
        let wrong = RULED.replace(
            "(buf.validate.field).int32 = {gte: 1, lte: 10}",
            "(buf.validate.field).string = {min_len: 1}",
        );
        let v = compile("widgets.acme.example.com", &spec(&wrong)).unwrap_err();
        assert!(
            v[0].description.contains("string rules on a int32 field"),
            "{v:?}"
        );
        // A walk of a list with no bound of its own has no bounded cost.
        let unbounded = RULED.replace(
            "[(buf.validate.field).repeated = {max_items: 2, unique: true}]",
            "[(buf.validate.field).cel = {id: \"short\", expression: \"this.all(t, this.exists(u, t == u))\"}]",
        );
        let v = compile("widgets.acme.example.com", &spec(&unbounded)).unwrap_err();
        assert!(
            v[0].description.contains("\"short\"")
                && v[0].description.contains("exceeds the limit"),
            "{v:?}"
        );
        let bad_pattern = RULED.replace("^[a-z]+$", "([a-z");
        let v = compile("widgets.acme.example.com", &spec(&bad_pattern)).unwrap_err();
        assert!(v[0].description.contains("does not compile"), "{v:?}");
    }
}
