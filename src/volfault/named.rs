//! The client stacks of pool volumes, by volume name: pool volumes come
//! and go at run time, so they live in a shared map the export sink fills
//! and the control plane reads (a rename moves the stack, a delete drops it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::ClientStack;

/// Named client stacks (shared: `Arc` inside).
#[derive(Clone, Debug, Default)]
pub struct NamedStacks(Arc<Mutex<HashMap<String, ClientStack>>>);

impl NamedStacks {
    fn map(&self) -> MutexGuard<'_, HashMap<String, ClientStack>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stack of `name`.
    pub fn get(&self, name: &str) -> Option<ClientStack> {
        self.map().get(name).cloned()
    }

    /// Adds (or replaces) the stack of `name`.
    pub fn insert(&self, name: &str, stack: ClientStack) {
        self.map().insert(name.to_string(), stack);
    }

    /// Drops the stack of `name`.
    pub fn remove(&self, name: &str) -> Option<ClientStack> {
        self.map().remove(name)
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
