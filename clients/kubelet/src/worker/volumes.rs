//! A container's mounts: the node directories behind the pod volumes it
//! mounts — an emptyDir under the pod's directory (a tmpfs for `medium:
//! Memory`), a hostPath (created or checked as its type says), a
//! persistentVolumeClaim's bound volume (waiting, with a FailedMount
//! event, until the claim is bound), and files written by the atomic
//! writer under the pod's directory for ConfigMap, Secret, downwardAPI and
//! projected volumes (service-account tokens included), refreshed every
//! sync period so updates reach the files; `fsGroup` owns what the pod
//! writes to. Mounts take `subPath` or `subPathExpr` (expanded from the
//! container's environment). Reads the pod's claims, volumes, ConfigMaps,
//! Secrets and tokens; writes only under the node's directories.

use std::path::{Path, PathBuf};

use skiff::Resource;
use std::collections::BTreeMap;

use skiff::api::core::v1::{
    ConfigMap, Container, DownwardApiVolumeFile, HostPathVolumeSource, KeyToPath, PersistentVolume,
    PersistentVolumeClaim, Pod, Secret, ServiceAccount, ServiceAccountTokenProjection, Volume,
};

use super::Worker;
use crate::atomic_writer::{self, FileData};
use crate::runtime::Mount;

/// Files of a volume from a ConfigMap's or Secret's keys: every key, or
/// the `items` (a missing key is an error unless the volume is optional).
fn payload(
    data: &BTreeMap<String, Vec<u8>>,
    items: &[KeyToPath],
    default_mode: Option<i32>,
    optional: bool,
    what: &str,
) -> Result<BTreeMap<String, FileData>, String> {
    let mode = default_mode.unwrap_or(0o644) as u32 & 0o777;
    if items.is_empty() {
        return Ok(data
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    FileData {
                        data: v.clone(),
                        mode,
                    },
                )
            })
            .collect());
    }
    let mut out = BTreeMap::new();
    for item in items {
        match data.get(&item.key) {
            Some(v) => {
                out.insert(
                    item.path.clone(),
                    FileData {
                        data: v.clone(),
                        mode: item.mode.map(|m| m as u32 & 0o777).unwrap_or(mode),
                    },
                );
            }
            None if optional => {}
            None => {
                return Err(format!(
                    "{what} references non-existent config key: {}",
                    item.key
                ));
            }
        }
    }
    Ok(out)
}

/// Creates `path` if `source.type` asks for it; checks it otherwise.
fn host_path(source: &HostPathVolumeSource) -> Result<PathBuf, String> {
    let path = PathBuf::from(&source.path);
    match source.r#type.as_str() {
        "DirectoryOrCreate" => {
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("cannot create directory {}: {e}", path.display()))?;
        }
        "Directory" if !path.is_dir() => {
            return Err(format!(
                "hostPath type check failed: {} is not a directory",
                path.display()
            ));
        }
        "FileOrCreate" if !path.exists() => {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::File::create(&path)
                .map_err(|e| format!("cannot create file {}: {e}", path.display()))?;
        }
        "File" if !path.is_file() => {
            return Err(format!(
                "hostPath type check failed: {} is not a file",
                path.display()
            ));
        }
        kind @ ("Socket" | "CharDevice" | "BlockDevice") => {
            use std::os::unix::fs::FileTypeExt;
            let t = std::fs::metadata(&path).map(|m| m.file_type());
            let ok = match kind {
                "Socket" => t.is_ok_and(|t| t.is_socket()),
                "CharDevice" => t.is_ok_and(|t| t.is_char_device()),
                _ => t.is_ok_and(|t| t.is_block_device()),
            };
            if !ok {
                return Err(format!(
                    "hostPath type check failed: {} is not a {}",
                    path.display(),
                    match kind {
                        "Socket" => "socket file",
                        "CharDevice" => "character device",
                        _ => "block device",
                    }
                ));
            }
        }
        _ => {}
    }
    Ok(path)
}

