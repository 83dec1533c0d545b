//! Exports: wire protocols that translate into [`crate::block::BlockDevice`] calls.

pub mod fence;
pub mod finish;
pub mod in_flight;
pub mod nbd;
pub mod pool_volumes;
pub(crate) mod request_set;
pub mod vhost;
