//! The exports a server offers: name lookup (with the default export) and the
//! transmission flags and block sizes each one advertises.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use super::proto;
use crate::block::BlockDevice;

/// One NBD export: a named block device.
pub struct Export {
    /// Export name as clients ask for it.
    pub name: String,
    /// Human-readable description (`NBD_INFO_DESCRIPTION`, `NBD_OPT_LIST`).
    pub description: String,
    /// The device behind the export.
    pub device: Arc<dyn BlockDevice>,
    /// Refuse writes and advertise `NBD_FLAG_READ_ONLY`.
    pub read_only: bool,
    /// Preferred I/O size (e.g. the chunk size); 0 means 4096.
    pub preferred_block: u32,
    /// Advertise `NBD_FLAG_CAN_MULTI_CONN` (flushes visible across connections).
    pub multi_conn: bool,
    /// Metadata contexts beside `base:allocation`, which every export
    /// offers from `device` (`meta`).
    pub contexts: super::meta::MetaContexts,
}

impl fmt::Debug for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("device", &self.device.name())
            .field("size", &self.device.size())
            .field("read_only", &self.read_only)
            .field("preferred_block", &self.preferred_block)
            .field("multi_conn", &self.multi_conn)
            .field("contexts", &self.contexts)
            .finish()
    }
}

impl Export {
    /// Transmission flags for this export; `structured` says whether the
    /// client negotiated structured replies (needed for `SEND_DF`).
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut flags = proto::TFLAG_HAS_FLAGS
            | proto::TFLAG_SEND_FLUSH
            | proto::TFLAG_SEND_FUA
            | proto::TFLAG_SEND_TRIM
            | proto::TFLAG_SEND_WRITE_ZEROES
            | proto::TFLAG_SEND_FAST_ZERO
            | proto::TFLAG_SEND_CACHE;
        if self.read_only {
            flags |= proto::TFLAG_READ_ONLY;
        }
        if self.multi_conn {
            flags |= proto::TFLAG_CAN_MULTI_CONN;
        }
        if structured {
            flags |= proto::TFLAG_SEND_DF;
        }
        flags
    }

    /// Every metadata context it offers, `base:allocation` first.
    pub fn meta_contexts(&self) -> Vec<Arc<dyn super::meta::MetaContext>> {
        super::meta::offered(&self.device, &self.contexts)
    }

    /// Minimum, preferred and maximum block sizes for `NBD_INFO_BLOCK_SIZE`.
    pub fn block_sizes(&self) -> (u32, u32, u32) {
        let preferred = if self.preferred_block == 0 {
            4096
        } else {
            self.preferred_block.clamp(512, proto::MAX_PAYLOAD)
        };
        // The spec requires a power of two.
        let preferred = if preferred.is_power_of_two() {
            preferred
        } else {
            preferred.next_power_of_two().min(proto::MAX_PAYLOAD)
        };
        (1, preferred, proto::MAX_PAYLOAD)
    }
}

/// Exports by name. Cloning gives another handle onto the same table, so
/// exports can be added and removed while the server runs (pool volumes).
#[derive(Debug, Default, Clone)]
pub struct ExportTable {
    by_name: Arc<std::sync::RwLock<BTreeMap<String, Arc<Export>>>>,
    /// Connections in transmission, by the address of their export's
    /// device (kept across a rename, which keeps the device).
    attached: Arc<std::sync::Mutex<HashMap<usize, usize>>>,
}

/// A connection in transmission on an export; counted until dropped.
#[derive(Debug)]
pub struct Attached {
    table: Arc<std::sync::Mutex<HashMap<usize, usize>>>,
    key: usize,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.key);
            }
        }
    }
}

fn device_key(e: &Export) -> usize {
    Arc::as_ptr(&e.device) as *const () as usize
}

impl ExportTable {
    /// Builds the table; a later export with a duplicate name replaces the earlier.
    pub fn new(exports: Vec<Export>) -> Self {
        let by_name = exports
            .into_iter()
            .map(|e| (e.name.clone(), Arc::new(e)))
            .collect();
        ExportTable {
            by_name: Arc::new(std::sync::RwLock::new(by_name)),
            attached: Default::default(),
        }
    }

    /// Counts a connection entering transmission on `export`.
    pub fn attach(&self, export: &Export) -> Attached {
        let key = device_key(export);
        let mut t = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        *t.entry(key).or_insert(0) += 1;
        Attached {
            table: self.attached.clone(),
            key,
        }
    }

    /// Connections in transmission on the export named `name` now.
    pub fn clients(&self, name: &str) -> usize {
        let Some(e) = self.read().get(name).cloned() else {
            return 0;
        };
        let t = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        t.get(&device_key(&e)).copied().unwrap_or(0)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Export>>> {
        self.by_name.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds an export; the empty name means the only export when there is
    /// exactly one (an export literally named "" wins).
    pub fn lookup(&self, name: &str) -> Option<Arc<Export>> {
        let by_name = self.read();
        if let Some(e) = by_name.get(name) {
            return Some(e.clone());
        }
        if name.is_empty() && by_name.len() == 1 {
            return by_name.values().next().cloned();
        }
        None
    }

    /// All exports in name order (a snapshot of the table).
    pub fn iter(&self) -> impl Iterator<Item = Arc<Export>> {
        self.read()
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// Adds (or replaces) an export; new connections see it at once.
    pub fn insert(&self, export: Export) {
        let mut by_name = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        by_name.insert(export.name.clone(), Arc::new(export));
    }

    /// How many holders the export `name` has besides the table: each
    /// connection in transmission on it holds it (one in its handshake may
    /// for a moment). 0 when there is no such export.
    pub fn holders(&self, name: &str) -> usize {
        self.read()
            .get(name)
            .map_or(0, |e| Arc::strong_count(e).saturating_sub(1))
    }

    /// Removes an export (connections already on it keep their device).
    pub fn remove(&self, name: &str) -> Option<Arc<Export>> {
        let mut by_name = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        by_name.remove(name)
    }
}
