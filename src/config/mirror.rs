//! The mirror-policy keys of a `[[volume]]` (RAID-1, issue 13):
//! `write_mostly`, `write_behind`, `write_behind_requests`, `auto_rejoin`
//! (docs/FORMAT.md §6, "Write-mostly and write-behind members").

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::{size, ConfigError, Scalar, Source};
use crate::raid::{BehindLimits, Level};

/// A volume's mirror policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorConfig {
    /// RAID-1 members read only when no other can serve: member paths as
    /// listed in `members`, or role numbers.
    pub write_mostly: Vec<String>,
    /// Write-behind for the write-mostly members (needs the bitmap).
    pub write_behind: Option<BehindLimits>,
    /// Re-add a remote member failed by `member_timeout` once its server
    /// answers again (default true, as DRBD reconnects and resyncs).
    pub auto_rejoin: bool,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            write_mostly: Vec::new(),
            write_behind: None,
            auto_rejoin: true,
        }
    }
}

/// The raw keys.
pub(super) struct RawMirror<'a> {
    pub(super) write_mostly: Option<&'a Spanned<Vec<Spanned<Scalar>>>>,
    pub(super) write_behind: Option<&'a Spanned<Scalar>>,
    pub(super) write_behind_requests: Option<&'a Spanned<i64>>,
    pub(super) auto_rejoin: Option<bool>,
}

/// Validates the keys against the level, members and bitmap.
pub(super) fn keys(
    src: &Source<'_>,
    key: &str,
    raw: RawMirror<'_>,
    level: Level,
    members: &[PathBuf],
    bitmap: bool,
) -> Result<MirrorConfig, ConfigError> {
    let mut write_mostly = Vec::new();
    if let Some(list) = raw.write_mostly {
        let k = format!("{key}.write_mostly");
        if level != Level::Raid1 && !list.get_ref().is_empty() {
            return Err(src.invalid(list.span(), k, "only a RAID-1 has write-mostly members"));
        }
        for m in list.get_ref() {
            write_mostly.push(member_name(src, &k, m, members)?);
        }
    }
    let behind = match raw.write_behind {
        Some(v) => size(src, &format!("{key}.write_behind"), v)?,
        None => 0,
    };
    let write_behind = match behind {
        0 => None,
        max_bytes => {
            let span = raw.write_behind.map(|v| v.span()).unwrap_or_default();
            let k = format!("{key}.write_behind");
            if write_mostly.is_empty() {
                return Err(src.invalid(
                    span,
                    k,
                    "applies to write-mostly members: name them in write_mostly",
                ));
            }
            if !bitmap {
                return Err(src.invalid(span, k, "needs the write-intent bitmap (bitmap = true)"));
            }
            Some(BehindLimits {
                max_bytes,
                max_requests: requests(src, key, raw.write_behind_requests)?,
            })
        }
    };
    Ok(MirrorConfig {
        write_mostly,
        write_behind,
        auto_rejoin: raw.auto_rejoin.unwrap_or(true),
    })
}

fn requests(src: &Source<'_>, key: &str, v: Option<&Spanned<i64>>) -> Result<u64, ConfigError> {
    match v {
        None => Ok(crate::raid::BehindLimits::default().max_requests),
        Some(n) => u64::try_from(*n.get_ref())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                src.invalid(
                    n.span(),
                    format!("{key}.write_behind_requests"),
                    "must be a positive count",
                )
            }),
    }
}

/// A member as a path in `members` or a role number.
fn member_name(
    src: &Source<'_>,
    key: &str,
    m: &Spanned<Scalar>,
    members: &[PathBuf],
) -> Result<String, ConfigError> {
    match m.get_ref() {
        Scalar::Int(n) if usize::try_from(*n).is_ok_and(|r| r < members.len()) => Ok(n.to_string()),
        Scalar::Str(p) if members.iter().any(|x| x == Path::new(p)) => Ok(p.clone()),
        _ => Err(src.invalid(
            m.span(),
            key,
            "not one of this volume's members (give its path or role number)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"nbd://h/\"]\n";

    fn mirror(extra: &str) -> Result<MirrorConfig, String> {
        Config::parse(&format!("{BASE}{extra}"), "t.toml")
            .map(|c| c.volumes[0].mirror.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn mirror_keys_parse_with_defaults() {
        assert_eq!(mirror("").unwrap(), MirrorConfig::default());
        let m = mirror(
            "write_mostly = [\"nbd://h/\", 0]\nwrite_behind = \"4M\"\n\
             write_behind_requests = 9\nauto_rejoin = false\n",
        )
        .unwrap();
        assert_eq!(
            m.write_mostly,
            vec!["nbd://h/".to_string(), "0".to_string()]
        );
        let limits = BehindLimits {
            max_bytes: 4 << 20,
            max_requests: 9,
        };
        assert_eq!(m.write_behind, Some(limits));
        assert!(!m.auto_rejoin);
    }

    #[test]
    fn mirror_keys_refuse_what_cannot_work() {
        for (extra, want) in [
            ("write_behind = \"4M\"\n", "name them in write_mostly"),
            (
                "write_mostly = [\"/c\"]\n",
                "not one of this volume's members",
            ),
            ("write_mostly = [2]\n", "not one of this volume's members"),
            (
                "write_mostly = [1]\nwrite_behind = \"4M\"\nbitmap = false\nchecksums = false\n",
                "needs the write-intent bitmap",
            ),
            (
                "write_mostly = [1]\nwrite_behind = \"4M\"\nwrite_behind_requests = 0\n",
                "positive count",
            ),
        ] {
            let e = mirror(extra).unwrap_err();
            assert!(e.contains(want), "{extra}: {e}");
        }
        let raid5 = "[[volume]]\nname = \"v\"\nlevel = 5\nmembers = [\"/a\", \"/b\", \"/c\"]\n\
                     write_mostly = [1]\n";
        let e = Config::parse(raid5, "t.toml").unwrap_err().to_string();
        assert!(e.contains("only a RAID-1"), "{e}");
    }
}
