//! A pool at real size: a RAID-5 array of three 2 TiB sparse file members
//! (on /dev/shm: ext4 here gives spurious ENOSPC for random O_DIRECT
//! writes into huge sparse files), random first-touch writes over the
//! whole 4 TiB, and the metadata held in memory stays within the cache
//! budget plus one transaction, whatever the capacity.

use std::sync::Arc;

use crate::block::{BlockDevice, Durability};
use crate::member::{create_sparse, open_member, MemberOptions};
use crate::pool::meta::COMMIT_AT;
use crate::pool::pool::CreateOptions;
use crate::pool::Pool;
use crate::raid::layout::{ChunkSize, Geometry};
use crate::raid::test_support::Events;
use crate::raid::volume::Volume;
use crate::raid::Level;
use crate::units::ByteOffset;

const MEMBER: u64 = 2 << 40;
const CACHE: usize = 128;

fn array(dir: &std::path::Path) -> Arc<dyn BlockDevice> {
    let opts = MemberOptions {
        direct: false,
        ..MemberOptions::default()
    };
    let members = (0..3)
        .map(|i| {
            let path = dir.join(format!("m{i}"));
            create_sparse(&path, MEMBER).unwrap();
            Some(open_member(&path, &opts).unwrap() as Arc<dyn BlockDevice>)
        })
        .collect();
    let geo = Geometry::new(Level::Raid5, 3, ChunkSize::new(64 << 10).unwrap(), MEMBER).unwrap();
    Arc::new(Volume::new("big".into(), geo, members, Arc::new(Events::default())).unwrap())
}

#[test]
fn pool_on_4tib_raid5_keeps_metadata_memory_within_the_cache() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dev = array(dir.path());
        let opts = CreateOptions {
            assume_zeroed: true,
            ..Default::default()
        };
        Pool::create(dev.as_ref(), opts).await.unwrap();
        let pool = Pool::open(dev.clone(), CACHE).await.unwrap();
        let size = pool.space().await.total_bytes / 2;
        pool.create_volume("v", size).await.unwrap();
        let v = pool.open_volume("v").await.unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut written = Vec::new();
        for i in 0..1500u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x % (size / 4096)) * 4096;
            v.write(
                ByteOffset(at),
                &[(i % 251) as u8 + 1; 4096],
                Durability::Normal,
            )
            .await
            .unwrap();
            written.push((at, (i % 251) as u8 + 1));
            if i % 100 == 99 {
                v.flush().await.unwrap();
            }
            let cached = pool.cached_pages().await;
            assert!(
                cached <= CACHE + COMMIT_AT + 64,
                "{cached} pages cached after {i} writes"
            );
        }
        v.flush().await.unwrap();
        drop(v);
        drop(pool);
        let pool = Pool::open(dev, CACHE).await.unwrap();
        let v = pool.open_volume("v").await.unwrap();
        let mut last = std::collections::HashMap::new();
        for (at, b) in written {
            last.insert(at, b);
        }
        for (at, b) in last.into_iter().take(300) {
            let mut buf = vec![0u8; 4096];
            v.read(ByteOffset(at), &mut buf).await.unwrap();
            assert!(buf.iter().all(|x| *x == b), "block at {at}");
        }
        assert!(pool.check().await.unwrap().clean());
    });
}
