//! The dependency graph of the services: validation and start order (pure).

use std::collections::HashMap;

use super::{ServiceSpec, SuperviseError};

/// Services by index into the spec list.
#[derive(Debug)]
pub(super) struct Graph {
    /// A topological order: every service after its dependencies (ties in spec order).
    pub order: Vec<usize>,
    /// What each service starts after.
    pub deps: Vec<Vec<usize>>,
    /// Which services start after each service.
    pub dependents: Vec<Vec<usize>>,
}

impl Graph {
    pub fn new(specs: &[ServiceSpec]) -> Result<Graph, SuperviseError> {
        let mut index = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let valid = !spec.name.is_empty()
                && spec.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return Err(SuperviseError::InvalidName { service: spec.name.clone() });
            }
            if index.insert(spec.name.as_str(), i).is_some() {
                return Err(SuperviseError::DuplicateName { service: spec.name.clone() });
            }
        }
        let mut deps = vec![Vec::new(); specs.len()];
        let mut dependents = vec![Vec::new(); specs.len()];
        for (i, spec) in specs.iter().enumerate() {
            for dependency in &spec.after {
                let Some(&d) = index.get(dependency.as_str()) else {
                    return Err(SuperviseError::UnknownDependency {
                        service: spec.name.clone(),
                        dependency: dependency.clone(),
                    });
                };
                if !deps[i].contains(&d) {
                    deps[i].push(d);
                    dependents[d].push(i);
                }
            }
        }
        let order = topological(&deps, &dependents).map_err(|unordered| cycle_error(specs, &deps, unordered))?;
        Ok(Graph { order, deps, dependents })
    }
}

/// Kahn's algorithm, taking the lowest ready index first; `Err` with the services that
/// could not be ordered (each has a dependency among them: they are on or behind a cycle).
fn topological(deps: &[Vec<usize>], dependents: &[Vec<usize>]) -> Result<Vec<usize>, Vec<bool>> {
    let mut missing: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: std::collections::BTreeSet<usize> = (0..deps.len()).filter(|&i| missing[i] == 0).collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            missing[d] -= 1;
            if missing[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() == deps.len() {
        Ok(order)
    } else {
        Err(missing.iter().map(|&m| m > 0).collect())
    }
}

/// Walks from an unordered service to an unordered dependency until a service repeats:
/// the repeated stretch is a cycle.
fn cycle_error(specs: &[ServiceSpec], deps: &[Vec<usize>], unordered: Vec<bool>) -> SuperviseError {
    let mut at = unordered.iter().position(|&u| u).unwrap_or(0);
    let mut path = Vec::new();
    loop {
        if let Some(start) = path.iter().position(|&p| p == at) {
            let mut cycle: Vec<String> = path[start..].iter().map(|&i: &usize| specs[i].name.clone()).collect();
            cycle.push(specs[at].name.clone());
            return SuperviseError::DependencyCycle { service: specs[at].name.clone(), cycle };
        }
        path.push(at);
        // Every unordered service waits on an unordered dependency, so this always finds one.
        at = deps[at].iter().copied().find(|&d| unordered[d]).unwrap_or(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, after: &[&str]) -> ServiceSpec {
        ServiceSpec { after: after.iter().map(|s| s.to_string()).collect(), ..ServiceSpec::new(name, "/bin/true") }
    }

    #[test]
    fn dependencies_come_first_and_ties_keep_spec_order() {
        let specs =
            [spec("kubelet", &["apiserver"]), spec("dns", &[]), spec("apiserver", &["store"]), spec("store", &[])];
        let graph = Graph::new(&specs).unwrap();
        let names: Vec<&str> = graph.order.iter().map(|&i| specs[i].name.as_str()).collect();
        assert_eq!(names, ["dns", "store", "apiserver", "kubelet"]);
        assert_eq!(graph.dependents[3], [2]);
        assert_eq!(graph.deps[0], [2]);
    }
}
