//! The TOML configuration file: volumes, members, exports.
