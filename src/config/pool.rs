//! `[[pool]]` and `[[pool.volume]]`: a pool on an array of the file and
//! the thin volumes it must hold (docs/FORMAT.md §11), checked here for
//! what the text alone can tell (the array is a `[[volume]]` of the file,
//! one pool per array, names unique across the file, sizes and cluster
//! sizes that a pool takes, sockets not used twice). What only the arrays
//! can tell (a pool there already, its cluster size, a volume that is a
//! snapshot) is checked at start-up (`daemon::pool_config`).
//!
//! ```toml
//! [[pool]]
//! array = "vol0"
//! cluster_size = "1M"          # when laid; must match an existing pool
//! split_clusters = true        # lay version 3 (FORMAT.md §11); must match
//! fill_events = [80, 90, 95]   # percent full that raise an event
//!
//! [[pool.volume]]
//! name = "guest1"
//! size = "20G"
//! vhost_user_blk = "/run/vraid/guest1.sock"
//! num_queues = 2
//! cache = "writethrough"
//! [pool.volume.qos]
//! iops = 2000
//! ```

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{
    cache_keys, qos_keys, size, vhost_keys, ConfigError, MdConfig, RawQos, Scalar, Source,
    TakenPaths, VolumeConfig,
};

/// Thresholds (percent full) that raise a `pool_fill` event by default.
pub const DEFAULT_FILL_EVENTS: [u8; 3] = crate::pool::fill::DEFAULT_THRESHOLDS;

/// Smallest and largest cluster size (docs/FORMAT.md §11).
const CLUSTER_SIZES: std::ops::RangeInclusive<u64> = (64 << 10)..=(64 << 20);

/// One `[[pool]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// The array (a `[[volume]]` name) the pool is on.
    pub array: String,
    /// Cluster size in bytes when the pool is laid (default 1 MiB); when
    /// given, an existing pool must have it.
    pub cluster_size: Option<u64>,
    /// Lay a version-3 pool (split clusters) when `true`, version 2 when
    /// `false`; when given, an existing pool must have that version.
    pub split_clusters: Option<bool>,
    /// Percent-full thresholds that raise events, ascending.
    pub fill_events: Vec<u8>,
    /// Volumes created at start-up when missing.
    pub volumes: Vec<PoolVolumeConfig>,
}

/// One `[[pool.volume]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolVolumeConfig {
    /// Volume (and export) name.
    pub name: String,
    /// Size in bytes (a bigger size grows an existing volume at start-up).
    pub size: u64,
    /// vhost-user-blk socket, if it is exported that way too.
    pub vhost_user_blk: Option<PathBuf>,
    /// Its request queues.
    pub num_queues: u16,
    /// QoS limits.
    pub qos: crate::qos::QosLimits,
    /// Write cache mode.
    pub cache: crate::volfault::CacheMode,
    /// Its budget.
    pub cache_size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    array: Spanned<String>,
    cluster_size: Option<Spanned<Scalar>>,
    split_clusters: Option<bool>,
    fill_events: Option<Spanned<Vec<Spanned<i64>>>>,
    #[serde(default)]
    volume: Vec<RawPoolVolume>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoolVolume {
    name: Spanned<String>,
    size: Spanned<Scalar>,
    vhost_user_blk: Option<Spanned<String>>,
    num_queues: Option<Spanned<i64>>,
    cache: Option<Spanned<String>>,
    cache_size: Option<Spanned<Scalar>>,
    qos: Option<RawQos>,
}

