//! `kapp up` / `kapp down`.
