//! kapp gitops
