//! Whether a new version of a definition still reads the objects stored
//! under the old one: the wire-compatibility checks `buf breaking` makes,
//! done at admission, each refusal naming its rule (buf's names).
//!
//! Compares schemas only; must not read objects.

use std::collections::HashSet;

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};

use super::schema::CompiledDefinition;
use crate::error::FieldViolation;

/// Every way `new` breaks objects stored with `old`.
pub fn breaking_changes(old: &CompiledDefinition, new: &CompiledDefinition) -> Vec<FieldViolation> {
    let mut v = Vec::new();
    for (i, o) in old.kinds.iter().enumerate() {
        let Some((j, n)) = new
            .kinds
            .iter()
            .enumerate()
            .find(|(_, n)| n.plural == o.plural)
        else {
            v.push(FieldViolation::new(
                format!("spec.kinds[{i}]"),
                format!(
                    "KIND_NO_DELETE: kind {} ({}) was removed; delete the definition to remove its kinds",
                    o.kind, o.plural
                ),
            ));
            continue;
        };
        let at = format!("spec.kinds[{j}]");
        if o.namespaced != n.namespaced {
            v.push(FieldViolation::new(
                format!("{at}.scope"),
                "KIND_SAME_SCOPE: the scope of a kind with stored objects cannot change",
            ));
        }
        if o.message.package_name() != n.message.package_name() {
            v.push(FieldViolation::new(
                format!("{at}.message"),
                format!(
                    "FILE_SAME_PACKAGE: package {} was renamed to {}",
                    o.message.package_name(),
                    n.message.package_name()
                ),
            ));
        }
        if o.kind != n.kind {
            v.push(FieldViolation::new(
                format!("{at}.message"),
                format!(
                    "MESSAGE_NO_DELETE: message {} was renamed to {}",
                    o.kind, n.kind
                ),
            ));
        }
        let mut seen = HashSet::new();
        compare_messages(&o.message, &n.message, &at, &mut seen, &mut v);
    }
    v
}

fn reserved(message: &MessageDescriptor, number: u32) -> bool {
    message
        .descriptor_proto()
        .reserved_range
        .iter()
        .any(|r| (r.start() as i64..r.end() as i64).contains(&(number as i64)))
}

fn cardinality(f: &FieldDescriptor) -> &'static str {
    if f.is_map() {
        "map"
    } else if f.is_list() {
        "repeated"
    } else {
        "singular"
    }
}

