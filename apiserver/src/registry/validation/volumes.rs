//! A pod's volumes and mounts: exactly one source per volume, file items
//! that stay inside the volume, modes in range, downward-API fields the
//! kubelet can fill, token projections with a sane lifetime, and mounts
//! with one of `subPath` / `subPathExpr`.
//!
//! Pure checks; no I/O and no defaulting.

use skiff::api::core::v1 as core;
use skiff::quantity::Quantity;

use super::Violations;
use crate::error::FieldViolation;

/// Field paths a downward-API volume file may name.
pub const VOLUME_FIELD_REFS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
];

/// Resources a `resourceFieldRef` may name.
pub const RESOURCE_FIELDS: &[&str] = &[
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
];

const MODE_MESSAGE: &str = "must be a number between 0 and 0777 (octal), both inclusive";

fn mode_ok(m: i32) -> bool {
    (0..=0o777).contains(&m)
}

/// A relative file path inside a volume: not absolute, no `..` element.
fn validate_relative_path(path: &str, field: String, v: &mut Violations) {
    if path.is_empty() {
        v.push(FieldViolation::new(field, "required"));
    } else if path.starts_with('/') {
        v.push(FieldViolation::new(field, "must be a relative path"));
    } else if path.split('/').any(|part| part == "..") {
        v.push(FieldViolation::new(field, "must not contain '..'"));
    }
}

