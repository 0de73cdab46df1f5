//! Manifests in the Kubernetes shape (`apiVersion`, `kind`, `metadata`,
//! `spec`, …) as YAML or JSON, converted to and from protobuf through the
//! API's descriptors, so every kind works with no per-kind code. Values
//! Kubernetes YAML writes loosely are accepted where the field's type says
//! what they mean (`cpu: 1` for a quantity string, `targetPort: 8080` for a
//! port given as number or name). Errors name the document and the field.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::KindInfo;
use crate::client::dynamic::DynamicKind;

/// Annotation holding the manifest last applied (used to compute what `apply` removes).
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct ManifestError {
    /// Which document ("web.yaml document 2 (apps/v1 Deployment web)").
    pub origin: String,
    /// JSON path of the bad field, if one is to blame.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// One object read from a manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its kind.
    pub kind: DynamicKind,
    /// The object.
    pub object: DynamicMessage,
    /// The object as JSON, as written (without `apiVersion` and `kind`).
    pub value: Value,
    /// Where it came from, for messages.
    pub origin: String,
}

/// The documents of a YAML text whose `kind` is `kind`, parsed; documents
/// that are not valid or of other kinds are skipped (to apply resource
/// definitions before the objects of the kinds they define).
pub fn parse_kind(text: &str, source: &str, kind: &str) -> Vec<Manifest> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let origin = format!("{source} document {}", i + 1);
        // A document that is not YAML ends the text (the parser cannot go on).
        let Ok(value) = Value::deserialize(doc) else {
            break;
        };
        if value.get("kind").and_then(Value::as_str) != Some(kind) {
            continue;
        }
        if let Ok(m) = from_value(value, &origin) {
            out.push(m);
        }
    }
    out
}

/// Parses every document of a YAML (or JSON) text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let origin = format!("{source} document {}", i + 1);
        let value = Value::deserialize(doc).map_err(|e| ManifestError {
            origin: origin.clone(),
            field: String::new(),
            message: format!("not valid YAML: {e}"),
        })?;
        if value.is_null() {
            continue;
        }
        out.push(from_value(value, &origin)?);
    }
    Ok(out)
}

/// Reads one object from its JSON value (with `apiVersion` and `kind`).
pub fn from_value(value: Value, origin: &str) -> Result<Manifest, ManifestError> {
    let err = |field: &str, message: String| ManifestError {
        origin: origin.to_owned(),
        field: field.to_owned(),
        message,
    };
    let Value::Object(mut map) = value else {
        return Err(err(
            "",
            "a manifest is a mapping with apiVersion, kind and metadata".into(),
        ));
    };
    let api_version = match map.remove("apiVersion") {
        Some(Value::String(s)) => s,
        _ => return Err(err("apiVersion", "required (e.g. v1 or apps/v1)".into())),
    };
    let kind_name = match map.remove("kind") {
        Some(Value::String(s)) => s,
        _ => return Err(err("kind", "required (e.g. Pod)".into())),
    };
    let kind = DynamicKind::by_api_version(&api_version, &kind_name).ok_or_else(|| {
        let defined = crate::client::dynamic::defined_kinds();
        let known = crate::KINDS
            .iter()
            .chain(defined.iter().map(|k| k.info))
            .filter(|k| k.kind == kind_name)
            .map(|k| k.api_version)
            .collect::<Vec<_>>();
        if known.is_empty() {
            err(
                "kind",
                format!("unknown kind {kind_name:?}; `skiff api-resources` lists the kinds"),
            )
        } else {
            err(
                "apiVersion",
                format!(
                    "{kind_name} is served as {}, not {api_version:?}",
                    known.join(", ")
                ),
            )
        }
    })?;
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let origin = format!("{origin} ({api_version} {kind_name} {name})").replace(" )", ")");
    let value = Value::Object(map);
    let object = to_message(&kind.message, value.clone(), &origin)?;
    Ok(Manifest {
        kind,
        object,
        value,
        origin,
    })
}

/// Converts a JSON value (no `apiVersion`/`kind`) into a message of `desc`.
pub fn to_message(
    desc: &MessageDescriptor,
    value: Value,
    origin: &str,
) -> Result<DynamicMessage, ManifestError> {
    let value = coerce_message(value, desc, "").map_err(|(field, message)| ManifestError {
        origin: origin.to_owned(),
        field,
        message,
    })?;
    DynamicMessage::deserialize_with_options(
        desc.clone(),
        value,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| ManifestError {
        origin: origin.to_owned(),
        field: String::new(),
        message: e.to_string(),
    })
}