/// The type of a field as the wire sees it (names of messages and enums
/// count as the same type when their contents are compared instead).
fn type_name(k: &Kind) -> String {
    match k {
        Kind::Message(m) => format!("message {}", m.name()),
        Kind::Enum(e) => format!("enum {}", e.name()),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn compare_messages(
    old: &MessageDescriptor,
    new: &MessageDescriptor,
    at: &str,
    seen: &mut HashSet<(String, String)>,
    v: &mut Vec<FieldViolation>,
) {
    if !seen.insert((old.full_name().to_owned(), new.full_name().to_owned())) {
        return;
    }
    for of in old.fields() {
        match new.get_field(of.number()) {
            None => {
                if !reserved(new, of.number()) {
                    v.push(FieldViolation::new(
                        at.to_owned(),
                        format!(
                            "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED: {}.{} (number {}) was removed without `reserved {};`",
                            old.name(),
                            of.name(),
                            of.number(),
                            of.number()
                        ),
                    ));
                }
            }
            Some(nf) => {
                if cardinality(&of) != cardinality(&nf) {
                    v.push(FieldViolation::new(
                        at.to_owned(),
                        format!(
                            "FIELD_SAME_CARDINALITY: {}.{} (number {}) changed from {} to {}",
                            old.name(),
                            of.name(),
                            of.number(),
                            cardinality(&of),
                            cardinality(&nf)
                        ),
                    ));
                    continue;
                }
                match (of.kind(), nf.kind()) {
                    (Kind::Message(om), Kind::Message(nm)) => {
                        compare_messages(&om, &nm, at, seen, v);
                    }
                    (Kind::Enum(oe), Kind::Enum(ne)) => compare_enums(&oe, &ne, at, v),
                    (ok, nk) if ok == nk => {}
                    (ok, nk) => v.push(FieldViolation::new(
                        at.to_owned(),
                        format!(
                            "FIELD_SAME_TYPE: {}.{} (number {}) changed type from {} to {}{}",
                            old.name(),
                            of.name(),
                            of.number(),
                            type_name(&ok),
                            type_name(&nk),
                            if of.name() == nf.name() {
                                String::new()
                            } else {
                                format!(" (the number is reused by {})", nf.name())
                            }
                        ),
                    )),
                }
            }
        }
    }
}

fn compare_enums(
    old: &EnumDescriptor,
    new: &EnumDescriptor,
    at: &str,
    v: &mut Vec<FieldViolation>,
) {
    for ov in old.values() {
        let kept = new.get_value(ov.number()).is_some()
            || new
                .enum_descriptor_proto()
                .reserved_range
                .iter()
                .any(|r| (r.start()..=r.end()).contains(&ov.number()));
        if !kept {
            v.push(FieldViolation::new(
                at.to_owned(),
                format!(
                    "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED: {}.{} (number {}) was removed",
                    old.name(),
                    ov.name(),
                    ov.number()
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::compile;
    use super::*;
    use skiff::api::apiextensions::v1::{DefinedKind, ResourceDefinitionSpec};

    fn compiled(body: &str) -> CompiledDefinition {
        compiled_in("acme.v1", body)
    }

    fn compiled_in(package: &str, body: &str) -> CompiledDefinition {
        let source = format!(
            "syntax = \"proto3\";\npackage {package};\nimport \"skiff/meta/v1/meta.proto\";\n\
             message Widget {{ skiff.meta.v1.ObjectMeta metadata = 1; WidgetSpec spec = 2; }}\n{body}\n"
        );
        let spec = ResourceDefinitionSpec {
            group: "acme.example.com".into(),
            proto_files: [("acme/widget.proto".to_owned(), source)].into(),
            file_descriptor_set: Vec::new(),
            kinds: vec![DefinedKind {
                message: format!("{package}.Widget"),
                plural: "widgets".into(),
                ..Default::default()
            }],
        };
        compile("widgets.acme.example.com", &spec).unwrap()
    }

    fn rules(old: &str, new: &str) -> Vec<String> {
        breaking_changes(&compiled(old), &compiled(new))
            .into_iter()
            .map(|v| {
                v.description
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    const BASE: &str = "message WidgetSpec { int32 size = 1; string color = 2; Mode mode = 3; }\n\
                        enum Mode { MODE_UNSPECIFIED = 0; FAST = 1; }";

    #[test]
    fn a_new_field_is_compatible() {
        let new = BASE.replace("Mode mode = 3;", "Mode mode = 3; bool shiny = 4;");
        assert!(rules(BASE, &new).is_empty());
    }

    #[test]
    fn a_field_number_reused_with_another_type_is_refused() {
        let new = BASE.replace("string color = 2;", "int64 weight = 2;");
        assert_eq!(rules(BASE, &new), ["FIELD_SAME_TYPE"]);
    }

    #[test]
    fn a_field_removed_without_reserving_its_number_is_refused_and_allowed_when_reserved() {
        let removed = BASE.replace("string color = 2;", "");
        assert_eq!(
            rules(BASE, &removed),
            ["FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED"]
        );
        let reserved = BASE.replace("string color = 2;", "reserved 2;");
        assert!(rules(BASE, &reserved).is_empty());
    }

    #[test]
    fn a_field_made_repeated_is_refused() {
        let new = BASE.replace("int32 size = 1;", "repeated int32 size = 1;");
        assert_eq!(rules(BASE, &new), ["FIELD_SAME_CARDINALITY"]);
    }

    #[test]
    fn an_enum_value_removed_is_refused() {
        let new = BASE.replace("FAST = 1;", "");
        assert_eq!(
            rules(BASE, &new),
            ["ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED"]
        );
    }

    #[test]
    fn a_renamed_package_is_refused() {
        let v = breaking_changes(&compiled(BASE), &compiled_in("acme.v2", BASE));
        assert!(
            v.iter()
                .any(|v| v.description.starts_with("FILE_SAME_PACKAGE")),
            "{v:?}"
        );
    }
}