/// Gives `dir` (and what it holds) to group `gid`, group-writable, with
/// the set-group-ID bit on directories: Kubernetes' fsGroup ownership.
fn apply_fs_group(dir: &Path, gid: i64) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let gid = nix::unistd::Gid::from_raw(gid as u32);
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    nix::unistd::chown(dir, None, Some(gid)).map_err(std::io::Error::from)?;
    let mode = meta.permissions().mode();
    if meta.is_dir() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o2070))?;
        for entry in std::fs::read_dir(dir)? {
            apply_fs_group(&entry?.path(), gid.as_raw() as i64)?;
        }
    } else {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o040))?;
    }
    Ok(())
}

/// Expands `$(VAR)` in a subPathExpr from the container's environment
/// (`$$(VAR)` stays literal, an unknown variable becomes empty).
pub fn expand(expr: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find("$(") {
        let (before, after) = rest.split_at(i);
        if let Some(literal) = before.strip_suffix('$') {
            out.push_str(literal);
            out.push_str("$(");
            rest = &after[2..];
            continue;
        }
        out.push_str(before);
        match after[2..].find(')') {
            Some(end) => {
                let name = &after[2..2 + end];
                if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
                    out.push_str(v);
                }
                rest = &after[2 + end + 1..];
            }
            None => {
                out.push_str(after);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Bytes a directory tree holds (for emptyDir size limits).
pub fn usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => usage(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// A token written into a projected volume, and when to renew it.
#[derive(Debug, Clone)]
pub(super) struct CachedToken {
    token: String,
    renew_at: std::time::SystemTime,
}

/// A field of the pod for a downward-API file: labels and annotations as
/// `key="value"` lines, Kubernetes' format.
pub(super) fn downward_field(pod: &Pod, path: &str) -> Result<String, String> {
    let m = pod.meta();
    let lines = |map: &BTreeMap<String, String>| -> String {
        map.iter()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    if let Some(k) = path
        .strip_prefix("metadata.labels['")
        .and_then(|s| s.strip_suffix("']"))
    {
        return Ok(m.labels.get(k).cloned().unwrap_or_default());
    }
    if let Some(k) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|s| s.strip_suffix("']"))
    {
        return Ok(m.annotations.get(k).cloned().unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "metadata.labels" => lines(&m.labels),
        "metadata.annotations" => lines(&m.annotations),
        other => return Err(format!("unsupported fieldRef {other:?} in a volume")),
    })
}

/// Mounts a tmpfs (of `size_limit` when given) at `dir` unless one is there.
fn mount_tmpfs(dir: &Path, size_limit: &str) -> Result<(), String> {
    let mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some("tmpfs") && f.next() == Some(&dir.display().to_string())
        })
    });
    if mounted {
        return Ok(());
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Err(
            "emptyDir medium Memory is a tmpfs mount, which needs the kubelet to run as root"
                .into(),
        );
    }
    let mut options = "mode=0777".to_owned();
    if !size_limit.is_empty() {
        let bytes = skiff::quantity::Quantity::parse(size_limit)
            .map_err(|e| format!("sizeLimit {size_limit:?}: {e}"))?
            .value();
        options.push_str(&format!(",size={bytes}"));
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
        .arg(dir)
        .status()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !status.success() {
        return Err(format!(
            "mount -t tmpfs at {} failed ({status})",
            dir.display()
        ));
    }
    Ok(())
}

/// Unmounts the tmpfs volumes under `dir` (a pod's volume directory).
pub(super) fn unmount_tmpfs_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        if let (Some("tmpfs"), Some(point)) = (f.next(), f.next())
            && point.starts_with(&prefix)
        {
            let _ = std::process::Command::new("umount").arg(point).status();
        }
    }
}

impl Worker {
    /// Where a pod's emptyDir volumes live on this node.
    pub(super) fn pod_volumes_dir(&self) -> PathBuf {
        self.shared
            .config
            .data_dir
            .join("pods")
            .join(&self.uid)
            .join("volumes")
    }

