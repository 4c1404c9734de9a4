//! kapp scheduler
