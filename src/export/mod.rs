//! Exports: wire protocols that translate into [`crate::block::BlockDevice`] calls.

pub mod finish;
pub mod nbd;
pub mod vhost;
