//! Checks a request must pass before it goes anywhere near the log; the client runs them too,
//! so a bad request fails fast without a round trip.

use std::collections::BTreeSet;

use crate::error::{limits, StoreError};
use crate::types::{KeyRange, Op, Txn};

/// Check a transaction before it goes anywhere near the log.
pub fn validate_txn(txn: &Txn) -> Result<(), StoreError> {
    let n = txn.compare.len() + txn.success.len() + txn.failure.len();
    if n > limits::MAX_TXN_OPS {
        return Err(StoreError::Invalid(format!(
            "transaction has {n} operations and compares, over the limit of {}",
            limits::MAX_TXN_OPS
        )));
    }
    let check_key = |k: &[u8], what: &str| -> Result<(), StoreError> {
        if k.is_empty() {
            return Err(StoreError::Invalid(format!("{what}: key is empty")));
        }
        if k.len() > limits::MAX_KEY_BYTES {
            return Err(StoreError::TooLarge { what: format!("{what} key"), size: k.len(), limit: limits::MAX_KEY_BYTES });
        }
        Ok(())
    };
    for c in &txn.compare {
        check_key(&c.key, "compare")?;
    }
    for ops in [&txn.success, &txn.failure] {
        let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
        let mut deletes: Vec<&KeyRange> = Vec::new();
        for op in ops.iter() {
            match op {
                Op::Range(r) => {
                    check_key(&r.range.key, "range")?;
                    if r.revision < 0 {
                        return Err(StoreError::Invalid(format!("range: revision {} is negative", r.revision)));
                    }
                }
                Op::Put { key, value, .. } => {
                    let shown = String::from_utf8_lossy(key);
                    check_key(key, "put")?;
                    if value.len() > limits::MAX_VALUE_BYTES {
                        return Err(StoreError::TooLarge {
                            what: format!("value of {shown}"),
                            size: value.len(),
                            limit: limits::MAX_VALUE_BYTES,
                        });
                    }
                    if !puts.insert(key) {
                        return Err(StoreError::Invalid(format!("transaction puts key {shown} twice")));
                    }
                }
                Op::Delete { range, .. } => {
                    check_key(&range.key, "delete")?;
                    deletes.push(range);
                }
            }
        }
        for k in &puts {
            if deletes.iter().any(|d| d.contains(k)) {
                return Err(StoreError::Invalid(format!(
                    "transaction both puts and deletes key {}",
                    String::from_utf8_lossy(k)
                )));
            }
        }
    }
    Ok(())
}

