//! The built-in demo of `vraid serve` with no arguments: four 256 MiB sparse
//! members in `./vraid-data/`, a RAID-5 volume `vol0` with 64 KiB chunks,
//! created on first start and reassembled on later ones.

use std::path::{Path, PathBuf};

use super::bringup::CreateRequest;
use crate::raid::Level;

/// Demo volume name.
pub const DEMO_NAME: &str = "vol0";
/// Demo member count.
pub const DEMO_MEMBERS: usize = 4;
/// Demo member size.
pub const DEMO_MEMBER_SIZE: u64 = 256 << 20;
/// Demo chunk size.
pub const DEMO_CHUNK: u64 = 64 << 10;
/// Demo vhost-user-blk socket, in the demo directory.
pub const DEMO_SOCKET: &str = "vol0.sock";

/// What the demo brings up.
#[derive(Debug)]
pub struct DemoSpec {
    /// Volume name.
    pub name: String,
    /// Member paths.
    pub members: Vec<PathBuf>,
    /// How to create it on first start.
    pub create: CreateRequest,
    /// NBD export description.
    pub description: String,
}

/// The demo in `dir` (created if missing by the member layer on first start).
pub fn spec(dir: &Path) -> DemoSpec {
    let _ = std::fs::create_dir_all(dir);
    DemoSpec {
        name: DEMO_NAME.to_string(),
        members: (0..DEMO_MEMBERS)
            .map(|i| dir.join(format!("m{i}.img")))
            .collect(),
        create: CreateRequest {
            name: DEMO_NAME.to_string(),
            level: Level::Raid5,
            chunk_size: DEMO_CHUNK,
            member_size: DEMO_MEMBER_SIZE,
            force: false,
            checksum_layout: Default::default(),
        },
        description: "vraid demo: RAID-5 over 4 sparse files in ./vraid-data".to_string(),
    }
}
