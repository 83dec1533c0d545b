//! Metadata contexts (`NBD_OPT_{LIST,SET}_META_CONTEXT`,
//! `NBD_CMD_BLOCK_STATUS`): what each export offers, how queries select
//! them, and `base:allocation` over [`BlockDevice::allocation`].
//!
//! ```text
//!  export ─► offered(): base:allocation (its device, always)
//!                       + its MetaContexts: fixed ones and sources asked
//!                         at each LIST / SET (e.g. qemu:dirty-bitmap:SNAP)
//!  LIST queries ─► list(): exact names, `ns:` / `ns:prefix:` wildcards
//!  SET queries  ─► select(): exact names, ids 1.. ─► Selection ─► transmission
//!  BLOCK_STATUS ─► each selected context's extents(offset, len)
//! ```
//!
//! A context is anything implementing [`MetaContext`]: flags per extent
//! as its namespace defines them. Pools plug theirs in through
//! [`MetaContexts::with`] on the export.

use std::fmt;
use std::sync::Arc;

use super::proto;
use crate::block::{BlockDevice, BlockResult, BoxFuture};
use crate::units::ByteOffset;

/// Name of the one context the NBD standard defines.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Extents from an offset: (length in bytes, flags), in order.
pub type StatusExtents = Vec<(u64, u32)>;

/// One metadata context an export offers.
pub trait MetaContext: Send + Sync {
    /// Its full name, `namespace:leaf` (e.g. `qemu:dirty-bitmap:snap1`).
    fn name(&self) -> &str;

    /// The status of `offset..offset + len` (inside the export, `len >
    /// 0`): extents from `offset` covering at least one byte; they may
    /// stop short of `len` (the client asks again) or pass it (clipped).
    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, BlockResult<StatusExtents>>;
}

/// `base:allocation` of a device: `NBD_STATE_HOLE`, `NBD_STATE_ZERO`.
pub struct AllocationContext(pub Arc<dyn BlockDevice>);

impl fmt::Debug for AllocationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AllocationContext")
            .field(&self.0.name())
            .finish()
    }
}

impl MetaContext for AllocationContext {
    fn name(&self) -> &str {
        BASE_ALLOCATION
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, BlockResult<StatusExtents>> {
        crate::block::BoxFuture::new(async move {
            let map = self.0.allocation(ByteOffset(offset), len).await?;
            Ok(map
                .iter()
                .map(|e| {
                    let hole = if e.state.hole { proto::STATE_HOLE } else { 0 };
                    let zero = if e.state.zero { proto::STATE_ZERO } else { 0 };
                    (e.len, hole | zero)
                })
                .collect())
        })
    }
}

/// Contexts that come and go while an export is served (a pool volume's
/// `qemu:dirty-bitmap:SNAP` for each of its snapshots): asked at every
/// `LIST` / `SET`.
pub trait ContextSource: Send + Sync {
    /// The contexts offered now.
    fn contexts(&self) -> Vec<Arc<dyn MetaContext>>;
}

/// The contexts an export offers beside `base:allocation` (which every
/// export has, from its device): fixed ones and dynamic sources.
#[derive(Clone, Default)]
pub struct MetaContexts {
    extra: Vec<Arc<dyn MetaContext>>,
    sources: Vec<Arc<dyn ContextSource>>,
}

impl fmt::Debug for MetaContexts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|c| c.name().to_string()))
            .finish()
    }
}

impl MetaContexts {
    /// These contexts and `context` (a later one of the same name hides
    /// an earlier one).
    pub fn with(mut self, context: Arc<dyn MetaContext>) -> MetaContexts {
        self.extra.retain(|c| c.name() != context.name());
        self.extra.push(context);
        self
    }

    /// These contexts and whatever `source` offers when asked.
    pub fn with_source(mut self, source: Arc<dyn ContextSource>) -> MetaContexts {
        self.sources.push(source);
        self
    }

    /// The contexts offered now: the fixed ones, then the sources' (a
    /// name offered twice counts once, the first).
    pub fn iter(&self) -> impl Iterator<Item = Arc<dyn MetaContext>> {
        let mut all: Vec<Arc<dyn MetaContext>> = self.extra.clone();
        for c in self.sources.iter().flat_map(|s| s.contexts()) {
            if all.iter().all(|x| x.name() != c.name()) {
                all.push(c);
            }
        }
        all.into_iter()
    }
}

/// Every context of an export: `base:allocation` over `device`, then
/// `extra` (one named `base:allocation` there replaces the default).
pub fn offered(device: &Arc<dyn BlockDevice>, extra: &MetaContexts) -> Vec<Arc<dyn MetaContext>> {
    let extra: Vec<Arc<dyn MetaContext>> = extra.iter().collect();
    let mut all: Vec<Arc<dyn MetaContext>> = Vec::with_capacity(1 + extra.len());
    if !extra.iter().any(|c| c.name() == BASE_ALLOCATION) {
        all.push(Arc::new(AllocationContext(device.clone())));
    }
    all.extend(extra);
    all
}

/// Checks a query's syntax: a non-empty namespace of printable
/// characters other than `:` and whitespace, then a colon.
pub fn check_query(query: &str) -> Result<(), String> {
    let Some((namespace, _)) = query.split_once(':') else {
        return Err(format!("query {query:?} has no namespace"));
    };
    let printable = |c: char| !c.is_whitespace() && !c.is_control();
    if namespace.is_empty() || !namespace.chars().all(printable) {
        return Err(format!("query {query:?} has a bad namespace"));
    }
    Ok(())
}

/// True when the LIST query `query` names `name`: exactly, or as a
/// wildcard ending in `:` (`base:`, `qemu:dirty-bitmap:`).
fn lists(query: &str, name: &str) -> bool {
    query == name || (query.ends_with(':') && name.starts_with(query))
}