    /// The directory on the node behind one volume of the pod.
    async fn volume_dir(&self, pod: &Pod, v: &Volume) -> Result<Option<PathBuf>, String> {
        let fs_group = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|s| s.fs_group);
        if let Some(e) = &v.empty_dir {
            let dir = self.pod_volumes_dir().join(&v.name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create emptyDir {}: {e}", dir.display()))?;
            if e.medium == "Memory" {
                mount_tmpfs(&dir, &e.size_limit)?;
            }
            if let Some(g) = fs_group {
                apply_fs_group(&dir, g)
                    .map_err(|e| format!("cannot give {} to fsGroup {g}: {e}", dir.display()))?;
            }
            return Ok(Some(dir));
        }
        if let Some(h) = &v.host_path {
            return host_path(h).map(Some);
        }
        if v.config_map.is_some()
            || v.secret.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some()
        {
            let dir = self.pod_volumes_dir().join(&v.name);
            self.write_config_volume(pod, v, &dir).await?;
            return Ok(Some(dir));
        }
        let Some(src) = &v.persistent_volume_claim else {
            return Ok(None);
        };
        let claim = self
            .client()
            .api::<PersistentVolumeClaim>(pod.namespace())
            .get_opt(&src.claim_name)
            .await
            .map_err(|e| {
                format!(
                    "cannot read persistentvolumeclaim {:?}: {e}",
                    src.claim_name
                )
            })?
            .ok_or_else(|| format!("persistentvolumeclaim {:?} not found", src.claim_name))?;
        let bound = claim.status.as_ref().is_some_and(|s| s.phase == "Bound");
        let volume_name = claim
            .spec
            .as_ref()
            .map(|s| s.volume_name.clone())
            .unwrap_or_default();
        if !bound || volume_name.is_empty() {
            return Err(format!(
                "persistentvolumeclaim {:?} is not bound",
                src.claim_name
            ));
        }
        let volume = self
            .client()
            .all::<PersistentVolume>()
            .get_opt(&volume_name)
            .await
            .map_err(|e| format!("cannot read persistentvolume {volume_name:?}: {e}"))?
            .ok_or_else(|| format!("persistentvolume {volume_name:?} not found"))?;
        let spec = volume.spec.unwrap_or_default();
        if let Some(h) = &spec.host_path {
            return host_path(h).map(Some);
        }
        if let Some(l) = &spec.local {
            let path = PathBuf::from(&l.path);
            if !path.is_dir() {
                return Err(format!(
                    "local volume {} is not a directory",
                    path.display()
                ));
            }
            return Ok(Some(path));
        }
        Err(format!(
            "persistentvolume {volume_name:?} has no source this node can mount"
        ))
    }

