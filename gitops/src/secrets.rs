//! SOPS-style Secrets: in a Secret manifest, any `data` or `stringData` value that is an
//! ASCII-armored age message is decrypted with the cluster's key before validation. `data`
//! gets the plaintext base64-encoded, `stringData` the plaintext itself (UTF-8 only).
//! (Whole `*.age` files are decrypted by `kapp-render` as it reads them.)
//!
//! Architecture Invariant: no plaintext reaches an error: a failure names the file, the
//! document, the object, the field and `kapp_age`'s reason, which never holds data.

use base64::Engine;
use kapp_api::kapp::SyncError;
use kapp_render::Document;
use serde_json::Value;

/// Why something encrypted cannot be read: no key.
pub const NO_KEY: &str = "encrypted with age and no decryption key is configured";

/// Decrypt every armored value of every Secret in `docs`, in place; all failures at once.
/// With no identities, an encrypted value is a failure.
pub fn decrypt_values(docs: &mut [Document], identities: &[kapp_age::Identity]) -> Vec<SyncError> {
    let mut errors = Vec::new();
    for d in docs.iter_mut() {
        let o = &mut d.object;
        if o["apiVersion"].as_str() != Some("v1") || o["kind"].as_str() != Some("Secret") {
            continue;
        }
        let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
        let namespace = o["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default").to_string();
        for field in ["data", "stringData"] {
            let Some(map) = o.get_mut(field).and_then(Value::as_object_mut) else { continue };
            for (key, value) in map.iter_mut() {
                let Some(text) = value.as_str().filter(|t| kapp_age::is_armored(t.as_bytes())) else { continue };
                let plain = if identities.is_empty() {
                    Err(NO_KEY.to_string())
                } else {
                    kapp_age::decrypt(identities, text.as_bytes()).map_err(|e| format!("cannot decrypt: {e}"))
                };
                let decoded = plain.and_then(|p| match field {
                    "data" => Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(p))),
                    _ => String::from_utf8(p).map(Value::String).map_err(|_| "the decrypted value is not UTF-8: encrypt it under data instead".to_string()),
                });
                match decoded {
                    Ok(v) => *value = v,
                    Err(reason) => errors.push(SyncError {
                        file: d.file.to_string_lossy().into_owned(),
                        document: Some(d.index),
                        object: format!("Secret/{namespace}/{name}"),
                        field: format!("{field}.{key}"),
                        reason,
                    }),
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(object: Value) -> Document {
        Document { file: "s.yaml".into(), index: 2, object }
    }

    #[test]
    fn armored_values_decrypt_into_data_and_string_data() {
        let id = kapp_age::Identity::generate();
        let enc = |p: &[u8]| kapp_age::encrypt_armored(&[id.to_recipient()], p).unwrap();
        let mut docs = vec![
            doc(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"bin": enc(&[0, 255]), "plain": "aGk="}, "stringData": {"password": enc(b"hunter2")}})),
            doc(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": enc(b"left alone")}})),
        ];
        let before_cm = docs[1].object.clone();
        assert_eq!(decrypt_values(&mut docs, std::slice::from_ref(&id)), vec![]);
        assert_eq!(docs[0].object["data"], json!({"bin": "AP8=", "plain": "aGk="}));
        assert_eq!(docs[0].object["stringData"], json!({"password": "hunter2"}));
        assert_eq!(docs[1].object, before_cm);
    }

    #[test]
    fn failures_name_file_document_object_and_field_and_never_the_plaintext() {
        let id = kapp_age::Identity::generate();
        let other = kapp_age::Identity::generate();
        let enc = |p: &[u8]| kapp_age::encrypt_armored(&[id.to_recipient()], p).unwrap();
        let object = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "apps"}, "data": {"password": enc(b"hunter2")}, "stringData": {"bin": enc(&[0xff, 0xfe])}});
        let mut docs = vec![doc(object.clone())];
        let e = decrypt_values(&mut docs, &[other]);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].file.as_str(), e[0].document, e[0].object.as_str(), e[0].field.as_str()), ("s.yaml", Some(2), "Secret/apps/s", "data.password"));
        assert!(e[0].reason.starts_with("cannot decrypt: no identity matches"), "{}", e[0].reason);
        let e = decrypt_values(&mut [doc(object.clone())], &[]);
        assert_eq!(e[0].reason, "encrypted with age and no decryption key is configured");
        let mut docs = vec![doc(object)];
        let e = decrypt_values(&mut docs, &[id]);
        assert_eq!((e.len(), e[0].field.as_str()), (1, "stringData.bin"));
        assert!(!format!("{e:?}").contains("hunter2"));
    }
}
