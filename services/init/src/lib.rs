//! kapp's init: service supervision (`supervise`), used by `kapp up` as an ordinary process,
//! and PID-1 mode (`pid1`: mounts, modules, network, the state partition, the machine
//! config, shutdown and reboot) on a node.

pub mod pid1;
pub mod supervise;