/// Checks the key-to-file items and modes of a config map or secret source.
fn validate_items(
    items: &[core::KeyToPath],
    default_mode: Option<i32>,
    path: &str,
    v: &mut Violations,
) {
    if let Some(m) = default_mode
        && !mode_ok(m)
    {
        v.push(FieldViolation::new(
            format!("{path}.defaultMode"),
            MODE_MESSAGE,
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}.items[{i}]");
        if item.key.is_empty() {
            v.push(FieldViolation::new(format!("{p}.key"), "required"));
        }
        validate_relative_path(&item.path, format!("{p}.path"), v);
        if let Some(m) = item.mode
            && !mode_ok(m)
        {
            v.push(FieldViolation::new(format!("{p}.mode"), MODE_MESSAGE));
        }
    }
}

/// Checks a `resourceFieldRef` (`in_volume`: the container name is required).
pub fn validate_resource_field_ref(
    r: &core::ResourceFieldSelector,
    path: &str,
    in_volume: bool,
    v: &mut Violations,
) {
    if in_volume && r.container_name.is_empty() {
        v.push(FieldViolation::new(
            format!("{path}.containerName"),
            "required",
        ));
    }
    if !RESOURCE_FIELDS.contains(&r.resource.as_str()) {
        v.push(FieldViolation::new(
            format!("{path}.resource"),
            format!(
                "Unsupported value: {:?}: supported values: {}",
                r.resource,
                RESOURCE_FIELDS
                    .iter()
                    .map(|f| format!("{f:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if !r.divisor.is_empty() {
        match Quantity::parse(&r.divisor) {
            Ok(q) if q.milli() > 0 => {}
            _ => v.push(FieldViolation::new(
                format!("{path}.divisor"),
                format!("{:?}: must be a positive quantity", r.divisor),
            )),
        }
    }
}

fn validate_downward_items(items: &[core::DownwardApiVolumeFile], path: &str, v: &mut Violations) {
    for (i, f) in items.iter().enumerate() {
        let p = format!("{path}.items[{i}]");
        validate_relative_path(&f.path, format!("{p}.path"), v);
        if let Some(m) = f.mode
            && !mode_ok(m)
        {
            v.push(FieldViolation::new(format!("{p}.mode"), MODE_MESSAGE));
        }
        match (&f.field_ref, &f.resource_field_ref) {
            (Some(r), None) => {
                let fp = r.field_path.as_str();
                let keyed =
                    fp.starts_with("metadata.labels['") || fp.starts_with("metadata.annotations['");
                if !VOLUME_FIELD_REFS.contains(&fp) && !keyed {
                    v.push(FieldViolation::new(
                        format!("{p}.fieldRef.fieldPath"),
                        format!(
                            "Unsupported value: {fp:?}: supported values: {}",
                            VOLUME_FIELD_REFS.join(", ")
                        ),
                    ));
                }
            }
            (None, Some(r)) => {
                validate_resource_field_ref(r, &format!("{p}.resourceFieldRef"), true, v)
            }
            _ => v.push(FieldViolation::new(
                &p,
                "exactly one of fieldRef or resourceFieldRef is required",
            )),
        }
    }
}

fn validate_projected(src: &core::ProjectedVolumeSource, path: &str, v: &mut Violations) {
    if let Some(m) = src.default_mode
        && !mode_ok(m)
    {
        v.push(FieldViolation::new(
            format!("{path}.defaultMode"),
            MODE_MESSAGE,
        ));
    }
    let mut paths = std::collections::BTreeSet::new();
    for (i, s) in src.sources.iter().enumerate() {
        let p = format!("{path}.sources[{i}]");
        let given = s.secret.is_some() as u8
            + s.config_map.is_some() as u8
            + s.downward_api.is_some() as u8
            + s.service_account_token.is_some() as u8;
        if given != 1 {
            v.push(FieldViolation::new(
                &p,
                "exactly one of secret, configMap, downwardAPI or serviceAccountToken is required",
            ));
        }
        if let Some(sec) = &s.secret {
            if sec.name.is_empty() {
                v.push(FieldViolation::new(format!("{p}.secret.name"), "required"));
            }
            validate_items(&sec.items, None, &format!("{p}.secret"), v);
        }
        if let Some(cm) = &s.config_map {
            if cm.name.is_empty() {
                v.push(FieldViolation::new(
                    format!("{p}.configMap.name"),
                    "required",
                ));
            }
            validate_items(&cm.items, None, &format!("{p}.configMap"), v);
        }
        if let Some(d) = &s.downward_api {
            validate_downward_items(&d.items, &format!("{p}.downwardAPI"), v);
            for f in &d.items {
                if !f.path.is_empty() && !paths.insert(f.path.clone()) {
                    v.push(FieldViolation::new(
                        format!("{p}.downwardAPI"),
                        format!("conflicting duplicate paths: {:?}", f.path),
                    ));
                }
            }
        }
        if let Some(t) = &s.service_account_token {
            let tp = format!("{p}.serviceAccountToken");
            validate_relative_path(&t.path, format!("{tp}.path"), v);
            if !t.path.is_empty() && !paths.insert(t.path.clone()) {
                v.push(FieldViolation::new(
                    format!("{tp}.path"),
                    format!("conflicting duplicate paths: {:?}", t.path),
                ));
            }
            if let Some(e) = t.expiration_seconds {
                if e < 600 {
                    v.push(FieldViolation::new(
                        format!("{tp}.expirationSeconds"),
                        "may not specify a duration less than 10 minutes",
                    ));
                } else if e > 1 << 32 {
                    v.push(FieldViolation::new(
                        format!("{tp}.expirationSeconds"),
                        "may not specify a duration larger than 2^32 seconds",
                    ));
                }
            }
        }
    }
}

/// Validates the source of one volume at `path` ("spec.volumes[0]").
pub fn validate_volume_source(vol: &core::Volume, p: &str, v: &mut Violations) {
    let sources = [
        vol.empty_dir.is_some(),
        vol.host_path.is_some(),
        vol.secret.is_some(),
        vol.config_map.is_some(),
        vol.persistent_volume_claim.is_some(),
        vol.projected.is_some(),
        vol.downward_api.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources != 1 {
        v.push(FieldViolation::new(
            p,
            "exactly one of emptyDir, hostPath, secret, configMap, persistentVolumeClaim, \
             projected or downwardAPI is required",
        ));
    }
    if let Some(e) = &vol.empty_dir {
        if !matches!(e.medium.as_str(), "" | "Memory") {
            v.push(FieldViolation::new(
                format!("{p}.emptyDir.medium"),
                format!(
                    "Unsupported value: {:?}: supported values: \"\", \"Memory\"",
                    e.medium
                ),
            ));
        }
        if !e.size_limit.is_empty() {
            match Quantity::parse(&e.size_limit) {
                Ok(q) if q.value() > 0 => {}
                Ok(_) => v.push(FieldViolation::new(
                    format!("{p}.emptyDir.sizeLimit"),
                    "must be greater than zero",
                )),
                Err(e) => v.push(FieldViolation::new(
                    format!("{p}.emptyDir.sizeLimit"),
                    e.to_string(),
                )),
            }
        }
    }
    if let Some(h) = &vol.host_path {
        if !h.path.starts_with('/') {
            v.push(FieldViolation::new(
                format!("{p}.hostPath.path"),
                "must be an absolute path",
            ));
        } else if h.path.split('/').any(|part| part == "..") {
            v.push(FieldViolation::new(
                format!("{p}.hostPath.path"),
                "must not contain '..'",
            ));
        }
        if !matches!(
            h.r#type.as_str(),
            "" | "DirectoryOrCreate"
                | "Directory"
                | "FileOrCreate"
                | "File"
                | "Socket"
                | "CharDevice"
                | "BlockDevice"
        ) {
            v.push(FieldViolation::new(
                format!("{p}.hostPath.type"),
                format!(
                    "Unsupported value: {:?}: supported values: \"\", \"BlockDevice\", \
                     \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \
                     \"FileOrCreate\", \"Socket\"",
                    h.r#type
                ),
            ));
        }
    }
    if let Some(cm) = &vol.config_map {
        if cm.name.is_empty() {
            v.push(FieldViolation::new(
                format!("{p}.configMap.name"),
                "required",
            ));
        }
        validate_items(&cm.items, cm.default_mode, &format!("{p}.configMap"), v);
    }
    if let Some(secret) = &vol.secret {
        if secret.secret_name.is_empty() {
            v.push(FieldViolation::new(
                format!("{p}.secret.secretName"),
                "required",
            ));
        }
        validate_items(
            &secret.items,
            secret.default_mode,
            &format!("{p}.secret"),
            v,
        );
    }
    if let Some(claim) = &vol.persistent_volume_claim
        && claim.claim_name.is_empty()
    {
        v.push(FieldViolation::new(
            format!("{p}.persistentVolumeClaim.claimName"),
            "required",
        ));
    }
    if let Some(src) = &vol.projected {
        validate_projected(src, &format!("{p}.projected"), v);
    }
    if let Some(d) = &vol.downward_api {
        if let Some(m) = d.default_mode
            && !mode_ok(m)
        {
            v.push(FieldViolation::new(
                format!("{p}.downwardAPI.defaultMode"),
                MODE_MESSAGE,
            ));
        }
        validate_downward_items(&d.items, &format!("{p}.downwardAPI"), v);
    }
}

/// Validates one volume mount at `path`.
pub fn validate_mount(m: &core::VolumeMount, p: &str, v: &mut Violations) {
    if m.mount_path.is_empty() {
        v.push(FieldViolation::new(format!("{p}.mountPath"), "required"));
    }
    if !m.sub_path.is_empty() && !m.sub_path_expr.is_empty() {
        v.push(FieldViolation::new(
            format!("{p}.subPathExpr"),
            "subPathExpr and subPath are mutually exclusive",
        ));
    }
    for (value, field) in [(&m.sub_path, "subPath"), (&m.sub_path_expr, "subPathExpr")] {
        if value.starts_with('/') {
            v.push(FieldViolation::new(
                format!("{p}.{field}"),
                "must be a relative path",
            ));
        } else if value.split('/').any(|part| part == "..") {
            v.push(FieldViolation::new(
                format!("{p}.{field}"),
                "must not contain '..'",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projected_and_downward_sources_name_each_bad_field() {
        let vol = core::Volume {
            name: "v".into(),
            projected: Some(core::ProjectedVolumeSource {
                default_mode: Some(0o1000),
                sources: vec![
                    core::VolumeProjection {
                        service_account_token: Some(core::ServiceAccountTokenProjection {
                            path: "token".into(),
                            expiration_seconds: Some(60),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    core::VolumeProjection {
                        downward_api: Some(core::DownwardApiProjection {
                            items: vec![core::DownwardApiVolumeFile {
                                path: "../x".into(),
                                field_ref: Some(core::ObjectFieldSelector {
                                    field_path: "status.podIP".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }],
                        }),
                        config_map: Some(core::ConfigMapProjection {
                            name: "c".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        };
        let mut v = Vec::new();
        validate_volume_source(&vol, "spec.volumes[0]", &mut v);
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.volumes[0].projected.defaultMode",
                "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds",
                "spec.volumes[0].projected.sources[1]",
                "spec.volumes[0].projected.sources[1].downwardAPI.items[0].path",
                "spec.volumes[0].projected.sources[1].downwardAPI.items[0].fieldRef.fieldPath",
            ]
        );
    }

    #[test]
    fn mounts_take_one_of_sub_path_and_sub_path_expr() {
        let mut v = Vec::new();
        validate_mount(
            &core::VolumeMount {
                name: "v".into(),
                mount_path: "/data".into(),
                sub_path: "a".into(),
                sub_path_expr: "$(POD_NAME)".into(),
                ..Default::default()
            },
            "m",
            &mut v,
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "m.subPathExpr");
    }

    #[test]
    fn empty_dirs_take_disk_or_memory_and_a_positive_size() {
        let mut v = Vec::new();
        let vol = core::Volume {
            name: "v".into(),
            empty_dir: Some(core::EmptyDirVolumeSource {
                medium: "HugePages".into(),
                size_limit: "lots".into(),
            }),
            ..Default::default()
        };
        validate_volume_source(&vol, "p", &mut v);
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["p.emptyDir.medium", "p.emptyDir.sizeLimit"]);
    }
}
