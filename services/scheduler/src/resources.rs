//! Resource amounts and what a pod requests, computed the way Kubernetes does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{self, QuantityError};

/// cpu requested for scoring when a container names none (kube-scheduler's 100m).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory requested for scoring when a container names none (kube-scheduler's 200Mi).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 << 20;

/// Amounts of resources: cpu in millicores, memory in bytes, everything else
/// (`ephemeral-storage`, `hugepages-2Mi`, extended resources like `nvidia.com/gpu`) in its
/// base unit, rounded up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub other: BTreeMap<String, i64>,
}

impl Resources {
    pub fn add(&mut self, more: &Resources) {
        self.milli_cpu += more.milli_cpu;
        self.memory += more.memory;
        for (name, amount) in &more.other {
            *self.other.entry(name.clone()).or_default() += amount;
        }
    }

    pub fn sub(&mut self, less: &Resources) {
        self.milli_cpu -= less.milli_cpu;
        self.memory -= less.memory;
        for (name, amount) in &less.other {
            let left = self.other.entry(name.clone()).or_default();
            *left -= amount;
            if *left == 0 {
                self.other.remove(name);
            }
        }
    }

    /// Raises each amount to at least `other`'s.
    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        for (name, amount) in &other.other {
            let mine = self.other.entry(name.clone()).or_default();
            *mine = (*mine).max(*amount);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0 && self.memory == 0 && self.other.values().all(|v| *v == 0)
    }
}

/// A pod's resource requests or a node's resources could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("pod {pod}: {}{field}: {source}", container_prefix(.container))]
    PodQuantity { pod: String, container: Option<String>, field: String, source: QuantityError },
    #[error("pod {pod}: {}{field}: {quantity:?} is negative", container_prefix(.container))]
    PodNegative { pod: String, container: Option<String>, field: String, quantity: String },
    #[error("node {node}: {field}: {source}")]
    NodeQuantity { node: String, field: String, source: QuantityError },
}

fn container_prefix(container: &Option<String>) -> String {
    container.as_ref().map(|c| format!("container {c:?}: ")).unwrap_or_default()
}

/// What a pod asks for: the amounts the fit filter checks, and for scoring the cpu and
/// memory with kube-scheduler's defaults (100m, 200Mi) for containers that name none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    pub requests: Resources,
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
}

/// Requests as Kubernetes computes them: the larger of the containers' sum and what the
/// init containers need at their peak (sidecars, init containers with `restartPolicy:
/// Always`, keep running and add to both), plus `spec.overhead`. A resource with a limit
/// but no request requests its limit, as the API server's defaulting would set it.
pub fn pod_requests(pod: &Pod) -> Result<PodRequests, ResourceError> {
    let key = pod_key(pod);
    let Some(spec) = &pod.spec else { return Ok(PodRequests::default()) };
    let containers: Vec<(Resources, Resources)> =
        spec.containers.iter().map(|c| container_requests(&key, c)).collect::<Result<_, _>>()?;
    let inits: Vec<((Resources, Resources), bool)> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| Ok((container_requests(&key, c)?, c.restart_policy.as_deref() == Some("Always"))))
        .collect::<Result<_, ResourceError>>()?;
    let overhead = read_list(spec.overhead.as_ref(), |field, quantity, source| match source {
        Some(source) => ResourceError::PodQuantity { pod: key.clone(), container: None, field: format!("spec.overhead[{field}]"), source },
        None => ResourceError::PodNegative { pod: key.clone(), container: None, field: format!("spec.overhead[{field}]"), quantity: quantity.to_owned() },
    })?;
    let combine = |pick: fn(&(Resources, Resources)) -> &Resources| {
        let mut total = Resources::default();
        containers.iter().for_each(|c| total.add(pick(c)));
        let mut sidecars = Resources::default();
        let mut init_peak = Resources::default();
        for (both, sidecar) in &inits {
            let own = pick(both);
            let mut during = sidecars.clone();
            during.add(own);
            if *sidecar {
                total.add(own);
                sidecars = during.clone();
            }
            init_peak.max_with(&during);
        }
        total.max_with(&init_peak);
        total.add(&overhead);
        total
    };
    let requests = combine(|(actual, _)| actual);
    let non_zero = combine(|(_, non_zero)| non_zero);
    Ok(PodRequests { requests, non_zero_milli_cpu: non_zero.milli_cpu, non_zero_memory: non_zero.memory })
}

