//! A container's environment: the downward-API variables every container
//! gets, then `envFrom` (every key of a ConfigMap or Secret, with its
//! prefix), then its own `env`, with `fieldRef`, `resourceFieldRef`,
//! `secretKeyRef` and `configMapKeyRef` resolved. A missing reference that is not optional is
//! an error with Kubernetes' message (the container waits in
//! CreateContainerConfigError). Reads the pod, its ConfigMaps and Secrets;
//! must not change anything.

use skiff::Resource;
use skiff::api::core::v1::{Container, Pod, ResourceFieldSelector};
use skiff::quantity::Quantity;

use super::Worker;
use crate::Shared;

/// A container's resource request or limit as the downward API gives it:
/// the quantity divided by the divisor, rounded up; a limit the container
/// does not set is the node's capacity, as in Kubernetes.
pub(super) fn resource_value(
    shared: &Shared,
    pod: &Pod,
    container: &str,
    r: &ResourceFieldSelector,
) -> Result<String, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let c = spec
        .containers
        .iter()
        .chain(&spec.init_containers)
        .find(|c| c.name == container)
        .ok_or_else(|| format!("resourceFieldRef: no container {container:?} in the pod"))?;
    let (kind, name) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", r.resource))?;
    let resources = c.resources.clone().unwrap_or_default();
    let set = match kind {
        "limits" => resources.limits.get(name).cloned(),
        "requests" => resources.requests.get(name).cloned(),
        _ => None,
    };
    let value = match (set, kind) {
        (Some(v), _) => v,
        (None, "limits") => crate::node::capacity(&shared.config)
            .get(name)
            .cloned()
            .unwrap_or_else(|| "0".into()),
        (None, _) => "0".into(),
    };
    let q = Quantity::parse(&value).map_err(|e| format!("{}: {e}", r.resource))?;
    let divisor = if r.divisor.is_empty() {
        Quantity::from_units(1)
    } else {
        Quantity::parse(&r.divisor).map_err(|e| format!("divisor {:?}: {e}", r.divisor))?
    };
    let d = divisor.milli().max(1);
    Ok(((q.milli() + d - 1) / d).to_string())
}

impl Worker {
    /// The environment of a container: the downward-API variables, then its own.
    pub(super) async fn env(
        &self,
        pod: &Pod,
        c: &Container,
    ) -> Result<Vec<(String, String)>, String> {
        let ip = self
            .sandbox
            .as_ref()
            .map(|s| s.ip.clone())
            .unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut env = vec![
            ("POD_NAME".to_owned(), pod.name().to_owned()),
            ("POD_NAMESPACE".to_owned(), pod.namespace().to_owned()),
            ("POD_IP".to_owned(), ip.clone()),
            ("NODE_NAME".to_owned(), self.shared.config.node_name.clone()),
        ];
        for from in &c.env_from {
            let keys: Vec<(String, String)> = if let Some(r) = &from.config_map_ref {
                match self
                    .client()
                    .api::<skiff::api::core::v1::ConfigMap>(pod.namespace())
                    .get_opt(&r.name)
                    .await
                {
                    Ok(Some(cm)) => cm.data.into_iter().collect(),
                    Ok(None) if r.optional == Some(true) => Vec::new(),
                    Ok(None) => return Err(format!("configmap {:?} not found", r.name)),
                    Err(e) => return Err(format!("reading configmap {:?}: {e}", r.name)),
                }
            } else if let Some(r) = &from.secret_ref {
                match self
                    .client()
                    .secrets(pod.namespace())
                    .get_opt(&r.name)
                    .await
                {
                    Ok(Some(s)) => s
                        .data
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                        .collect(),
                    Ok(None) if r.optional == Some(true) => Vec::new(),
                    Ok(None) => return Err(format!("secret {:?} not found", r.name)),
                    Err(e) => return Err(format!("reading secret {:?}: {e}", r.name)),
                }
            } else {
                Vec::new()
            };
            for (k, v) in keys {
                let name = format!("{}{k}", from.prefix);
                env.retain(|(n, _)| *n != name);
                env.push((name, v));
            }
        }
        for e in &c.env {
            let value = match &e.value_from {
                None => e.value.clone(),
                Some(from) => {
                    if let Some(f) = &from.field_ref {
                        let m = pod.meta();
                        let path = f.field_path.as_str();
                        if let Some(k) = path
                            .strip_prefix("metadata.labels['")
                            .and_then(|s| s.strip_suffix("']"))
                        {
                            m.labels.get(k).cloned().unwrap_or_default()
                        } else if let Some(k) = path
                            .strip_prefix("metadata.annotations['")
                            .and_then(|s| s.strip_suffix("']"))
                        {
                            m.annotations.get(k).cloned().unwrap_or_default()
                        } else {
                            match path {
                                "metadata.name" => m.name.clone(),
                                "metadata.namespace" => m.namespace.clone(),
                                "metadata.uid" => m.uid.clone(),
                                "spec.nodeName" => spec.node_name.clone(),
                                "spec.serviceAccountName" => spec.service_account_name.clone(),
                                "status.podIP" => ip.clone(),
                                "status.hostIP" => self.shared.config.node_ip.clone(),
                                other => return Err(format!("unsupported fieldRef {other:?}")),
                            }
                        }
                    } else if let Some(r) = &from.resource_field_ref {
                        let container = if r.container_name.is_empty() {
                            &c.name
                        } else {
                            &r.container_name
                        };
                        resource_value(&self.shared, pod, container, r)?
                    } else if let Some(s) = &from.secret_key_ref {
                        match self
                            .client()
                            .secrets(pod.namespace())
                            .get_opt(&s.name)
                            .await
                        {
                            Ok(Some(secret)) => match secret.data.get(&s.key) {
                                Some(v) => String::from_utf8_lossy(v).into_owned(),
                                None if s.optional == Some(true) => continue,
                                None => {
                                    return Err(format!(
                                        "secret {:?} has no key {:?}",
                                        s.name, s.key
                                    ));
                                }
                            },
                            Ok(None) if s.optional == Some(true) => continue,
                            Ok(None) => return Err(format!("secret {:?} not found", s.name)),
                            Err(e) => return Err(format!("reading secret {:?}: {e}", s.name)),
                        }
                    } else if let Some(r) = &from.config_map_key_ref {
                        match self
                            .client()
                            .api::<skiff::api::core::v1::ConfigMap>(pod.namespace())
                            .get_opt(&r.name)
                            .await
                        {
                            Ok(Some(cm)) => match cm.data.get(&r.key) {
                                Some(v) => v.clone(),
                                None if r.optional == Some(true) => continue,
                                None => {
                                    return Err(format!(
                                        "couldn't find key {} in ConfigMap {}/{}",
                                        r.key,
                                        pod.namespace(),
                                        r.name
                                    ));
                                }
                            },
                            Ok(None) if r.optional == Some(true) => continue,
                            Ok(None) => return Err(format!("configmap {:?} not found", r.name)),
                            Err(e) => return Err(format!("reading configmap {:?}: {e}", r.name)),
                        }
                    } else {
                        continue;
                    }
                }
            };
            env.retain(|(n, _)| *n != e.name);
            env.push((e.name.clone(), value));
        }
        Ok(env)
    }
}
