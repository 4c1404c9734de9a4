//! The kustomization file: which fields exist, which of them are supported, and their
//! shapes. An unsupported field is an error, never silently ignored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::RenderError;

/// The file names kustomize looks for, in its order of preference.
pub(crate) const FILE_NAMES: &[&str] = &["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Top-level fields this renderer implements.
const SUPPORTED: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "bases",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "commonLabels",
    "labels",
    "commonAnnotations",
    "images",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
    "patchesStrategicMerge",
    "patchesJson6902",
];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Kustomization {
    /// Accepted and ignored, as kustomize does.
    #[serde(default, rename = "apiVersion")]
    _api_version: Option<serde_yaml::Value>,
    #[serde(default, rename = "kind")]
    _kind: Option<serde_yaml::Value>,
    #[serde(default, rename = "metadata")]
    _metadata: Option<serde_yaml::Value>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub bases: Vec<String>,
    pub namespace: Option<String>,
    pub name_prefix: Option<String>,
    pub name_suffix: Option<String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: Vec<Labels>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub images: Vec<Image>,
    #[serde(default)]
    pub config_map_generator: Vec<Generator>,
    #[serde(default)]
    pub secret_generator: Vec<Generator>,
    pub generator_options: Option<GeneratorOptions>,
    #[serde(default)]
    pub patches: Vec<Patch>,
    #[serde(default)]
    pub patches_strategic_merge: Vec<String>,
    #[serde(default)]
    pub patches_json6902: Vec<Patch>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Labels {
    #[serde(default)]
    pub pairs: BTreeMap<String, String>,
    #[serde(default)]
    pub include_selectors: bool,
    #[serde(default)]
    pub include_templates: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Image {
    pub name: String,
    pub new_name: Option<String>,
    pub new_tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Generator {
    pub name: String,
    pub namespace: Option<String>,
    pub behavior: Option<String>,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub literals: Vec<String>,
    #[serde(default)]
    pub envs: Vec<String>,
    /// The deprecated single-file form of `envs`.
    pub env: Option<String>,
    pub options: Option<GeneratorOptions>,
    /// Secrets only.
    #[serde(rename = "type")]
    pub type_: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct GeneratorOptions {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub disable_name_suffix_hash: bool,
    #[serde(default)]
    pub immutable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Patch {
    pub path: Option<String>,
    pub patch: Option<String>,
    pub target: Option<Target>,
}

/// Which resources a patch applies to. Group, version, kind, name and namespace are
/// anchored regular expressions (a small subset, see `select`); the selectors are label
/// selectors.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Target {
    pub group: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub label_selector: Option<String>,
    pub annotation_selector: Option<String>,
}

/// The kustomization file in `dir`, if there is one.
pub(crate) fn find(dir: &Path) -> Option<std::path::PathBuf> {
    FILE_NAMES.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Parse a kustomization; `shown` names it in errors.
pub(crate) fn parse(shown: &Path, text: &str) -> Result<Kustomization, RenderError> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| RenderError::Document {
        file: shown.to_path_buf(),
        index: 0,
        line: e.location().map(|l| l.line()),
        reason: e.to_string(),
    })?;
    let map = match value {
        serde_yaml::Value::Null => return Ok(Kustomization::default()),
        serde_yaml::Value::Mapping(m) => m,
        _ => return Err(RenderError::kust(shown, "a kustomization must be a mapping")),
    };
    for key in map.keys() {
        let key = key.as_str().unwrap_or("<non-string key>");
        if !SUPPORTED.contains(&key) {
            return Err(RenderError::Unsupported { file: shown.to_path_buf(), field: key.to_string() });
        }
    }
    serde_yaml::from_value(serde_yaml::Value::Mapping(map)).map_err(|e| {
        let reason = e.to_string();
        // Nested unknown fields (labels[].fields, patches[].options, ...) are unsupported too.
        match reason.split_once("unknown field `").and_then(|(_, r)| r.split('`').next()) {
            Some(field) => RenderError::Unsupported { file: shown.to_path_buf(), field: field.to_string() },
            None => RenderError::kust(shown, reason),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_fields_are_named() {
        let e = parse(Path::new("k/kustomization.yaml"), "resources: [a.yaml]\nhelmCharts: []\n").unwrap_err();
        assert_eq!(e.to_string(), "unsupported field helmCharts in k/kustomization.yaml");
        let e = parse(Path::new("kustomization.yaml"), "labels:\n- pairs: {a: b}\n  fields: []\n").unwrap_err();
        assert_eq!(e.to_string(), "unsupported field fields in kustomization.yaml");
        let k = parse(Path::new("kustomization.yaml"), "namePrefix: p-\ncommonLabels: {a: b}\n").unwrap();
        assert_eq!(k.name_prefix.as_deref(), Some("p-"));
    }
}