/// `namespace/name`, the key pods go by in the snapshot and in messages.
pub fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or(""))
}

/// A container's requests (limits standing in for missing requests), and the same with
/// the scoring defaults for missing cpu and memory.
fn container_requests(pod: &str, container: &Container) -> Result<(Resources, Resources), ResourceError> {
    let resources = container.resources.as_ref();
    let read = |list: Option<&BTreeMap<String, Quantity>>, which: &str| {
        read_list(list, |field, quantity, source| {
            let field = format!("resources.{which}[{field}]");
            let container = Some(container.name.clone());
            match source {
                Some(source) => ResourceError::PodQuantity { pod: pod.to_owned(), container, field, source },
                None => ResourceError::PodNegative { pod: pod.to_owned(), container, field, quantity: quantity.to_owned() },
            }
        })
    };
    let requested = resources.and_then(|r| r.requests.as_ref());
    let limited = resources.and_then(|r| r.limits.as_ref());
    let mut actual = read(requested, "requests")?;
    let limits = read(limited, "limits")?;
    let named = |name: &str| requested.is_some_and(|r| r.contains_key(name));
    let limit_named = |name: &str| limited.is_some_and(|l| l.contains_key(name));
    if !named("cpu") {
        actual.milli_cpu = limits.milli_cpu;
    }
    if !named("memory") {
        actual.memory = limits.memory;
    }
    for (name, amount) in limits.other {
        actual.other.entry(name).or_insert(amount);
    }
    let mut non_zero = Resources { milli_cpu: actual.milli_cpu, memory: actual.memory, other: BTreeMap::new() };
    if !named("cpu") && !limit_named("cpu") {
        non_zero.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
    }
    if !named("memory") && !limit_named("memory") {
        non_zero.memory = DEFAULT_MEMORY_REQUEST;
    }
    Ok((actual, non_zero))
}

/// Reads a resource list; `error(name, quantity, None)` reports a negative amount.
/// `pods` is skipped: only nodes have it, and they read it apart.
fn read_list<E>(
    list: Option<&BTreeMap<String, Quantity>>,
    error: impl Fn(&str, &str, Option<QuantityError>) -> E,
) -> Result<Resources, E> {
    let mut out = Resources::default();
    for (name, Quantity(text)) in list.into_iter().flatten() {
        let amount = match name.as_str() {
            "cpu" => quantity::milli_value(text),
            _ => quantity::value(text),
        }
        .map_err(|e| error(name, text, Some(e)))?;
        if amount < 0 {
            return Err(error(name, text, None));
        }
        match name.as_str() {
            "cpu" => out.milli_cpu = amount,
            "memory" => out.memory = amount,
            "pods" => {}
            _ => {
                out.other.insert(name.clone(), amount);
            }
        }
    }
    Ok(out)
}

/// A node's allocatable resources (capacity when the kubelet has not reported
/// allocatable) and how many pods it takes.
pub fn node_allocatable(node: &k8s_openapi::api::core::v1::Node) -> Result<(Resources, i64), ResourceError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let status = node.status.as_ref();
    let (list, field) = match status.and_then(|s| s.allocatable.as_ref()) {
        Some(list) => (Some(list), "status.allocatable"),
        None => (status.and_then(|s| s.capacity.as_ref()), "status.capacity"),
    };
    let error = |resource: &str, text: &str, source: Option<QuantityError>| ResourceError::NodeQuantity {
        node: name.clone(),
        field: format!("{field}[{resource}]"),
        source: source.unwrap_or_else(|| QuantityError::Malformed(text.to_owned())),
    };
    let resources = read_list(list, error)?;
    let pods = match list.and_then(|l| l.get("pods")) {
        Some(Quantity(text)) => quantity::value(text).map_err(|e| error("pods", text, Some(e)))?,
        None => 0,
    };
    Ok((resources, pods))
}