/// `NBD_OPT_LIST_META_CONTEXT`: the contexts the queries name (all with
/// no query), each once, in offered order. Unknown names select nothing.
pub fn list(offered: &[Arc<dyn MetaContext>], queries: &[String]) -> Vec<Arc<dyn MetaContext>> {
    offered
        .iter()
        .filter(|c| queries.is_empty() || queries.iter().any(|q| lists(q, c.name())))
        .cloned()
        .collect()
}

/// The contexts a SET selected, with the ids their block status chunks
/// carry.
#[derive(Clone, Default)]
pub struct Selection(Vec<(u32, Arc<dyn MetaContext>)>);

impl fmt::Debug for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(id, c)| (id, c.name())))
            .finish()
    }
}

impl Selection {
    /// `NBD_OPT_SET_META_CONTEXT`: the offered contexts the queries name
    /// exactly (wildcards select nothing), each once, numbered from 1 in
    /// query order.
    pub fn select(offered: &[Arc<dyn MetaContext>], queries: &[String]) -> Selection {
        let mut chosen: Vec<(u32, Arc<dyn MetaContext>)> = Vec::new();
        for q in queries {
            let Some(c) = offered.iter().find(|c| c.name() == q) else {
                continue;
            };
            if chosen.iter().all(|(_, s)| s.name() != c.name()) {
                chosen.push((chosen.len() as u32 + 1, c.clone()));
            }
        }
        Selection(chosen)
    }

    /// True when nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Selected contexts with their ids.
    pub fn iter(&self) -> impl Iterator<Item = &(u32, Arc<dyn MetaContext>)> {
        self.0.iter()
    }
}

/// Most descriptors in one block status chunk (the standard allows 2^20;
/// this bounds the reply's memory).
pub const MAX_DESCRIPTORS: usize = 4096;

/// A context's extents as wire descriptors for a request of `length`
/// bytes: clipped to it, empty and zero-length extents dropped, equal
/// neighbours merged, at most [`MAX_DESCRIPTORS`] (one with `req_one`).
pub fn descriptors(extents: &[(u64, u32)], length: u32, req_one: bool) -> Vec<(u32, u32)> {
    let max = if req_one { 1 } else { MAX_DESCRIPTORS };
    let mut left = u64::from(length);
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &(len, flags) in extents {
        let len = len.min(left) as u32;
        if len == 0 {
            continue;
        }
        left -= u64::from(len);
        let full = out.len() == max;
        match out.last_mut() {
            Some(last) if last.1 == flags => last.0 += len,
            _ if full => break,
            _ => out.push((len, flags)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    impl MetaContext for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn extents(&self, _: u64, len: u64) -> BoxFuture<'_, BlockResult<StatusExtents>> {
            crate::block::BoxFuture::new(std::future::ready(Ok(vec![(len, 1)])))
        }
    }

    fn offered_set() -> Vec<Arc<dyn MetaContext>> {
        let dev: Arc<dyn BlockDevice> =
            Arc::new(crate::member::memory::MemDevice::new("m", 1 << 20));
        let extra = MetaContexts::default()
            .with(Arc::new(Named("qemu:dirty-bitmap:a")))
            .with(Arc::new(Named("qemu:dirty-bitmap:b")));
        offered(&dev, &extra)
    }

    fn names(cs: &[Arc<dyn MetaContext>]) -> Vec<&str> {
        cs.iter().map(|c| c.name()).collect()
    }

    #[test]
    fn list_takes_exact_names_and_namespace_wildcards() {
        let o = offered_set();
        let q = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        assert_eq!(names(&list(&o, &[])).len(), 3);
        assert_eq!(names(&list(&o, &q(&["base:"]))), vec![BASE_ALLOCATION]);
        assert_eq!(
            names(&list(&o, &q(&["qemu:dirty-bitmap:"]))),
            vec!["qemu:dirty-bitmap:a", "qemu:dirty-bitmap:b"]
        );
        assert!(list(&o, &q(&["x-other:thing", "base:nothing"])).is_empty());
    }

    #[test]
    fn set_selects_exact_names_once_and_ignores_wildcards_and_unknowns() {
        let o = offered_set();
        let q = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        let s = Selection::select(
            &o,
            &q(&[
                "base:",
                "qemu:dirty-bitmap:b",
                "zz:top",
                "base:allocation",
                "qemu:dirty-bitmap:b",
            ]),
        );

        let got: Vec<(u32, &str)> = s.iter().map(|(id, c)| (*id, c.name())).collect();
        assert_eq!(got, vec![(1, "qemu:dirty-bitmap:b"), (2, BASE_ALLOCATION)]);
    }

    #[test]
    fn queries_need_a_namespace() {
        assert!(check_query("base:allocation").is_ok());
        assert!(check_query("base:").is_ok());
        assert!(check_query("allocation").is_err());
        assert!(check_query(":allocation").is_err());
        assert!(check_query("ba se:x").is_err());
    }

    #[test]
    fn descriptors_are_clipped_merged_and_bounded() {
        let e = [(100, 1), (50, 1), (0, 2), (1000, 3), (10, 0)];

        assert_eq!(descriptors(&e, 400, false), vec![(150, 1), (250, 3)]);
        assert_eq!(descriptors(&e, 400, true), vec![(150, 1)]);
        assert_eq!(
            descriptors(&[(u64::MAX, 0)], u32::MAX, false),
            vec![(u32::MAX, 0)]
        );
        let many: Vec<(u64, u32)> = (0..10_000).map(|i| (1, i % 2)).collect();
        assert_eq!(descriptors(&many, u32::MAX, false).len(), MAX_DESCRIPTORS);
    }
}
