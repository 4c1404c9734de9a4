//! kapp's init: service supervision (see `supervise`). PID 1 duties (mounts, network,
//! shutdown) come with the image.

pub mod supervise;
