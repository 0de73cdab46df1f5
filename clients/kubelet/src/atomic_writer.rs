//! Writes a volume's files (a ConfigMap's or Secret's keys) the way the
//! kubelet's atomic writer does, so a reader never sees half an update:
//! the files go to a fresh hidden directory `..<stamp>`, the symlink
//! `..data` is swapped to it with one rename, and each visible name is a
//! symlink through `..data`. Old payload directories are removed after
//! the swap.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

/// One file of a payload: its bytes and mode bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileData {
    /// Contents.
    pub data: Vec<u8>,
    /// Mode bits (e.g. 0o644).
    pub mode: u32,
}

const DATA_LINK: &str = "..data";

/// Writes `payload` (relative path → file) into `dir`; a no-op when the
/// current payload is the same. Returns whether anything changed.
pub fn write(dir: &Path, payload: &BTreeMap<String, FileData>) -> io::Result<bool> {
    for path in payload.keys() {
        let p = Path::new(path);
        if p.is_absolute()
            || p.components().any(|c| !matches!(c, Component::Normal(_)))
            || path.starts_with("..")
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?} is not a relative path inside the volume"),
            ));
        }
    }
    std::fs::create_dir_all(dir)?;
    if current(dir).as_ref() == Some(payload) {
        return Ok(false);
    }
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let staging = dir.join(&stamp);
    std::fs::create_dir(&staging)?;
    for (path, file) in payload {
        let target = staging.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &file.data)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))?;
    }
    // The swap: a new link, renamed over the old one in one step.
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, dir.join(DATA_LINK))?;
    // Visible names: one symlink per top-level entry, through ..data.
    let tops: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_owned))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("{DATA_LINK}/{top}"), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == DATA_LINK || name == stamp {
            continue;
        }
        if name.starts_with("..") {
            // An older payload.
            let _ = std::fs::remove_dir_all(entry.path());
        } else if !tops.contains(&name) && entry.file_type()?.is_symlink() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(true)
}

/// The payload `..data` points at now, if any.
fn current(dir: &Path) -> Option<BTreeMap<String, FileData>> {
    let data = dir.join(DATA_LINK);
    std::fs::read_link(&data).ok()?;
    let mut out = BTreeMap::new();
    collect(&data, "", &mut out).ok()?;
    Some(out)
}

fn collect(dir: &Path, prefix: &str, out: &mut BTreeMap<String, FileData>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = entry.metadata()?;
        if meta.is_dir() {
            collect(&entry.path(), &rel, out)?;
        } else {
            out.insert(
                rel,
                FileData {
                    data: std::fs::read(entry.path())?,
                    mode: meta.permissions().mode() & 0o7777,
                },
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(items: &[(&str, &str)]) -> BTreeMap<String, FileData> {
        items
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    FileData {
                        data: v.as_bytes().to_vec(),
                        mode: 0o644,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn files_appear_through_data_and_updates_swap_the_whole_payload() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(write(d, &payload(&[("a", "1"), ("conf/b", "2")])).unwrap());
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(d.join("conf/b")).unwrap(), "2");
        assert!(
            std::fs::symlink_metadata(d.join("a"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            !write(d, &payload(&[("a", "1"), ("conf/b", "2")])).unwrap(),
            "same payload: no-op"
        );
        assert!(write(d, &payload(&[("a", "9")])).unwrap());
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "9");
        assert!(!d.join("conf").exists(), "a key that went is gone");
        let hidden: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != "..data")
            .collect();
        assert_eq!(hidden.len(), 1, "old payloads removed: {hidden:?}");
    }

    #[test]
    fn paths_leaving_the_volume_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../b", "..data"] {
            assert!(write(dir.path(), &payload(&[(bad, "x")])).is_err(), "{bad}");
        }
    }
}
