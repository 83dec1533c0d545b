//! Exports: wire protocols that translate into [`crate::block::BlockDevice`] calls.

pub mod nbd;
pub mod vhost;
