//! A container's mounts: the node directories behind the pod volumes it
//! mounts — an emptyDir under the pod's directory, a hostPath (created
//! when its type says so), and a persistentVolumeClaim's bound volume
//! (waiting, with a FailedMount event, until the claim is bound), and the
//! keys of a ConfigMap or Secret written as files under the pod's directory
//! by the atomic writer (refreshed every sync period, so updates reach the
//! files). Reads the pod's claims, volumes, ConfigMaps and Secrets; writes
//! only under the node's directories.

use std::path::{Path, PathBuf};

use skiff::Resource;
use std::collections::BTreeMap;

use skiff::api::core::v1::{
    ConfigMap, Container, HostPathVolumeSource, KeyToPath, PersistentVolume, PersistentVolumeClaim,
    Pod, Secret, Volume,
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
        _ => {}
    }
    Ok(path)
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
        if v.empty_dir.is_some() {
            let dir = self.pod_volumes_dir().join(&v.name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create emptyDir {}: {e}", dir.display()))?;
            return Ok(Some(dir));
        }
        if let Some(h) = &v.host_path {
            return host_path(h).map(Some);
        }
        if v.config_map.is_some() || v.secret.is_some() {
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

    /// Writes the current keys of a ConfigMap or Secret volume into `dir`.
    pub(super) async fn write_config_volume(
        &self,
        pod: &Pod,
        v: &Volume,
        dir: &Path,
    ) -> Result<(), String> {
        let ns = pod.namespace();
        let files = if let Some(cm) = &v.config_map {
            let optional = cm.optional == Some(true);
            let found = self
                .client()
                .api::<ConfigMap>(ns)
                .get_opt(&cm.name)
                .await
                .map_err(|e| format!("cannot read configmap {:?}: {e}", cm.name))?;
            match found {
                None if optional => BTreeMap::new(),
                None => return Err(format!("configmap {:?} not found", cm.name)),
                Some(found) => {
                    let mut data: BTreeMap<String, Vec<u8>> = found
                        .data
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    data.extend(found.binary_data);
                    payload(&data, &cm.items, cm.default_mode, optional, "configmap")?
                }
            }
        } else if let Some(sec) = &v.secret {
            let optional = sec.optional == Some(true);
            let found = self
                .client()
                .api::<Secret>(ns)
                .get_opt(&sec.secret_name)
                .await
                .map_err(|e| format!("cannot read secret {:?}: {e}", sec.secret_name))?;
            match found {
                None if optional => BTreeMap::new(),
                None => return Err(format!("secret {:?} not found", sec.secret_name)),
                Some(found) => payload(
                    &found.data,
                    &sec.items,
                    sec.default_mode,
                    optional,
                    "secret",
                )?,
            }
        } else {
            return Ok(());
        };
        atomic_writer::write(dir, &files)
            .map(|_| ())
            .map_err(|e| format!("cannot write {}: {e}", dir.display()))
    }

    /// Rewrites every ConfigMap and Secret volume of the pod with the
    /// current keys (the kubelet's periodic sync); errors are logged and
    /// tried again next time.
    pub(super) async fn refresh_config_volumes(&self, pod: &Pod) {
        let volumes = pod
            .spec
            .as_ref()
            .map(|s| s.volumes.as_slice())
            .unwrap_or(&[]);
        for v in volumes
            .iter()
            .filter(|v| v.config_map.is_some() || v.secret.is_some())
        {
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
    pub(super) async fn mounts(&self, pod: &Pod, c: &Container) -> Result<Vec<Mount>, String> {
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
            let host_path = if m.sub_path.is_empty() {
                dir
            } else {
                let sub = Path::new(&m.sub_path);
                if sub.is_absolute() || sub.components().any(|c| c.as_os_str() == "..") {
                    return Err(format!(
                        "subPath {:?} must be a relative path without '..'",
                        m.sub_path
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