/// Every `[[pool]]`, checked against the arrays (`volumes`), the md
/// arrays and the paths of the file.
pub(super) fn pools(
    src: &Source<'_>,
    raw: Vec<RawPool>,
    volumes: &[VolumeConfig],
    md: &[MdConfig],
    paths: &mut TakenPaths,
) -> Result<Vec<PoolConfig>, ConfigError> {
    let mut names: Vec<String> = volumes.iter().map(|v| v.name.clone()).collect();
    names.extend(md.iter().filter_map(|m| m.name.clone()));
    let mut out: Vec<PoolConfig> = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let key = format!("pool[{i}]");
        let array = p.array.get_ref();
        if !volumes.iter().any(|v| &v.name == array) {
            let known: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
            return Err(src.invalid(
                p.array.span(),
                format!("{key}.array"),
                format!(
                    "unknown array {array:?}: a pool goes on a [[volume]] of this file ({})",
                    if known.is_empty() {
                        "there is none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if out.iter().any(|q| &q.array == array) {
            return Err(src.invalid(
                p.array.span(),
                format!("{key}.array"),
                format!("array {array:?} already has a [[pool]]: one pool per array"),
            ));
        }
        out.push(pool(src, &key, p, &mut names, paths)?);
    }
    Ok(out)
}

fn pool(
    src: &Source<'_>,
    key: &str,
    p: RawPool,
    names: &mut Vec<String>,
    paths: &mut TakenPaths,
) -> Result<PoolConfig, ConfigError> {
    let cluster_size = match &p.cluster_size {
        None => None,
        Some(c) => {
            let ckey = format!("{key}.cluster_size");
            let n = size(src, &ckey, c)?;
            if !n.is_power_of_two() || !CLUSTER_SIZES.contains(&n) {
                return Err(src.invalid(
                    c.span(),
                    ckey,
                    format!("{n} is not a power of two from 64K to 64M"),
                ));
            }
            Some(n)
        }
    };
    let fill_events = match &p.fill_events {
        None => DEFAULT_FILL_EVENTS.to_vec(),
        Some(list) => fill_events(src, &format!("{key}.fill_events"), list)?,
    };
    let mut vols = Vec::with_capacity(p.volume.len());
    for (j, v) in p.volume.iter().enumerate() {
        vols.push(volume(src, &format!("{key}.volume[{j}]"), v, names, paths)?);
    }
    Ok(PoolConfig {
        array: p.array.into_inner(),
        cluster_size,
        split_clusters: p.split_clusters,
        fill_events,
        volumes: vols,
    })
}

/// `fill_events`: percentages 1..=100, strictly ascending.
fn fill_events(
    src: &Source<'_>,
    key: &str,
    list: &Spanned<Vec<Spanned<i64>>>,
) -> Result<Vec<u8>, ConfigError> {
    let mut out: Vec<u8> = Vec::new();
    for t in list.get_ref() {
        let n = u8::try_from(*t.get_ref())
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                src.invalid(
                    t.span(),
                    key,
                    format!("{} is not a percentage from 1 to 100", t.get_ref()),
                )
            })?;
        if out.last().is_some_and(|&last| last >= n) {
            return Err(src.invalid(t.span(), key, "thresholds must be ascending, each once"));
        }
        out.push(n);
    }
    Ok(out)
}

fn volume(
    src: &Source<'_>,
    key: &str,
    v: &RawPoolVolume,
    names: &mut Vec<String>,
    paths: &mut TakenPaths,
) -> Result<PoolVolumeConfig, ConfigError> {
    let name = super::volume_name(src, key, &v.name)?;
    if names.contains(&name) {
        return Err(src.invalid(
            v.name.span(),
            format!("{key}.name"),
            format!("name {name:?} is already an array, md array or pool volume of this file"),
        ));
    }
    names.push(name.clone());
    let skey = format!("{key}.size");
    let bytes = size(src, &skey, &v.size)?;
    if bytes == 0 || !bytes.is_multiple_of(512) {
        return Err(src.invalid(
            v.size.span(),
            skey,
            format!("{bytes} bytes: a volume size is a positive multiple of 512"),
        ));
    }
    let (cache, cache_size) = cache_keys(src, key, v.cache.as_ref(), v.cache_size.as_ref())?;
    let vhost = (v.vhost_user_blk.as_ref(), v.num_queues.as_ref());
    let (vhost_user_blk, num_queues) = vhost_keys(src, key, vhost, paths)?;
    Ok(PoolVolumeConfig {
        name,
        size: bytes,
        vhost_user_blk,
        num_queues,
        qos: qos_keys(src, key, v.qos.as_ref())?,
        cache,
        cache_size,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const ARRAY: &str = "[[volume]]\nname = \"vol0\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n";

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_pool_with_volumes_parses_with_defaults() {
        let text = format!(
            "{ARRAY}[[pool]]\narray = \"vol0\"\n\
             [[pool.volume]]\nname = \"g1\"\nsize = \"20G\"\nvhost_user_blk = \"/run/g1.sock\"\nnum_queues = 2\ncache = \"volatile\"\n\
             [pool.volume.qos]\niops = 500\n\
             [[pool.volume]]\nname = \"g2\"\nsize = 1048576\n"
        );

        let c = Config::parse(&text, "test.toml").unwrap();

        let p = &c.pools[0];
        assert_eq!(p.array, "vol0");
        assert_eq!(p.cluster_size, None);
        assert_eq!(p.split_clusters, None);
        assert_eq!(p.fill_events, vec![80, 90, 95]);
        assert_eq!(p.volumes.len(), 2);
        assert_eq!(p.volumes[0].size, 20 << 30);
        assert_eq!(p.volumes[0].num_queues, 2);
        assert_eq!(p.volumes[0].qos.iops, 500);
        assert_eq!(p.volumes[0].cache, crate::volfault::CacheMode::Volatile);
        assert_eq!(
            p.volumes[0].vhost_user_blk.as_deref(),
            Some(std::path::Path::new("/run/g1.sock"))
        );
        assert_eq!(p.volumes[1].vhost_user_blk, None);
        assert_eq!(p.volumes[1].size, 1 << 20);
    }

    #[test]
    fn split_clusters_is_read_and_must_be_a_boolean() {
        let text = format!("{ARRAY}[[pool]]\narray = \"vol0\"\nsplit_clusters = true\n");
        let c = Config::parse(&text, "test.toml").unwrap();
        assert_eq!(c.pools[0].split_clusters, Some(true));
        let e = err(&format!(
            "{ARRAY}[[pool]]\narray = \"vol0\"\nsplit_clusters = 3\n"
        ));
        // The line and column point at the key's value.
        assert!(
            e.contains("test.toml:7:") && e.contains("expected a boolean"),
            "{e}"
        );
    }

    #[test]
    fn wrong_pools_are_refused_with_line_and_key() {
        let cases = [
            (
                format!("{ARRAY}[[pool]]\narray = \"vol9\"\n"),
                "test.toml:6:9: pool[0].array: unknown array \"vol9\"",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\n[[pool]]\narray = \"vol0\"\n"),
                "test.toml:8:9: pool[1].array: array \"vol0\" already has a [[pool]]",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\ncluster_size = \"96K\"\n"),
                "test.toml:7:16: pool[0].cluster_size: 98304 is not a power of two",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\nfill_events = [90, 80]\n"),
                "test.toml:7:20: pool[0].fill_events: thresholds must be ascending",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\nfill_events = [0]\n"),
                "test.toml:7:16: pool[0].fill_events: 0 is not a percentage",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\n[[pool.volume]]\nname = \"vol0\"\nsize = \"1G\"\n"),
                "test.toml:8:8: pool[0].volume[0].name: name \"vol0\" is already an array",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1G\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1G\"\n"),
                "test.toml:11:8: pool[0].volume[1].name: name \"a\" is already",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\n[[pool.volume]]\nname = \"a\"\nsize = 1000\n"),
                "test.toml:9:8: pool[0].volume[0].size: 1000 bytes",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\n[[pool.volume]]\nname = \"a\"\nsize = \"0\"\n"),
                "test.toml:9:8: pool[0].volume[0].size: 0 bytes",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1Q\"\n"),
                "test.toml:9:8: pool[0].volume[0].size:",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1G\"\nvhost_user_blk = \"/s\"\n[[pool.volume]]\nname = \"b\"\nsize = \"1G\"\nvhost_user_blk = \"/s\"\n"),
                "test.toml:14:18: pool[0].volume[1].vhost_user_blk: /s is already used as pool[0].volume[0].vhost_user_blk",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1G\"\nvhost_user_blk = \"/a\"\n"),
                "already used as volume[0].members[0]",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1G\"\nvhost_socket = \"/x\"\n"),
                "unknown field `vhost_socket`",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\nclustersize = \"1M\"\n"),
                "unknown field `clustersize`",
            ),
            (
                format!("{ARRAY}[[pool]]\narray = \"vol0\"\n[[pool.volumes]]\nname = \"a\"\nsize = \"1G\"\n"),
                "unknown field `volumes`",
            ),
            (
                format!("{ARRAY}[[pool.volume]]\nname = \"a\"\nsize = \"1G\"\n"),
                "test.toml:5:3: invalid type",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "want {want:?}, got {e:?}\n{text}");
        }
    }
}
