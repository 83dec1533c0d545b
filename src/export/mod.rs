//! Exports: wire protocols that translate into [`crate::block::BlockDevice`] calls.

pub mod finish;
pub mod in_flight;
pub mod nbd;
pub mod vhost;
