//! kapp runtime
