//! kapp's scheduler core: which node should a pod run on? Pure functions over a
//! snapshot of the cluster, no IO.
//!
//! Module map:
//! - `quantity`: resource quantities ("100m", "128Mi", "1e3") read exactly.

pub mod quantity;
