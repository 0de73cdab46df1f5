//! Compute resources as the scheduler counts them: CPU in millicores,
//! memory in bytes, and pods.

use std::collections::BTreeMap;

use skiff::api::core::v1::Pod;
use skiff::quantity::Quantity;

/// CPU assumed for a container without a CPU request, when scoring (100m).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory assumed for a container without a memory request, when scoring (200 MB).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// An amount of resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Number of pods.
    pub pods: i64,
}

fn quantity(list: &BTreeMap<String, String>, name: &str) -> Option<Quantity> {
    list.get(name).and_then(|q| Quantity::parse(q).ok())
}

impl Resources {
    /// Reads a resource list ("cpu", "memory", "pods").
    pub fn from_list(list: &BTreeMap<String, String>) -> Self {
        Self {
            milli_cpu: quantity(list, "cpu").map(|q| q.milli() as i64).unwrap_or(0),
            memory: quantity(list, "memory")
                .map(|q| q.value() as i64)
                .unwrap_or(0),
            pods: quantity(list, "pods")
                .map(|q| q.value() as i64)
                .unwrap_or(0),
        }
    }

    /// What a pod requests (Kubernetes' rule: the larger of the sum of its
    /// containers and its largest init container), counting itself as one pod.
    /// With `non_zero`, containers without requests count the scoring defaults.
    pub fn of_pod(pod: &Pod, non_zero: bool) -> Self {
        let Some(spec) = &pod.spec else {
            return Self {
                pods: 1,
                ..Default::default()
            };
        };
        let container = |c: &skiff::api::core::v1::Container| {
            let empty = BTreeMap::new();
            let req = c.resources.as_ref().map(|r| &r.requests).unwrap_or(&empty);
            let mut r = Self::from_list(req);
            if non_zero {
                if !req.contains_key("cpu") {
                    r.milli_cpu = DEFAULT_MILLI_CPU;
                }
                if !req.contains_key("memory") {
                    r.memory = DEFAULT_MEMORY;
                }
            }
            r
        };
        let mut sum = Self::default();
        for c in &spec.containers {
            sum += container(c);
        }
        for c in &spec.init_containers {
            let r = container(c);
            sum.milli_cpu = sum.milli_cpu.max(r.milli_cpu);
            sum.memory = sum.memory.max(r.memory);
        }
        sum.pods = 1;
        sum
    }
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, o: Self) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.pods += o.pods;
    }
}

impl std::ops::SubAssign for Resources {
    fn sub_assign(&mut self, o: Self) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.pods -= o.pods;
    }
}

impl std::ops::Add for Resources {
    type Output = Self;
    fn add(mut self, o: Self) -> Self {
        self += o;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::api::core::v1::{Container, PodSpec, ResourceRequirements};

    fn c(cpu: &str, mem: &str) -> Container {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_string(), cpu.to_string());
        }
        if !mem.is_empty() {
            requests.insert("memory".to_string(), mem.to_string());
        }
        Container {
            resources: Some(ResourceRequirements {
                requests,
                limits: BTreeMap::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_requests_take_the_larger_of_containers_and_init_containers() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![c("250m", "64Mi"), c("250m", "")],
                init_containers: vec![c("1", "32Mi")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = Resources::of_pod(&pod, false);
        assert_eq!(
            r,
            Resources {
                milli_cpu: 1000,
                memory: 64 << 20,
                pods: 1
            }
        );
        let nz = Resources::of_pod(&pod, true);
        assert_eq!(nz.memory, (64 << 20) + DEFAULT_MEMORY);
    }
}