/// The JSON of an object, Kubernetes-style, with `apiVersion` and `kind`.
pub fn to_value(info: &KindInfo, obj: &DynamicMessage) -> Value {
    let mut out = Map::new();
    out.insert(
        "apiVersion".into(),
        Value::String(info.api_version.to_owned()),
    );
    out.insert("kind".into(), Value::String(info.kind.to_owned()));
    if let Value::Object(fields) = message_value(obj) {
        out.extend(fields);
    }
    Value::Object(out)
}

/// The JSON of any message (JSON names, defaults omitted, numbers as numbers).
pub fn message_value(obj: &DynamicMessage) -> Value {
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .skip_default_fields(true);
    obj.serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Value::Null)
}

/// YAML text of a value.
pub fn to_yaml(value: &Value) -> String {
    serde_norway::to_string(value).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}

type Coerced = Result<Value, (String, String)>;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn coerce_message(v: Value, desc: &MessageDescriptor, path: &str) -> Coerced {
    if desc.full_name().starts_with("google.protobuf.") {
        return Ok(v);
    }
    let Value::Object(map) = v else {
        return Err((
            path.to_owned(),
            format!("expected a mapping (a {})", desc.name()),
        ));
    };
    let mut out = Map::new();
    for (k, val) in map {
        let field_path = join(path, &k);
        if val.is_null() {
            continue;
        }
        let field = desc
            .get_field_by_json_name(&k)
            .or_else(|| desc.get_field_by_name(&k))
            .ok_or_else(|| {
                let known: Vec<_> = desc.fields().map(|f| f.json_name().to_owned()).collect();
                (
                    field_path.clone(),
                    format!("unknown field; {} has {}", desc.name(), known.join(", ")),
                )
            })?;
        out.insert(k, coerce_field(val, &field, &field_path)?);
    }
    Ok(Value::Object(out))
}

