//! Label selectors and node selector terms, parsed once and matched many times.
//!
//! A selector Kubernetes would reject (an unknown operator, `In` without values, `Gt`
//! with a value that is not an integer) becomes a requirement that matches nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operator {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    op: Operator,
}

impl Requirement {
    fn new(key: &str, operator: &str, values: &[String], numeric: bool) -> Self {
        let single_int = || match values {
            [v] => v.parse::<i64>().ok(),
            _ => None,
        };
        let op = match operator {
            "In" if !values.is_empty() => Operator::In(values.to_vec()),
            "NotIn" if !values.is_empty() => Operator::NotIn(values.to_vec()),
            "Exists" if values.is_empty() => Operator::Exists,
            "DoesNotExist" if values.is_empty() => Operator::DoesNotExist,
            "Gt" if numeric => single_int().map_or(Operator::Never, Operator::Gt),
            "Lt" if numeric => single_int().map_or(Operator::Never, Operator::Lt),
            _ => Operator::Never,
        };
        Requirement { key: key.to_owned(), op }
    }

    fn from_node(req: &NodeSelectorRequirement) -> Self {
        Requirement::new(&req.key, &req.operator, req.values.as_deref().unwrap_or_default(), true)
    }

    /// Whether a label (or field) with this requirement's key and `value` (absent:
    /// `None`) satisfies it.
    fn matches_value(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Operator::In(values), Some(v)) => values.iter().any(|x| x == v),
            (Operator::NotIn(values), Some(v)) => !values.iter().any(|x| x == v),
            (Operator::NotIn(_), None) => true,
            (Operator::Exists, v) => v.is_some(),
            (Operator::DoesNotExist, v) => v.is_none(),
            (Operator::Gt(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v > *n),
            (Operator::Lt(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v < *n),
            _ => false,
        }
    }

    fn matches(&self, labels: &Labels) -> bool {
        self.matches_value(labels.get(&self.key).map(String::as_str))
    }
}

/// A label selector: every requirement must hold. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    pub fn new(selector: &LabelSelector) -> Self {
        let labels = selector.match_labels.iter().flatten();
        let mut reqs: Vec<Requirement> =
            labels.map(|(k, v)| Requirement { key: k.clone(), op: Operator::In(vec![v.clone()]) }).collect();
        for e in selector.match_expressions.iter().flatten() {
            reqs.push(Requirement::new(&e.key, &e.operator, e.values.as_deref().unwrap_or_default(), false));
        }
        Selector(reqs)
    }

    /// `key=value` for each entry (a Service's or a nodeSelector's map).
    pub fn from_map(map: &Labels) -> Self {
        Selector(map.iter().map(|(k, v)| Requirement { key: k.clone(), op: Operator::In(vec![v.clone()]) }).collect())
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }
}

/// One node selector term: label expressions and `metadata.name` field expressions, all
/// of which must hold. A term with neither matches no node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTerm {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl NodeTerm {
    pub fn new(term: &NodeSelectorTerm) -> Self {
        let labels = term.match_expressions.iter().flatten().map(Requirement::from_node).collect();
        let fields = term
            .match_fields
            .iter()
            .flatten()
            .map(|req| match req.operator.as_str() {
                "In" | "NotIn" if req.key == "metadata.name" => Requirement::from_node(req),
                _ => Requirement { key: req.key.clone(), op: Operator::Never },
            })
            .collect();
        NodeTerm { labels, fields }
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, node_name: &str, labels: &Labels) -> bool {
        !self.is_empty()
            && self.labels.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|r| r.matches_value(Some(node_name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn node_term_operators() {
        let node = labels(&[("zone", "a"), ("cores", "8"), ("gpu", "")]);
        let cases = [
            (json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}), true),
            (json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}), false),
            (json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]}), true),
            (json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}), false),
            (json!({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["a"]}]}), true),
            (json!({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}), true),
            (json!({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}), false),
            (json!({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}), true),
            (json!({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}), false),
            (json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}), true),
            (json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["8"]}]}), false),
            (json!({"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["16"]}]}), true),
            (json!({"matchExpressions": [{"key": "zone", "operator": "Lt", "values": ["16"]}]}), false),
            (json!({"matchExpressions": [{"key": "missing", "operator": "Gt", "values": ["1"]}]}), false),
            (json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["x"]}]}), false),
            (json!({"matchExpressions": [{"key": "zone", "operator": "Is", "values": ["a"]}]}), false),
            (json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": []}]}), false),
            // expressions are ANDed
            (json!({"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]},
                {"key": "cores", "operator": "Lt", "values": ["4"]}]}), false),
            (json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}), true),
            (json!({"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}), false),
            (json!({"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["n1"]}]}), false),
            (json!({"matchFields": [{"key": "metadata.name", "operator": "Exists"}]}), false),
            (json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}],
                    "matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}), false),
            (json!({}), false),
        ];
        for (term, want) in cases {
            let parsed = NodeTerm::new(&serde_json::from_value(term.clone()).unwrap());
            assert_eq!(parsed.matches("n1", &node), want, "{term}");
        }
    }

    #[test]
    fn label_selector() {
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            (json!({}), true),
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "web", "tier": "back"}}), false),
            (json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}]}), true),
            (json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}), false),
            (json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}), true),
            (json!({"matchExpressions": [{"key": "db", "operator": "DoesNotExist"}]}), true),
            // Gt is not a label selector operator
            (json!({"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]}), false),
        ];
        for (selector, want) in cases {
            let parsed = Selector::new(&serde_json::from_value(selector.clone()).unwrap());
            assert_eq!(parsed.matches(&pod), want, "{selector}");
        }
    }
}