    /// The keys of ConfigMap `name` (text and binary), `None` when it is missing.
    async fn config_map_data(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let found = self
            .client()
            .api::<ConfigMap>(ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read configmap {name:?}: {e}"))?;
        Ok(found.map(|cm| {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(cm.binary_data);
            data
        }))
    }

    /// The keys of Secret `name`, `None` when it is missing.
    async fn secret_data(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        Ok(self
            .client()
            .api::<Secret>(ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read secret {name:?}: {e}"))?
            .map(|s| s.data))
    }

    /// Files of downward-API `items` for `pod`.
    fn downward_files(
        &self,
        pod: &Pod,
        items: &[DownwardApiVolumeFile],
        default_mode: Option<i32>,
    ) -> Result<BTreeMap<String, FileData>, String> {
        let mode = default_mode.unwrap_or(0o644) as u32 & 0o777;
        let mut out = BTreeMap::new();
        for item in items {
            let value = if let Some(f) = &item.field_ref {
                downward_field(pod, &f.field_path)?
            } else if let Some(r) = &item.resource_field_ref {
                super::env::resource_value(&self.shared, pod, &r.container_name, r)?
            } else {
                continue;
            };
            out.insert(
                item.path.clone(),
                FileData {
                    data: value.into_bytes(),
                    mode: item.mode.map(|m| m as u32 & 0o777).unwrap_or(mode),
                },
            );
        }
        Ok(out)
    }

    /// A token of the pod's service account for `audience`, renewed once
    /// 80% of its life has passed (or after a day), as the kubelet does.
    async fn projected_token(
        &self,
        pod: &Pod,
        key: &str,
        t: &ServiceAccountTokenProjection,
    ) -> Result<String, String> {
        let now = std::time::SystemTime::now();
        if let Some(c) = self.tokens.lock().expect("tokens").get(key)
            && now < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let account = pod
            .spec
            .as_ref()
            .map(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let audiences: Vec<String> = if t.audience.is_empty() {
            vec![]
        } else {
            vec![t.audience.clone()]
        };
        let issued = self
            .client()
            .api::<ServiceAccount>(pod.namespace())
            .create_token(
                &account,
                &audiences,
                Some(t.expiration_seconds.unwrap_or(3600)),
                Some((pod.name(), &pod.meta().uid)),
            )
            .await
            .map_err(|e| format!("cannot get a token of serviceaccount {account:?}: {e}"))?;
        let life = issued.expires.duration_since(now).unwrap_or_default();
        let renew_in = (life * 4 / 5).min(std::time::Duration::from_secs(24 * 3600));
        self.tokens.lock().expect("tokens").insert(
            key.to_owned(),
            CachedToken {
                token: issued.token.clone(),
                renew_at: now + renew_in,
            },
        );
        Ok(issued.token)
    }

    /// The files a ConfigMap, Secret, downwardAPI or projected volume holds now.
    async fn volume_files(
        &self,
        pod: &Pod,
        v: &Volume,
    ) -> Result<BTreeMap<String, FileData>, String> {
        let ns = pod.namespace();
        if let Some(cm) = &v.config_map {
            let optional = cm.optional == Some(true);
            return match self.config_map_data(ns, &cm.name).await? {
                None if optional => Ok(BTreeMap::new()),
                None => Err(format!("configmap {:?} not found", cm.name)),
                Some(data) => payload(&data, &cm.items, cm.default_mode, optional, "configmap"),
            };
        }
        if let Some(sec) = &v.secret {
            let optional = sec.optional == Some(true);
            return match self.secret_data(ns, &sec.secret_name).await? {
                None if optional => Ok(BTreeMap::new()),
                None => Err(format!("secret {:?} not found", sec.secret_name)),
                Some(data) => payload(&data, &sec.items, sec.default_mode, optional, "secret"),
            };
        }
        if let Some(d) = &v.downward_api {
            return self.downward_files(pod, &d.items, d.default_mode);
        }
        let Some(p) = &v.projected else {
            return Ok(BTreeMap::new());
        };
        let mut out = BTreeMap::new();
        for source in &p.sources {
            if let Some(cm) = &source.config_map {
                let optional = cm.optional == Some(true);
                match self.config_map_data(ns, &cm.name).await? {
                    None if optional => {}
                    None => return Err(format!("configmap {:?} not found", cm.name)),
                    Some(data) => out.extend(payload(
                        &data,
                        &cm.items,
                        p.default_mode,
                        optional,
                        "configmap",
                    )?),
                }
            }
            if let Some(sec) = &source.secret {
                let optional = sec.optional == Some(true);
                match self.secret_data(ns, &sec.name).await? {
                    None if optional => {}
                    None => return Err(format!("secret {:?} not found", sec.name)),
                    Some(data) => out.extend(payload(
                        &data,
                        &sec.items,
                        p.default_mode,
                        optional,
                        "secret",
                    )?),
                }
            }
            if let Some(d) = &source.downward_api {
                out.extend(self.downward_files(pod, &d.items, p.default_mode)?);
            }
            if let Some(t) = &source.service_account_token {
                let token = self
                    .projected_token(pod, &format!("{}/{}", v.name, t.path), t)
                    .await?;
                out.insert(
                    t.path.clone(),
                    FileData {
                        data: token.into_bytes(),
                        mode: p.default_mode.map(|m| m as u32 & 0o777).unwrap_or(0o644),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Writes the current files of a ConfigMap, Secret, downwardAPI or
    /// projected volume into `dir` (atomically).
    pub(super) async fn write_config_volume(
        &self,
        pod: &Pod,
        v: &Volume,
        dir: &Path,
    ) -> Result<(), String> {
        let files = self.volume_files(pod, v).await?;
        atomic_writer::write(dir, &files)
            .map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
        if let Some(g) = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|s| s.fs_group)
        {
            apply_fs_group(dir, g)
                .map_err(|e| format!("cannot give {} to fsGroup {g}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Rewrites every ConfigMap, Secret, downwardAPI and projected volume
    /// of the pod with what they hold now (the kubelet's periodic sync);
    /// errors are logged and tried again next time.
    pub(super) async fn refresh_config_volumes(&self, pod: &Pod) {
        let volumes = pod
            .spec
            .as_ref()
            .map(|s| s.volumes.as_slice())
            .unwrap_or(&[]);
        for v in volumes.iter().filter(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.projected.is_some()
                || v.downward_api.is_some()
        }) {
            let dir = self.pod_volumes_dir().join(&v.name);
            if !dir.exists() {
                continue;
            }
            if let Err(e) = self.write_config_volume(pod, v, &dir).await {
                tracing::debug!(pod = pod.name(), volume = %v.name, error = %e, "cannot refresh a volume");
            }
        }
    }

    /// The mounts of a container; an error (a claim not bound yet, a
    /// missing directory) holds it until the next sync.
    pub(super) async fn mounts(
        &self,
        pod: &Pod,
        c: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, String> {
        let volumes = pod
            .spec
            .as_ref()
            .map(|s| s.volumes.as_slice())
            .unwrap_or(&[]);
        let mut out = Vec::new();
        for m in &c.volume_mounts {
            let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
                continue;
            };
            let dir = self
                .volume_dir(pod, v)
                .await
                .map_err(|e| format!("MountVolume.SetUp failed for volume {:?}: {e}", v.name))?;
            let Some(dir) = dir else { continue };
            let sub_path = if m.sub_path_expr.is_empty() {
                m.sub_path.clone()
            } else {
                expand(&m.sub_path_expr, env)
            };
            let host_path = if sub_path.is_empty() {
                dir
            } else {
                let sub = Path::new(&sub_path);
                if sub.is_absolute() || sub.components().any(|c| c.as_os_str() == "..") {
                    return Err(format!(
                        "subPath {sub_path:?} must be a relative path without '..'"
                    ));
                }
                let full = dir.join(sub);
                let _ = std::fs::create_dir_all(&full);
                full
            };
            let read_only = m.read_only
                || v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|p| p.read_only);
            out.push(Mount {
                volume: v.name.clone(),
                host_path,
                container_path: m.mount_path.clone(),
                read_only,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_path_expressions_expand_from_the_environment() {
        let env = vec![
            ("POD_NAME".to_owned(), "web-0".to_owned()),
            ("NS".to_owned(), "shop".to_owned()),
        ];
        assert_eq!(expand("logs/$(POD_NAME)", &env), "logs/web-0");
        assert_eq!(expand("$(NS)-$(POD_NAME)", &env), "shop-web-0");
        assert_eq!(expand("$$(POD_NAME)", &env), "$(POD_NAME)");
        assert_eq!(expand("$(MISSING)x", &env), "x");
        assert_eq!(expand("open $(", &env), "open $(");
    }

    #[test]
    fn downward_files_hold_labels_as_kubernetes_writes_them() {
        let mut pod = Pod::default();
        let m = pod.metadata.get_or_insert_with(Default::default);
        m.name = "web-0".into();
        m.labels.insert("app".into(), "web".into());
        m.labels.insert("tier".into(), "front end".into());
        assert_eq!(
            downward_field(&pod, "metadata.labels").unwrap(),
            "app=\"web\"\ntier=\"front end\"\n"
        );
        assert_eq!(
            downward_field(&pod, "metadata.labels['app']").unwrap(),
            "web"
        );
        assert_eq!(downward_field(&pod, "metadata.name").unwrap(), "web-0");
        assert!(downward_field(&pod, "status.podIP").is_err());
    }
}