fn coerce_field(v: Value, f: &FieldDescriptor, path: &str) -> Coerced {
    if f.is_map() {
        let Value::Object(map) = v else {
            return Err((path.to_owned(), "expected a mapping".into()));
        };
        let entry = f.kind();
        let value_field = entry
            .as_message()
            .map(|m| m.map_entry_value_field())
            .ok_or_else(|| (path.to_owned(), "malformed map field".into()))?;
        let mut out = Map::new();
        for (k, val) in map {
            let p = format!("{path}[{k}]");
            out.insert(k, coerce_single(val, &value_field.kind(), &p)?);
        }
        return Ok(Value::Object(out));
    }
    if f.is_list() {
        let Value::Array(items) = v else {
            return Err((path.to_owned(), "expected a list".into()));
        };
        return items
            .into_iter()
            .enumerate()
            .map(|(i, item)| coerce_single(item, &f.kind(), &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    coerce_single(v, &f.kind(), path)
}

fn coerce_single(v: Value, kind: &Kind, path: &str) -> Coerced {
    let bad = |what: &str, v: &Value| Err((path.to_owned(), format!("expected {what}, got {v}")));
    match kind {
        Kind::Message(m) => coerce_message(v, m, path),
        Kind::String => match v {
            Value::String(_) => Ok(v),
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            other => bad("a string", &other),
        },
        Kind::Bool => match v {
            Value::Bool(_) => Ok(v),
            Value::String(s) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
            other => bad("true or false", &other),
        },
        Kind::Int32
        | Kind::Int64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Sfixed32
        | Kind::Sfixed64 => match v {
            Value::Number(ref n) if n.is_i64() => Ok(v),
            Value::String(ref s) if s.parse::<i64>().is_ok() => Ok(v),
            other => bad("an integer", &other),
        },
        Kind::Uint32 | Kind::Uint64 | Kind::Fixed32 | Kind::Fixed64 => match v {
            Value::Number(ref n) if n.is_u64() => Ok(v),
            Value::String(ref s) if s.parse::<u64>().is_ok() => Ok(v),
            other => bad("a non-negative integer", &other),
        },
        Kind::Float | Kind::Double => match v {
            Value::Number(_) => Ok(v),
            Value::String(ref s) if s.parse::<f64>().is_ok() => Ok(v),
            other => bad("a number", &other),
        },
        Kind::Enum(e) => match v {
            Value::String(ref s) if e.get_value_by_name(s).is_some() => Ok(v),
            Value::Number(_) => Ok(v),
            other => {
                let names: Vec<_> = e.values().map(|v| v.name().to_owned()).collect();
                bad(&format!("one of {}", names.join(", ")), &other)
            }
        },
        Kind::Bytes => match v {
            Value::String(_) => Ok(v),
            other => bad("base64 data", &other),
        },
    }
}

/// Merges `desired` into `live` as `kubectl apply` does: fields in
/// `desired` win, fields that were in `last_applied` but are no longer in
/// `desired` are removed, and every other field of `live` (set by the
/// server or other clients) stays. Lists are replaced whole.
pub fn three_way_merge(live: &Value, last_applied: Option<&Value>, desired: &Value) -> Value {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => {
            let mut out = l.clone();
            let last = last_applied.and_then(Value::as_object);
            if let Some(last) = last {
                for k in last.keys() {
                    if !d.contains_key(k) {
                        out.remove(k);
                    }
                }
            }
            for (k, dv) in d {
                let merged = match l.get(k) {
                    Some(lv) => three_way_merge(lv, last.and_then(|m| m.get(k)), dv),
                    None => dv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        _ => desired.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 25%}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox
        ports: [{containerPort: 8080}]
        resources:
          requests: {cpu: 0.5, memory: 64Mi}
          limits: {cpu: 1}
        readinessProbe:
          httpGet: {path: /, port: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

    #[test]
    fn kubernetes_yaml_parses_with_loose_values() {
        let docs = parse(DEPLOYMENT, "web.yaml").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].kind.info.kind, "Deployment");
        let d: crate::api::apps::v1::Deployment = docs[0].object.transcode_to().unwrap();
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let c = &spec.template.unwrap().spec.unwrap().containers[0];
        assert_eq!(c.resources.as_ref().unwrap().requests["cpu"], "0.5");
        assert_eq!(c.resources.as_ref().unwrap().limits["cpu"], "1");
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .port,
            "8080"
        );
        assert_eq!(
            spec.strategy.unwrap().rolling_update.unwrap().max_surge,
            "1"
        );
        let s: crate::api::core::v1::Service = docs[1].object.transcode_to().unwrap();
        assert_eq!(s.spec.unwrap().ports[0].target_port, "8080");
    }

    #[test]
    fn errors_name_the_document_and_field() {
        let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - name: c\n    imagee: busybox\n";
        let e = parse(bad, "pod.yaml").unwrap_err();
        assert_eq!(e.field, "spec.containers[0].imagee");
        assert!(e.origin.contains("pod.yaml document 1"), "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {restartPolicy: [1]}\n",
            "p.yaml",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.restartPolicy");
        let e = parse("apiVersion: apps/v2\nkind: Deployment\n", "d.yaml").unwrap_err();
        assert_eq!(e.field, "apiVersion");
        assert!(e.message.contains("apps/v1"), "{e}");
        let e = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x\n",
            "broken.yaml",
        )
        .unwrap_err();
        assert!(e.message.contains("line"), "{e}");
    }

    #[test]
    fn objects_round_trip_through_json() {
        let docs = parse(DEPLOYMENT, "web.yaml").unwrap();
        let v = to_value(docs[0].kind.info, &docs[0].object);
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["spec"]["replicas"], 3);
        let again = from_value(v, "again").unwrap();
        assert_eq!(again.object, docs[0].object);
    }

    #[test]
    fn three_way_merge_keeps_server_fields_and_removes_dropped_ones() {
        let live = serde_json::json!({"metadata": {"name": "a", "uid": "u1", "labels": {"x": "1", "y": "2"}}, "spec": {"replicas": 3, "paused": true}});
        let last = serde_json::json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "spec": {"replicas": 3, "paused": true}});
        let desired = serde_json::json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 5}});
        let merged = three_way_merge(&live, Some(&last), &desired);
        assert_eq!(
            merged,
            serde_json::json!({"metadata": {"name": "a", "uid": "u1", "labels": {"x": "1"}}, "spec": {"replicas": 5}})
        );
    }
}
