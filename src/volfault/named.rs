//! The client stacks of pool volumes, by volume name: pool volumes come
//! and go at run time, so they live in a shared map the export sink fills
//! and the control plane reads (a rename moves the stack, a delete drops it).
//! Each entry also holds the volume's client I/O counters and the
//! vhost-user-blk socket it is exported on, if any.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::ClientStack;
use crate::metrics::stats::IoStats;

/// What the exports of one pool volume share.
#[derive(Clone, Debug)]
pub struct NamedClient {
    /// QoS, faults, write log, cache.
    pub stack: ClientStack,
    /// Client I/O counters (both exports).
    pub stats: Arc<IoStats>,
    /// Its vhost-user-blk socket, while one serves.
    pub vhost: Option<PathBuf>,
}

impl NamedClient {
    /// `stack` with fresh counters and no vhost socket.
    pub fn new(stack: ClientStack) -> NamedClient {
        NamedClient {
            stack,
            stats: IoStats::new(),
            vhost: None,
        }
    }
}

/// Named client stacks (shared: `Arc` inside).
#[derive(Clone, Debug, Default)]
pub struct NamedStacks(Arc<Mutex<HashMap<String, NamedClient>>>);

impl NamedStacks {
    fn map(&self) -> MutexGuard<'_, HashMap<String, NamedClient>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stack of `name`.
    pub fn get(&self, name: &str) -> Option<ClientStack> {
        self.map().get(name).map(|c| c.stack.clone())
    }

    /// The whole entry of `name`.
    pub fn client(&self, name: &str) -> Option<NamedClient> {
        self.map().get(name).cloned()
    }

    /// Adds (or replaces) the stack of `name`, with fresh counters.
    pub fn insert(&self, name: &str, stack: ClientStack) {
        self.insert_client(name, NamedClient::new(stack));
    }

    /// Adds (or replaces) the entry of `name`.
    pub fn insert_client(&self, name: &str, client: NamedClient) {
        self.map().insert(name.to_string(), client);
    }

    /// Records the vhost-user-blk socket `name` is served on now.
    pub fn set_vhost(&self, name: &str, socket: Option<PathBuf>) {
        if let Some(c) = self.map().get_mut(name) {
            c.vhost = socket;
        }
    }

    /// Drops the stack of `name`.
    pub fn remove(&self, name: &str) -> Option<ClientStack> {
        self.map().remove(name).map(|c| c.stack)
    }

    /// Moves the stack of `old` to `new`; false if `old` has none.
    pub fn rename(&self, old: &str, new: &str) -> bool {
        let mut map = self.map();
        match map.remove(old) {
            Some(s) => {
                map.insert(new.to_string(), s);
                true
            }
            None => false,
        }
    }

    /// Every (name, stack), sorted by name.
    pub fn all(&self) -> Vec<(String, ClientStack)> {
        self.clients()
            .into_iter()
            .map(|(n, c)| (n, c.stack))
            .collect()
    }

    /// Every (name, entry), sorted by name.
    pub fn clients(&self) -> Vec<(String, NamedClient)> {
        let mut v: Vec<_> = self
            .map()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::memory::MemDevice;

    #[test]
    fn a_rename_carries_the_stack_and_a_remove_drops_it() {
        let s = NamedStacks::default();
        let stack = ClientStack::new(Arc::new(MemDevice::new("v", 1 << 20)));
        s.insert("a", stack.clone());
        assert!(s.rename("a", "b"));
        assert!(s.get("a").is_none());
        assert!(Arc::ptr_eq(&s.get("b").unwrap().qos, &stack.qos));
        assert!(!s.rename("a", "c"));
        assert!(s.remove("b").is_some());
        assert!(s.all().is_empty());
    }
}
